"""Adversarial attacks and robust-accuracy helpers.

Every attack is an object with a budget (``eps``), a ``norm`` and a ``name``;
calling it as ``attack(model, x, y)`` returns a detached adversarial batch in
``[0, 1]`` that lies inside the budget.  The contract shared by all attacks:

* the model is put in eval mode during the attack and every module's training
  flag is restored afterwards;
* model parameters are never modified; they are frozen (``requires_grad=False``)
  only for the duration of the attack, so no attack (not even pyautoattack's FAB,
  which calls ``.backward()``) can write into a parameter's ``.grad``, and their
  ``requires_grad`` flags are restored afterwards;
* gradients are true input gradients through the full model;
* random starts use a ``torch.Generator`` seeded per call on ``x.device``; the
  global RNG is never mutated (pyautoattack seeds the global RNG itself, so its
  calls run inside ``torch.random.fork_rng``);
* ``eps == 0`` returns ``x`` unchanged.

FGSM, PGD (Linf / L2), the paper's single-step L1 / L2 attacks, its L0 top-k
attack and the noise baseline are written by hand here rather than taken from
an attack library: we need exact control of determinism and budgets, and the
paper's L1 and L0 attacks are specific variants that libraries do not provide.
AutoAttack, APGD and Square come from the ``pyautoattack`` package so that the
reference protocol is the published one.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import sys
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

NORMS = ("Linf", "L2", "L1", "L0")


# --------------------------------------------------------------------------
# Small tensor helpers
# --------------------------------------------------------------------------

def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (N,) tensor so it broadcasts against a batch shaped like ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def _lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
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
    return _lp_norm(x_adv - x, norm)


def _normalise(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Scale each sample of ``grad`` to unit ``norm``; all-zero samples stay zero."""
    size = _lp_norm(grad, norm).clamp_min(torch.finfo(grad.dtype).tiny)
    return grad / _per_sample(size, grad)


def _project(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x`` and onto [0, 1].

    Rows already inside the ball are returned bit-for-bit unchanged (apart from
    the [0, 1] clip), so this is a safe no-op for attacks that respect the budget.
    For L1 the perturbation is rescaled, which stays inside both the ball and the
    box because ``x`` itself is in the box.  For L0 the ``eps`` largest changes
    are kept.
    """
    if norm == "Linf":
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    elif norm in ("L2", "L1"):
        delta = x_adv - x
        size = _lp_norm(delta, norm)
        too_big = size > eps
        if too_big.any():
            scale = (eps / size.clamp_min(torch.finfo(size.dtype).tiny)).clamp(max=1.0)
            shrunk = x + delta * _per_sample(scale, delta)
            x_adv = torch.where(_per_sample(too_big, x_adv), shrunk, x_adv)
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
    return torch.where(_per_sample(too_many, x_adv), projected, x_adv)


def _make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A private RNG for one attack call, so the global RNG is never touched."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def _random_signs(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniformly random +-1 entries with the dtype/device of ``like``."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

def _check_eps(eps, what: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"{what} must be a real number >= 0, got {eps!r}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {eps!r}")
    return eps


def _check_count(value, what: str, minimum: int) -> int:
    """An integer option such as ``steps``; integral floats (3.0) are accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value):
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_norm(norm: str, allowed) -> str:
    if norm not in allowed:
        raise ValueError(f"norm must be one of {tuple(allowed)}, got {norm!r}")
    return norm


def _validate_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    """Reject inputs an attack cannot meaningfully perturb."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be torch.Tensors")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must be batched (N, ...), got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must be a 1-D tensor of integer class labels, got shape {tuple(y.shape)} "
                         f"and dtype {y.dtype}")
    if len(x) != len(y):
        raise ValueError(f"x and y batch sizes differ: {len(x)} inputs vs {len(y)} labels")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if x.numel() == 0:
        return
    if torch.isnan(x).any():
        raise ValueError("x contains NaN; inputs must lie in [0, 1]")
    low, high = x.min().item(), x.max().item()
    if low < 0.0 or high > 1.0:
        raise ValueError(f"x must lie in [0, 1], but its values range over [{low:.6g}, {high:.6g}]")


# --------------------------------------------------------------------------
# Model handling
# --------------------------------------------------------------------------

@contextlib.contextmanager
def _attack_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration of an attack.

    Each module's training flag and each parameter's ``requires_grad`` flag are
    restored individually, so models with mixed train/eval submodules or partly
    frozen weights come back exactly as they were.
    """
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    training_flags = [(module, module.training) for module in modules]
    parameters = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    grad_flags = [(parameter, parameter.requires_grad) for parameter in parameters]
    try:
        if isinstance(model, torch.nn.Module):
            model.eval()
        for parameter in parameters:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in grad_flags:
            parameter.requires_grad_(flag)
        for module, flag in training_flags:
            module.training = flag


def _per_sample_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Default loss.  Also correct for models that output log-probabilities:
    log_softmax is idempotent, so CE on log_softmax outputs equals CE on logits."""
    return F.cross_entropy(logits, y, reduction="none")


def _logits_2d(model, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != len(x):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return a (batch, classes) tensor of logits, got {shape}")
    return logits


def _loss_and_gradient(model, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn):
    """Per-sample losses, their input gradient and which samples are misclassified.

    Losses are summed (not averaged) so each sample's gradient does not depend
    on the batch size.  ``torch.autograd.grad`` w.r.t. the input only leaves
    parameters' ``.grad`` untouched.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _logits_2d(model, x)
        losses = loss_fn(logits, y)
        if not losses.requires_grad:
            raise RuntimeError("the model output does not depend differentiably on its input; "
                               "gradient-based attacks need input gradients")
        (grad,) = torch.autograd.grad(losses.sum(), x)
    fooled = logits.detach().argmax(dim=1) != y
    return grad.detach(), losses.detach(), fooled


@torch.no_grad()
def _loss_and_fooled(model, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn):
    logits = _logits_2d(model, x)
    return loss_fn(logits, y), logits.argmax(dim=1) != y


def _num_classes(model, x: torch.Tensor) -> int:
    with torch.no_grad():
        return _logits_2d(model, x[:1]).shape[1]


# --------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------

class Attack:
    """Base class: ``attack(model, x, y) -> x_adv``.

    Subclasses set ``name`` and ``norm`` and implement ``_perturb(model, x, y)``,
    which runs with the model already in eval mode with frozen parameters.  The
    base class validates inputs, handles ``eps == 0``, projects the result onto
    the budget and [0, 1] as a safety net (a no-op for a correct attack) and
    returns a detached tensor with the dtype of ``x``.
    """

    name: str = "attack"
    norm: str = "Linf"

    def __init__(self, eps: float):
        self.eps = _check_eps(eps)

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial version of ``x`` (values in [0, 1], shape (N, ...)) for labels ``y`` (N,).

        Raises ValueError for non-float ``x``, values outside [0, 1], NaNs,
        non-integer or mismatched labels.
        """
        _validate_batch(x, y)
        x = x.detach()
        if self.eps == 0 or len(x) == 0:
            return x.clone()
        with _attack_mode(model):
            x_adv = self._perturb(model, x, y.detach().long())
        x_adv = _project(x_adv.detach().to(x.dtype), x, self.norm, self.eps)
        return x_adv.detach()

    def _perturb(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, norm={self.norm!r}, eps={self.eps:g})"


class _GradientAttack(Attack):
    """Shared ``loss_fn`` option of the hand-written gradient attacks.

    ``loss_fn(outputs, y)`` must return per-sample losses of shape (N,);
    default: cross-entropy.
    """

    def __init__(self, eps: float, loss_fn: Optional[LossFn] = None):
        super().__init__(eps)
        self.loss_fn = loss_fn if loss_fn is not None else _per_sample_cross_entropy


# --------------------------------------------------------------------------
# Single-step attacks
# --------------------------------------------------------------------------

class FGSM(_GradientAttack):
    """Fast gradient sign method (Linf): ``x + eps * sign(grad)``, clipped to [0, 1]."""

    name = "fgsm"
    norm = "Linf"

    def _perturb(self, model, x, y):
        grad, _, _ = _loss_and_gradient(model, x, y, self.loss_fn)
        return (x + self.eps * grad.sign()).clamp(0.0, 1.0)


class FGML2(_GradientAttack):
    """Single L2 gradient step: ``x + eps * g / ||g||_2``, clipped to [0, 1].

    Clipping only moves coordinates back towards ``x``, so the result stays in
    the L2 ball.  A sample with an all-zero gradient is left unchanged.
    """

    name = "fgm_l2"
    norm = "L2"

    def _perturb(self, model, x, y):
        grad, _, _ = _loss_and_gradient(model, x, y, self.loss_fn)
        return (x + self.eps * _normalise(grad, "L2")).clamp(0.0, 1.0)


class FGML1(_GradientAttack):
    """The paper's single-step L1 attack: ``x + eps * g / ||g||_1``, clipped to [0, 1].

    Note this is *not* the steepest-ascent step under an L1 budget (which would
    put the whole budget on the coordinate with the largest ``|g|``); it is the
    gradient normalised to L1 norm ``eps``, as in Robustness Reprogramming
    (ICLR 2025).  ``||delta||_1 == eps`` before clipping, and clipping to [0, 1]
    only shrinks the perturbation, so the result stays inside the L1 ball.
    """

    name = "fgm_l1"
    norm = "L1"

    def _perturb(self, model, x, y):
        grad, _, _ = _loss_and_gradient(model, x, y, self.loss_fn)
        return (x + self.eps * _normalise(grad, "L1")).clamp(0.0, 1.0)


class L0TopK(_GradientAttack):
    """The paper's L0 attack: perturb the ``k`` coordinates with the largest ``|grad|``.

    Each selected coordinate is set to 1 if its gradient is positive and to 0 if
    negative (the extreme value in the ascent direction); a selected coordinate
    with exactly zero gradient is left unchanged.  Coordinates are counted per
    scalar input entry: for a C x H x W image every channel value of every pixel
    is one coordinate, so ``k`` is a budget on changed entries, not on pixels.
    The budget is ``k`` (an integer >= 0); ``eps`` is an alias of ``k``.
    """

    name = "l0"
    norm = "L0"

    def __init__(self, k: int, loss_fn: Optional[LossFn] = None):
        k = _check_count(_check_eps(k, "k"), "k", 0)
        super().__init__(k, loss_fn)
        self.k = k

    def _perturb(self, model, x, y):
        grad, _, _ = _loss_and_gradient(model, x, y, self.loss_fn)
        flat_grad = grad.flatten(1)
        k = min(self.k, flat_grad.shape[1])
        chosen = flat_grad.abs().topk(k, dim=1).indices
        chosen_grad = flat_grad.gather(1, chosen)
        flat_x = x.flatten(1).clone()
        extreme = (chosen_grad > 0).to(x.dtype)  # 1 where the loss rises with the value
        new_values = torch.where(chosen_grad != 0, extreme, flat_x.gather(1, chosen))
        return flat_x.scatter(1, chosen, new_values).reshape_as(x)

    def __repr__(self) -> str:
        return f"L0TopK(k={self.k})"


# --------------------------------------------------------------------------
# Iterative attacks
# --------------------------------------------------------------------------

class _BestSoFar:
    """Per-sample record of the strongest point found across steps and restarts.

    A sample keeps the *first* misclassified point found for it; until then it
    keeps the point with the highest loss.  Starting from ``x`` itself means the
    result is never worse than no attack.
    """

    def __init__(self, x: torch.Tensor):
        self.x_adv = x.clone()
        self.loss = torch.full((len(x),), -math.inf, device=x.device, dtype=torch.float32)
        self.found = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def update(self, index: torch.Tensor, candidate, losses, fooled) -> None:
        still_open = ~self.found[index]
        better = still_open & (fooled | (losses.float() > self.loss[index]))
        target = index[better]
        self.x_adv[target] = candidate[better]
        self.loss[target] = losses[better].float()
        self.found[target] = fooled[better]


class _ProjectedGradientAttack(_GradientAttack):
    """Projected gradient ascent with random restarts (shared by PGD and PGDL2).

    Returns, per sample, the first iterate (over all steps and restarts) that
    the model misclassifies, or else the iterate with the highest loss.  Later
    restarts only attack samples not yet fooled; since the first restart uses
    the same random start regardless of ``restarts``, more restarts are never
    weaker.
    """

    def __init__(self, eps: float, steps: int = 40, alpha: Optional[float] = None,
                 random_start: bool = True, restarts: int = 1, seed: int = 0,
                 loss_fn: Optional[LossFn] = None):
        super().__init__(eps, loss_fn)
        self.steps = _check_count(steps, "steps", 1)
        self.restarts = _check_count(restarts, "restarts", 1)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else _check_eps(alpha, "alpha")
        self.random_start = bool(random_start)
        self.seed = int(seed)

    def _perturb(self, model, x, y):
        generator = _make_generator(self.seed, x.device)
        best = _BestSoFar(x)
        for _ in range(self.restarts):
            index = (~best.found).nonzero().squeeze(1)
            if len(index) == 0:
                break
            self._one_restart(model, x[index], y[index], index, best, generator)
        return best.x_adv

    def _one_restart(self, model, x, y, index, best: _BestSoFar, generator) -> None:
        x_adv = self._start(x, generator) if self.random_start else x.clone()
        for _ in range(self.steps):
            grad, losses, fooled = _loss_and_gradient(model, x_adv, y, self.loss_fn)
            best.update(index, x_adv, losses, fooled)
            x_adv = _project(x_adv + self.alpha * self._direction(grad), x, self.norm, self.eps)
        losses, fooled = _loss_and_fooled(model, x_adv, y, self.loss_fn)
        best.update(index, x_adv, losses, fooled)

    def _start(self, x, generator) -> torch.Tensor:
        raise NotImplementedError

    def _direction(self, grad) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:g}, steps={self.steps}, alpha={self.alpha:g}, "
                f"random_start={self.random_start}, restarts={self.restarts}, seed={self.seed})")


class PGD(_ProjectedGradientAttack):
    """Linf projected gradient descent (Madry et al.); default ``alpha = 2.5 * eps / steps``.

    Random start: uniform in the Linf ball.
    """

    name = "pgd"
    norm = "Linf"

    def _start(self, x, generator):
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.eps * (2 * noise - 1)).clamp(0.0, 1.0)

    def _direction(self, grad):
        return grad.sign()


class PGDL2(_ProjectedGradientAttack):
    """L2 projected gradient descent with per-sample normalised gradient steps.

    Random start: a Gaussian direction scaled to a radius drawn uniformly in
    ``[0, eps]``.  After every step the perturbation is projected onto the L2
    ball and the input onto [0, 1].
    """

    name = "pgd_l2"
    norm = "L2"

    def _start(self, x, generator):
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        radius = self.eps * torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype)
        delta = _normalise(direction, "L2") * _per_sample(radius, x)
        return _project(x + delta, x, "L2", self.eps)

    def _direction(self, grad):
        return _normalise(grad, "L2")


# --------------------------------------------------------------------------
# Random-noise baseline
# --------------------------------------------------------------------------

class NoiseAttack(Attack):
    """Random sign noise that spends the same budget as an attack (a baseline).

    * Linf: ``x + eps * s`` with ``s`` uniform in {-1, +1}^d;
    * L2: ``x + eps * s / sqrt(d)``; L1: ``x + eps * s / d`` (exactly on the sphere);
    * L0: ``eps`` random coordinates set to random values in {0, 1}
      (the random counterpart of :class:`L0TopK`).

    Clipped to [0, 1], which only shrinks the perturbation.
    """

    name = "noise"

    def __init__(self, eps: float, norm: str = "Linf", seed: int = 0):
        self.norm = _check_norm(norm, NORMS)
        if norm == "L0":
            eps = _check_count(_check_eps(eps), "eps (number of coordinates for norm='L0')", 0)
        super().__init__(eps)
        self.seed = int(seed)

    def _perturb(self, model, x, y):
        generator = _make_generator(self.seed, x.device)
        if self.norm == "L0":
            return self._random_coordinates(x, generator)
        signs = _random_signs(x.shape, generator, x)
        dims = x[0].numel()
        scale = {"Linf": 1.0, "L2": 1.0 / math.sqrt(dims), "L1": 1.0 / dims}[self.norm]
        return (x + self.eps * scale * signs).clamp(0.0, 1.0)

    def _random_coordinates(self, x, generator):
        flat_x = x.flatten(1).clone()
        k = min(int(self.eps), flat_x.shape[1])
        scores = torch.rand(flat_x.shape, generator=generator, device=x.device)
        chosen = scores.topk(k, dim=1).indices
        values = torch.randint(0, 2, chosen.shape, generator=generator, device=x.device)
        return flat_x.scatter(1, chosen, values.to(x.dtype)).reshape_as(x)

    def __repr__(self) -> str:
        return f"NoiseAttack(eps={self.eps:g}, norm={self.norm!r}, seed={self.seed})"


# --------------------------------------------------------------------------
# pyautoattack wrappers (AutoAttack, APGD, Square)
# --------------------------------------------------------------------------

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


def _image_shape(sample_shape: torch.Size) -> tuple:
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
        self.norm = _check_norm(norm, ("Linf", "L2"))
        self.seed = int(seed)

    def _perturb(self, model, x, y):
        self._check_classes(_num_classes(model, x))
        shape = _image_shape(x.shape[1:]) if self.needs_images else tuple(x.shape[1:])
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
        self.steps = _check_count(steps, "steps", 1)
        self.restarts = _check_count(restarts, "restarts", 1)

    def _run(self, predict, x, y):
        from pyautoattack.autopgd_base import APGDAttack

        attack = APGDAttack(predict, n_iter=self.steps, norm=self.norm, n_restarts=self.restarts,
                            eps=self.eps, seed=self.seed, loss=self.loss, eot_iter=1, rho=0.75,
                            verbose=False, device=x.device)
        return attack.perturb(x, y)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm!r}, steps={self.steps}, "
                f"restarts={self.restarts}, seed={self.seed})")


class APGDCE(_APGD):
    """APGD on the cross-entropy loss (pyautoattack's ``APGDAttack``, loss='ce').

    Like pyautoattack, samples it fails to misclassify are returned unchanged.
    """

    name = "apgd-ce"
    loss = "ce"


class APGDDLR(_APGD):
    """APGD on the DLR loss (pyautoattack's ``APGDAttack``, loss='dlr').

    The DLR loss divides by the gap between the largest and the third-largest
    logit, so the model must have at least 3 classes.
    """

    name = "apgd-dlr"
    loss = "dlr"
    min_classes = 3


class Square(_PyAutoAttack):
    """Square Attack (black-box, score-based) via pyautoattack's ``SquareAttack``.

    Needs (N, C, H, W) inputs; other inputs are viewed as images (see
    ``_image_shape``), which keeps the search valid but means "squares" are
    blocks of that view.  The L2 version needs H >= 5.  Uses the margin loss
    and pyautoattack's query-rescaled square-size schedule, so small
    ``n_queries`` budgets still shrink the squares.
    """

    name = "square"
    needs_images = True

    def __init__(self, eps: float, norm: str = "Linf", n_queries: int = 5000, seed: int = 0,
                 restarts: int = 1, p_init: float = 0.8):
        super().__init__(eps, norm, seed)
        self.n_queries = _check_count(n_queries, "n_queries", 1)
        self.restarts = _check_count(restarts, "restarts", 1)
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


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

#: name -> factory called as ``factory(eps, **kwargs)``
ATTACKS: dict[str, Callable[..., Attack]] = {
    "fgsm": FGSM,
    "pgd": PGD,
    "pgd_l2": PGDL2,
    "fgm_l1": FGML1,
    "fgm_l2": FGML2,
    "l0": L0TopK,
    "apgd-ce": APGDCE,
    "apgd-dlr": APGDDLR,
    "square": Square,
    "autoattack": functools.partial(AutoAttackStandard, norm="Linf"),
    "autoattack-l2": functools.partial(AutoAttackStandard, norm="L2"),
    "noise": NoiseAttack,
}


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def make_attack(name: str, eps: float, **kwargs) -> Attack:
    """Build a registered attack: ``make_attack('pgd', 8/255, steps=20)``.

    Names are case-insensitive and '-' / '_' are interchangeable.  For 'l0',
    ``eps`` is the number of coordinates ``k``.
    """
    by_canonical = {_canonical(key): key for key in ATTACKS}
    key = by_canonical.get(_canonical(name)) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}")
    factory = ATTACKS[key]
    fixed = getattr(factory, "keywords", {}) or {}
    clash = sorted(set(kwargs) & set(fixed))
    if clash:
        raise TypeError(f"attack {key!r} fixes {', '.join(f'{k}={fixed[k]!r}' for k in clash)}; "
                        f"do not pass {', '.join(clash)}")
    signature = inspect.signature(factory)
    try:
        signature.bind(eps, **kwargs)
    except TypeError as error:
        accepted = [p for p in signature.parameters if p not in fixed][1:]
        raise TypeError(f"bad arguments for attack {key!r}: {error}; "
                        f"it accepts eps and {', '.join(accepted) or 'nothing else'}") from None
    return factory(eps, **kwargs)


# --------------------------------------------------------------------------
# Accuracy helpers
# --------------------------------------------------------------------------

def _model_device(model, fallback: torch.device) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    return fallback


def _batches(x, y, batch_size: int, device):
    batch_size = _check_count(batch_size, "batch_size", 1)
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)


@torch.no_grad()
def _predict(model, x: torch.Tensor) -> torch.Tensor:
    return _logits_2d(model, x).argmax(dim=1)


def clean_accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of ``x`` the model classifies correctly (eval mode, no grad)."""
    _validate_batch(x, y)
    if len(x) == 0:
        raise ValueError("cannot compute an accuracy on an empty batch")
    correct = 0
    with _attack_mode(model):
        for x_batch, y_batch in _batches(x, y, batch_size, _model_device(model, x.device)):
            correct += (_predict(model, x_batch) == y_batch).sum().item()
    return correct / len(x)


def robust_accuracy(model, attack: Attack, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int = 256) -> float:
    """Fraction of ``x`` classified correctly both clean and under ``attack``.

    Misclassified clean samples count as errors and are not attacked (they
    could not become robust), which also saves time.
    """
    _validate_batch(x, y)
    if len(x) == 0:
        raise ValueError("cannot compute an accuracy on an empty batch")
    robust = 0
    with _attack_mode(model):
        for x_batch, y_batch in _batches(x, y, batch_size, _model_device(model, x.device)):
            correct = _predict(model, x_batch) == y_batch
            if not correct.any():
                continue
            x_adv = attack(model, x_batch[correct], y_batch[correct])
            robust += (_predict(model, x_adv) == y_batch[correct]).sum().item()
    return robust / len(x)


__all__ = [
    "Attack", "FGSM", "PGD", "PGDL2", "FGML1", "FGML2", "L0TopK", "NoiseAttack",
    "APGDCE", "APGDDLR", "Square", "AutoAttackStandard",
    "ATTACKS", "make_attack", "robust_accuracy", "clean_accuracy", "perturbation_norm", "NORMS",
]
