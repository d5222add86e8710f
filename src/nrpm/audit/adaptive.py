"""The attacks aimed at NRPM itself (check 6) and the two model overrides they and check 1 need.

An NRPM layer's gradient could be uninformative (gradient masking) while its forward value is robust only in
appearance, so the audit also attacks it with gradients that bypass the robust computation (Athalye et al. 2018,
Tramer et al. 2020):

* :func:`transfer_pgd`: PGD crafted on the plain (lam = 1) model, final iterate; the target is never queried;
* :func:`bpda_pgd`: PGD on the robust forward with the plain linear layer's backward (BPDA);
* :func:`detached_irls_pgd`: PGD with the IRLS weights treated as constants in the backward pass;
* :func:`smoothed_pgd`: PGD with the gradient of a smoother IRLS estimator (``eps`` x10 or x100, or one IRLS
  step; :data:`SMOOTHINGS`): NRPM's weights ``1 / (|r| + eps)`` are sharp for a small ``eps`` and can shatter
  the input gradient without adding robustness. One run, last iterate, judged on the true model.

All are :class:`nrpm.attacks.PGD` / ``PGDL2`` with another gradient source; the overrides are
:func:`nrpm.nn.lam_override`, :func:`nrpm.nn.backward_override` and :func:`nrpm.nn.irls_override`, so nothing
here touches a layer's storage.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from .. import attacks as A
from ..nn import backward_override, lam_override

__all__ = ["straight_through", "lam_one", "pgd_class", "transfer_pgd", "bpda_pgd", "detached_irls_pgd",
           "smoothed_pgd", "SMOOTHINGS"]

#: check 6's smoothed estimators: audit key -> (eps_scale, K cap or None)
SMOOTHINGS = {"smoothed-eps10": (10.0, None), "smoothed-eps100": (100.0, None), "smoothed-k1": (1.0, 1)}


@contextlib.contextmanager
def straight_through(model: nn.Module) -> Iterator[nn.Module]:
    """BPDA surrogate (Athalye et al., 2018): inside the block every robust layer outputs its robust value but
    backpropagates like the plain linear layer, ``plain + (robust - plain).detach()``. Restored on exit."""
    with backward_override(model, "plain"):
        yield model


@contextlib.contextmanager
def lam_one(model: nn.Module) -> Iterator[nn.Module]:
    """Every robust layer at lam = 1 exactly (a learnable lam via an infinite logit), restored on exit."""
    with lam_override(model, 1.0):
        yield model


def pgd_class(norm: str) -> type[A.Attack]:
    """The projected-gradient attack of ``norm`` ('Linf' or 'L2')."""
    return A.PGD if norm == "Linf" else A.PGDL2


def transfer_pgd(eps: float, source: nn.Module, *, norm: str = "Linf", steps: int = 40, alpha: float | None = None,
                 seed: int = 0) -> A.Attack:
    """PGD crafted on ``source`` (the usual transfer protocol: one run, final iterate; the target is not queried)."""
    return pgd_class(norm)(eps, steps=steps, alpha=alpha, seed=seed, gradient=A.TransferGradient(source),
                           keep="last")


def bpda_pgd(eps: float, *, norm: str = "Linf", **pgd_kwargs) -> A.Attack:
    """PGD whose gradient goes through the plain linear layers (robust forward, plain backward)."""
    return pgd_class(norm)(eps, gradient=A.BackwardModeGradient("plain"), **pgd_kwargs)


def detached_irls_pgd(eps: float, *, norm: str = "Linf", **pgd_kwargs) -> A.Attack:
    """PGD with every robust layer's IRLS weights treated as constants in the backward (forward unchanged)."""
    return pgd_class(norm)(eps, gradient=A.BackwardModeGradient("detached"), **pgd_kwargs)


def smoothed_pgd(eps: float, *, eps_scale: float = 1.0, K: int | None = None, norm: str = "Linf", steps: int = 40,
                 alpha: float | None = None, seed: int = 0) -> A.Attack:
    """PGD whose gradient (and step) comes from the model with every robust layer's IRLS ``eps`` x ``eps_scale``
    and at most ``K`` IRLS steps; the final iterate is returned (see :class:`nrpm.attacks.SmoothedGradient` for
    why not the best-so-far one), and the audit judges it on the true model."""
    return pgd_class(norm)(eps, steps=steps, alpha=alpha, seed=seed, gradient=A.SmoothedGradient(eps_scale, K),
                           keep="last")
