"""The attack contract: :class:`Attack` (override :meth:`Attack.perturb`), the eval-and-freeze context
:func:`eval_frozen`, and the tensor helpers every attack family shares (norms, projection, seeded RNG, losses).

Every attack is an object with a budget (``eps``), a ``norm`` and a ``name``; calling it as
``attack(model, x, y)`` returns a detached adversarial batch in ``[0, 1]`` that lies inside the budget.
The contract shared by all attacks:

* the model is put in eval mode during the attack and every module's training flag is restored afterwards;
* model parameters are never modified; they are frozen (``requires_grad=False``) only for the duration of the
  attack, so no attack (not even pyautoattack's FAB, which calls ``.backward()``) can write into a parameter's
  ``.grad``, and their ``requires_grad`` flags are restored afterwards;
* gradients are true input gradients through the full model (unless a gradient source says otherwise, see
  :mod:`nrpm.attacks.gradients`);
* every random choice for a sample (random starts, restarts, SPSA directions, noise) comes from that sample's
  own generator, seeded by (attack seed, the sample's global index): results do not depend on how samples are
  batched or sharded (:meth:`Attack.sample_rng`, :mod:`nrpm.attacks.randomness`); the global RNG is never
  mutated. The pyautoattack attacks are the exception: they are seeded per batch (see
  :mod:`nrpm.attacks.autoattack`);
* ``eps == 0`` returns ``x`` unchanged.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from ..functional import sustained_work
from ..validation import check_batch, check_budget
from .randomness import SampleRNG

__all__ = ["Attack", "GradientAttack", "LossFn", "NORMS", "eval_frozen", "cross_entropy_per_sample",
           "margin_loss_per_sample", "logits_2d", "loss_and_gradient", "loss_and_fooled", "lp_norm",
           "perturbation_norm", "normalise", "project", "per_sample", "make_generator", "random_signs", "num_classes"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

NORMS = ("Linf", "L2", "L1", "L0")


# ------------------------------------------------------------------------------------------ tensor helpers
def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (N,) tensor so it broadcasts against a batch shaped like ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a batch of perturbations, shape (N,)."""
    flat = delta.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(len(flat))
    if norm == "L2":
        return flat.norm(p=2, dim=1)
    if norm == "L1":
        return flat.abs().sum(dim=1)
    if norm == "L0":
        return (flat != 0).sum(dim=1).to(delta.dtype)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def perturbation_norm(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample size of ``x_adv - x`` in ``norm`` ('Linf', 'L2', 'L1' or 'L0')."""
    return lp_norm(x_adv - x, norm)


def normalise(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Scale each sample of ``grad`` to unit ``norm``; all-zero samples stay zero."""
    size = lp_norm(grad, norm).clamp_min(torch.finfo(grad.dtype).tiny)
    return grad / per_sample(size, grad)


def project(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x`` and onto [0, 1].

    Rows already inside the ball are returned bit-for-bit unchanged (apart from the [0, 1] clip), so this is a
    safe no-op for attacks that respect the budget. For L1 the perturbation is rescaled, which stays inside both
    the ball and the box because ``x`` itself is in the box. For L0 the ``eps`` largest changes are kept.
    """
    if norm == "Linf":
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    elif norm in ("L2", "L1"):
        delta = x_adv - x
        size = lp_norm(delta, norm)
        too_big = size > eps
        if too_big.any():
            scale = (eps / size.clamp_min(torch.finfo(size.dtype).tiny)).clamp(max=1.0)
            shrunk = x + delta * per_sample(scale, delta)
            x_adv = torch.where(per_sample(too_big, x_adv), shrunk, x_adv)
    elif norm == "L0":
        x_adv = _keep_largest_changes(x_adv, x, int(eps))
    else:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    return x_adv.clamp(0.0, 1.0)


def _keep_largest_changes(x_adv: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo all but the ``k`` largest per-sample coordinate changes (L0 projection)."""
    delta = (x_adv - x).flatten(1)
    too_many = (delta != 0).sum(dim=1) > k
    if not too_many.any():
        return x_adv
    keep = torch.zeros_like(delta, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, delta.abs().topk(min(k, delta.shape[1]), dim=1).indices, True)
    projected = torch.where(keep, x_adv.flatten(1), x.flatten(1)).reshape_as(x_adv)
    return torch.where(per_sample(too_many, x_adv), projected, x_adv)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A private RNG for one attack call, so the global RNG is never touched."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def random_signs(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniformly random +-1 entries with the dtype/device of ``like``."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


# ------------------------------------------------------------------------------------------ model handling
@contextlib.contextmanager
def eval_frozen(*models) -> Iterator[None]:
    """Eval mode and frozen parameters for every given model (``None`` and repeats are skipped).

    Each module's training flag and each parameter's ``requires_grad`` flag are restored individually on exit,
    so models with mixed train/eval submodules or partly frozen weights come back exactly as they were.
    """
    unique = []
    for model in models:
        if isinstance(model, torch.nn.Module) and all(model is not seen for seen in unique):
            unique.append(model)
    training_flags = [(module, module.training) for model in unique for module in model.modules()]
    grad_flags = [(parameter, parameter.requires_grad) for model in unique for parameter in model.parameters()]
    try:
        for model in unique:
            model.eval()
        for parameter, _ in grad_flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in grad_flags:
            parameter.requires_grad_(flag)
        for module, flag in training_flags:
            module.training = flag


def cross_entropy_per_sample(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Default loss. Also correct for models that output log-probabilities: log_softmax is idempotent, so CE on
    log_softmax outputs equals CE on logits."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss_per_sample(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Carlini-Wagner margin ``max_{j != y} z_j - z_y`` per sample: positive exactly when the sample is
    misclassified. Unlike cross-entropy it does not saturate on confidently classified samples and is
    unchanged by a shift of all logits."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return others.amax(dim=1) - true


def logits_2d(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, checked to be a (batch, classes) tensor."""
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != len(x):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return a (batch, classes) tensor of logits, got {shape}")
    return logits


def loss_and_gradient(model, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn):
    """Per-sample losses, their input gradient and which samples are misclassified.

    Losses are summed (not averaged) so each sample's gradient does not depend on the batch size.
    ``torch.autograd.grad`` w.r.t. the input only leaves parameters' ``.grad`` untouched.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_2d(model, x)
        losses = loss_fn(logits, y)
        if not losses.requires_grad:
            raise RuntimeError("the model output does not depend differentiably on its input; "
                               "gradient-based attacks need input gradients")
        (grad,) = torch.autograd.grad(losses.sum(), x)
    fooled = logits.detach().argmax(dim=1) != y
    return grad.detach(), losses.detach(), fooled


@torch.no_grad()
def loss_and_fooled(model, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn):
    """Per-sample losses and misclassification, without gradients."""
    logits = logits_2d(model, x)
    return loss_fn(logits, y), logits.argmax(dim=1) != y


def num_classes(model, x: torch.Tensor) -> int:
    with torch.no_grad():
        return logits_2d(model, x[:1]).shape[1]


# ------------------------------------------------------------------------------------------ base classes
class Attack:
    """Base class: ``attack(model, x, y) -> x_adv``.

    **Extension point** (as ``forward`` is torchattacks'): subclass, set ``name`` and ``norm`` and implement
    ``perturb(model, x, y) -> x_adv``. It runs with the model already in eval mode with frozen parameters, gets
    a detached ``x`` in [0, 1] and integer labels, and may return any tensor of ``x``'s shape. The base class
    validates inputs, handles ``eps == 0`` and empty batches, projects the result onto the budget and [0, 1]
    as a safety net (:meth:`limit`, a no-op for a correct attack) and returns a detached tensor with the dtype of ``x``.
    A randomised attack draws its random tensors from :meth:`sample_rng` (one generator per sample, seeded by the
    sample's global index in :attr:`sample_indices`), never from one generator for the whole batch.
    """

    name: str = "attack"
    norm: str = "Linf"

    def __init__(self, eps: float):
        self.eps = check_budget(eps)

    #: whether the attack draws from :meth:`sample_rng` (results changed when seeding became per sample, so
    #: caches of earlier results must not be reused for it)
    seeded_per_sample: bool = False
    #: global indices of the rows of the batch being attacked (set by ``__call__`` for ``perturb``)
    sample_indices: Optional[torch.Tensor] = None

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, indices=None) -> torch.Tensor:
        """Adversarial version of ``x`` (values in [0, 1], shape (N, ...)) for labels ``y`` (N,).

        ``indices``: the global index of each row in the evaluated data set (N ints); they seed each sample's
        random choices, so the result for a sample does not depend on the batch it is in. Default: 0..N-1.
        Raises ValueError for non-float ``x``, values outside [0, 1], NaNs, non-integer or mismatched labels.
        """
        check_batch(x, y)
        x = x.detach()
        if self.eps == 0 or len(x) == 0:
            return x.clone()
        previous, self.sample_indices = self.sample_indices, _check_indices(indices, len(x))
        try:
            # sustained_work: an attack calls the model tens to thousands of times, so the robust layers' kernels
            # compile at every batch size (the eager ones cost 5-10x on the small batches of late attack steps)
            with eval_frozen(model, *self.extra_models()), sustained_work():
                x_adv = self.perturb(model, x, y.detach().long())
        finally:
            self.sample_indices = previous  # an attack object may be reused (or nested) with other batches
        return self.limit(x_adv.detach().to(x.dtype), x).detach()

    def sample_rng(self, x: torch.Tensor, stream: int = 0) -> SampleRNG:
        """Per-sample generators for the rows of ``x`` (the batch ``perturb`` got), seeded by (``self.seed``, or 0
        for an attack without one, each row's global index, ``stream``). Draw every random tensor from it
        (``rng.rand``, ``rng.randn``, ``rng.signs``; ``rng.take(rows)`` for a subset) so results do not depend on
        batching. Outside ``__call__`` (``perturb`` called directly) the rows are numbered 0..N-1."""
        indices = self.sample_indices if self.sample_indices is not None else torch.arange(len(x))
        if len(indices) != len(x):
            raise ValueError(f"sample_rng needs the whole batch of {len(indices)} rows, got {len(x)}; "
                             f"use rng.take(rows) for a subset")
        return SampleRNG.for_samples(getattr(self, "seed", 0), indices, x.device, stream)

    def perturb(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack itself: override this (see the class docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement perturb(model, x, y)")

    def limit(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The safety net applied to every result: projection onto the ``norm`` ball and [0, 1]. Threat models
        that are not a norm ball (e.g. common corruptions) override it, keeping only the [0, 1] clip."""
        return project(x_adv, x, self.norm, self.eps)

    def extra_models(self) -> tuple:
        """Models other than the attacked one that the attack runs (e.g. a transfer source); frozen with it."""
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, norm={self.norm!r}, eps={self.eps:g})"


def _check_indices(indices, n: int) -> torch.Tensor:
    """The global sample indices of a batch of ``n`` rows as a CPU int64 tensor (default 0..n-1)."""
    if indices is None:
        return torch.arange(n)
    indices = torch.as_tensor(indices).detach().cpu().reshape(-1)
    if len(indices) != n or indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be {n} integer sample indices (one per row), got {tuple(indices.shape)} "
                         f"of {indices.dtype}")
    return indices.long()


class GradientAttack(Attack):
    """Shared ``loss_fn`` option of the gradient attacks: ``loss_fn(outputs, y)`` returns per-sample losses of
    shape (N,); default: cross-entropy."""

    def __init__(self, eps: float, loss_fn: Optional[LossFn] = None):
        super().__init__(eps)
        self.loss_fn = loss_fn if loss_fn is not None else cross_entropy_per_sample


