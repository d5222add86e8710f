"""Adversarial attacks and robust-accuracy helpers, one file per family (like torchattacks).

``attack(model, x, y) -> x_adv``: every attack is an :class:`Attack` with a budget ``eps``, a ``norm`` and a
``name``; write your own by subclassing it and implementing ``perturb(model, x, y)`` (the one extension point, as
``forward`` is torchattacks'). See :mod:`nrpm.attacks.base` for the contract all attacks keep.

* :mod:`~nrpm.attacks.single_step`: ``FGSM``, the paper's ``FGML2`` / ``FGML1`` and ``L0TopK``;
* :mod:`~nrpm.attacks.pgd`: ``PGD`` / ``PGDL2`` on one projected-gradient core (:func:`ascend`) with a
  pluggable loss and gradient source (:mod:`~nrpm.attacks.gradients`: exact, transfer, BPDA, detached IRLS,
  smoothed IRLS);
* :mod:`~nrpm.attacks.cw`: ``CWLinf`` (Linf PGD on the Carlini-Wagner margin loss) and ``CWL2`` (the C&W L2
  attack: Adam in tanh space, binary search over its constant);
* :mod:`~nrpm.attacks.deepfool`: ``DeepFool`` (L2);
* :mod:`~nrpm.attacks.spsa`: ``SPSA``, the gradient-free attack of Uesato et al. (2018);
* :mod:`~nrpm.attacks.corruptions`: ``Corruption`` / ``corrupt``, common corruptions (CIFAR-10-C constants) whose
  budget is the severity;
* :mod:`~nrpm.attacks.noise`: the random-noise baseline;
* :mod:`~nrpm.attacks.autoattack`: ``APGDCE``, ``APGDDLR``, ``Square`` and ``AutoAttackStandard`` through
  ``pyautoattack`` (the published reference code);
* :mod:`~nrpm.attacks.registry`: ``@register_attack(name)`` and ``make_attack(name, eps, **kwargs)``;
* :mod:`~nrpm.attacks.accuracy`: ``clean_accuracy``, ``robust_accuracy`` (misclassified clean samples count as
  errors).

The constructors take the budget first: ``PGD(8 / 255, steps=20)``; ``PGD(eps=8 / 255)`` works too. (They do
not take the model, unlike torchattacks: one attack object serves any model, ``attack(model, x, y)``.)
"""
# the attack modules register their attacks as they are imported: this order is the CLI's list of attacks
from .single_step import FGML1, FGML2, FGSM, L0TopK  # isort: skip
from .pgd import PGD, PGDL2, ascend  # isort: skip
from .accuracy import clean_accuracy, model_device, robust_accuracy, sharded_correct_count
from .autoattack import APGDCE, APGDDLR, AutoAttackStandard, Square
from .base import (NORMS, Attack, GradientAttack, LossFn, cross_entropy_per_sample, eval_frozen,
                   loss_and_gradient, margin_loss_per_sample, perturbation_norm)
from .corruptions import CORRUPTIONS, Corruption, corrupt
from .cw import CWL2, CWLinf
from .deepfool import DeepFool
from .gradients import BackwardModeGradient, GradientSource, ModelGradient, SmoothedGradient, TransferGradient
from .noise import NoiseAttack
from .registry import (ADAPTIVE, ATTACKS, AUDIT_ROLES, BLACK_BOX, STEP_SIZES, WHITE_BOX, AttackEntry, attack_entries,
                       attack_factory, canonical_name, make_attack, register_attack, step_size_options,
                       unknown_attack_message, unregister_attack, with_default_seed)
from .spsa import SPSA

__all__ = [
    "Attack", "GradientAttack", "LossFn", "FGSM", "PGD", "PGDL2", "FGML1", "FGML2", "L0TopK", "NoiseAttack",
    "APGDCE", "APGDDLR", "Square", "AutoAttackStandard", "CWLinf", "CWL2", "DeepFool", "SPSA", "Corruption",
    "corrupt", "CORRUPTIONS",
    "GradientSource", "ModelGradient", "TransferGradient", "BackwardModeGradient", "SmoothedGradient", "ascend",
    "ATTACKS", "STEP_SIZES", "make_attack", "canonical_name", "attack_factory", "with_default_seed",
    "step_size_options", "register_attack", "unregister_attack", "attack_entries", "AttackEntry",
    "unknown_attack_message", "AUDIT_ROLES", "WHITE_BOX", "BLACK_BOX", "ADAPTIVE",
    "robust_accuracy", "clean_accuracy", "sharded_correct_count", "model_device", "perturbation_norm", "NORMS",
    "eval_frozen", "cross_entropy_per_sample", "margin_loss_per_sample", "loss_and_gradient",
]
