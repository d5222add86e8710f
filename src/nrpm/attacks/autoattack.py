"""AutoAttack, APGD and Square through the ``pyautoattack`` package, so that the reference protocol is the
published one (not a re-implementation).

The exception to per-sample seeding (:mod:`nrpm.attacks.randomness`): pyautoattack draws its random starts and
Square's squares from torch's global RNG for the whole batch, which we cannot reach into. Each batch is run with
``torch.manual_seed(seed)`` inside a forked RNG state, so a run is reproducible for a given batching, but a
sample's result can change with ``--batch-size`` (or the number of torchrun ranks)."""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Iterator

import torch

from ..validation import check_count, check_norm
from .base import Attack, num_classes
from .registry import register_attack

__all__ = ["APGDCE", "APGDDLR", "Square", "AutoAttackStandard", "image_shape"]



@contextlib.contextmanager
def _isolate_pyautoattack() -> Iterator[None]:
    """Undo pyautoattack's global side effects.

    It calls ``torch.manual_seed`` / ``torch.cuda.manual_seed`` with its seed
    (so we fork the RNG state and restore it afterwards), and AutoAttack's
    dynamic-defence check calls ``sys.settrace(None)``, which would silently
    switch off coverage tools and debuggers (so we restore the trace function).
    """
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    previous_trace = sys.gettrace()
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        sys.settrace(previous_trace)


def image_shape(sample_shape: torch.Size) -> tuple:
    """A (C, H, W) view of one input, as Square Attack needs 4-D batches.

    Images are kept as they are; a flat vector of length d becomes
    (1, h, d // h) with h the largest divisor of d not above sqrt(d) (e.g.
    784 -> 1 x 28 x 28), and a (C, L) input becomes (C, h, L // h).
    """
    if len(sample_shape) == 3:
        return tuple(sample_shape)
    if len(sample_shape) not in (1, 2):
        raise ValueError(f"Square/AutoAttack need inputs of shape (N, d), (N, C, L) or (N, C, H, W), "
                         f"got per-sample shape {tuple(sample_shape)}")
    channels, length = (1, sample_shape[0]) if len(sample_shape) == 1 else tuple(sample_shape)
    height = max(h for h in range(1, math.isqrt(length) + 1) if length % h == 0)
    return channels, height, length // height


class _PyAutoAttack(Attack):
    """Common plumbing for attacks run through pyautoattack (Linf or L2 only)."""

    #: whether the underlying pyautoattack code needs (N, C, H, W) inputs
    needs_images = False
    #: fewest classes the underlying losses can handle
    min_classes = 2

    def __init__(self, eps: float, norm: str = "Linf", seed: int = 0):
        super().__init__(eps)
        self.norm = check_norm(norm, ("Linf", "L2"))
        self.seed = int(seed)

    def perturb(self, model, x, y):
        self._check_classes(num_classes(model, x))
        shape = image_shape(x.shape[1:]) if self.needs_images else tuple(x.shape[1:])
        if self.needs_images and self.norm == "L2" and min(shape[1:]) < 5:
            raise ValueError(f"pyautoattack's L2 Square Attack tiles the input with squares of side "
                             f"H // 5 and fails for H < 5; this input is viewed as {shape}")

        def predict(z: torch.Tensor) -> torch.Tensor:
            # pyautoattack works in float32 on reshaped inputs; hand the model its own view.
            return model(z.reshape(len(z), *x.shape[1:]).to(x.dtype))

        # a private copy: pyautoattack must not be able to write into the caller's x
        x_view = x.reshape(len(x), *shape).float().clone()
        with _isolate_pyautoattack():
            x_adv = self._run(predict, x_view, y)
        return x_adv.reshape(x.shape).to(x.dtype)

    def _check_classes(self, n_classes: int) -> None:
        if n_classes < self.min_classes:
            raise ValueError(f"{self.name} needs a model with at least {self.min_classes} classes, "
                             f"this one outputs {n_classes}")

    def _run(self, predict, x, y) -> torch.Tensor:
        raise NotImplementedError


class _APGD(_PyAutoAttack):
    loss = "ce"

    def __init__(self, eps: float, norm: str = "Linf", steps: int = 100, restarts: int = 1,
                 seed: int = 0):
        super().__init__(eps, norm, seed)
        self.steps = check_count(steps, "steps", 1)
        self.restarts = check_count(restarts, "restarts", 1)

    def _run(self, predict, x, y):
        from pyautoattack.autopgd_base import APGDAttack

        attack = APGDAttack(predict, n_iter=self.steps, norm=self.norm, n_restarts=self.restarts,
                            eps=self.eps, seed=self.seed, loss=self.loss, eot_iter=1, rho=0.75,
                            verbose=False, device=x.device)
        return attack.perturb(x, y)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm!r}, steps={self.steps}, "
                f"restarts={self.restarts}, seed={self.seed})")


@register_attack("apgd-ce")
class APGDCE(_APGD):
    """APGD on the cross-entropy loss (pyautoattack's ``APGDAttack``, loss='ce').

    Like pyautoattack, samples it fails to misclassify are returned unchanged.
    """

    name = "apgd-ce"
    loss = "ce"


@register_attack("apgd-dlr")
class APGDDLR(_APGD):
    """APGD on the DLR loss (pyautoattack's ``APGDAttack``, loss='dlr').

    The DLR loss divides by the gap between the largest and the third-largest
    logit, so the model must have at least 3 classes.
    """

    name = "apgd-dlr"
    loss = "dlr"
    min_classes = 3


@register_attack("square")
class Square(_PyAutoAttack):
    """Square Attack (black-box, score-based) via pyautoattack's ``SquareAttack``.

    Needs (N, C, H, W) inputs; other inputs are viewed as images (see
    ``image_shape``), which keeps the search valid but means "squares" are
    blocks of that view.  The L2 version needs H >= 5.  Uses the margin loss
    and pyautoattack's query-rescaled square-size schedule, so small
    ``n_queries`` budgets still shrink the squares.
    """

    name = "square"
    needs_images = True

    def __init__(self, eps: float, norm: str = "Linf", n_queries: int = 5000, seed: int = 0,
                 restarts: int = 1, p_init: float = 0.8):
        super().__init__(eps, norm, seed)
        self.n_queries = check_count(n_queries, "n_queries", 1)
        self.restarts = check_count(restarts, "restarts", 1)
        self.p_init = float(p_init)

    def _run(self, predict, x, y):
        from pyautoattack.square import SquareAttack

        attack = SquareAttack(predict, norm=self.norm, n_queries=self.n_queries, eps=self.eps,
                              p_init=self.p_init, n_restarts=self.restarts, seed=self.seed,
                              verbose=False, loss="margin", resc_schedule=True, device=x.device)
        with torch.no_grad():
            return attack.perturb(x, y)

    def __repr__(self) -> str:
        return (f"Square(eps={self.eps:g}, norm={self.norm!r}, n_queries={self.n_queries}, "
                f"restarts={self.restarts}, seed={self.seed})")


@register_attack("autoattack-l2", norm="L2")  # decorators apply bottom-up: "autoattack" first
@register_attack("autoattack", norm="Linf")
class AutoAttackStandard(_PyAutoAttack):
    """The AutoAttack protocol (Croce & Hein, 2020) via pyautoattack's ``AutoAttack``.

    ``version='standard'`` runs APGD-CE, APGD-T, FAB-T and Square (5000
    queries) on the still-robust samples, with the whole batch as one
    pyautoattack batch.  pyautoattack targets 9 classes in APGD-T/FAB-T, which
    crashes on models with fewer than 10 classes; we use ``min(9, C - 1)``
    targets, i.e. every possible target class.  The targeted DLR loss needs at
    least 4 classes ('rand', which only runs APGD-CE/DLR, needs 3).
    """

    name = "autoattack"
    needs_images = True
    versions = ("standard", "plus", "rand")

    def __init__(self, eps: float, norm: str = "Linf", version: str = "standard", seed: int = 0):
        super().__init__(eps, norm, seed)
        if version not in self.versions:
            raise ValueError(f"version must be one of {self.versions}, got {version!r}")
        self.version = version
        self.name = "autoattack" if norm == "Linf" else "autoattack-l2"
        self.min_classes = 3 if version == "rand" else 4

    def _run(self, predict, x, y):
        from pyautoattack import AutoAttack

        n_classes = predict(x[:1]).shape[1]
        adversary = AutoAttack(predict, device=x.device, eps=self.eps, norm=self.norm,
                               seed=self.seed, version=self.version)
        adversary.verbose = False
        adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes,
                                                       n_classes - 1)
        adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, n_classes - 1)
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
        return x_adv

    def __repr__(self) -> str:
        return (f"AutoAttackStandard(eps={self.eps:g}, norm={self.norm!r}, "
                f"version={self.version!r}, seed={self.seed})")
