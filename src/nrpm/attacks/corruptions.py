"""Common corruptions after Hendrycks & Dietterich (2019), "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (CIFAR-10-C), in torch: :func:`corrupt` and the :class:`Corruption` "attack"
(``make_attack("corruption", severity, kind="gaussian_noise")``), whose budget is the severity 1-5.

Implemented, with the published CIFAR-10-C severity constants: gaussian_noise, shot_noise, impulse_noise,
speckle_noise, gaussian_blur, defocus_blur, contrast and brightness. Each follows the reference code on float
images in [0, 1] (the reference rounds its outputs to uint8; we do not):

* gaussian / speckle noise: ``x + N(0, c^2)`` / ``x + x * N(0, c^2)``; shot noise: ``Poisson(c x) / c``;
  impulse noise: skimage's salt-and-pepper (a fraction ``c`` of the entries set to 0 or 1, half each);
* gaussian_blur: skimage's ``gaussian`` (truncated at 4 sigma, edges extended, 'nearest');
* defocus_blur: OpenCV's ``filter2D`` (edges mirrored, BORDER_REFLECT_101) with the reference's anti-aliased
  disk kernel (a disk of radius ``r`` on a 17 x 17 grid, blurred by a 3 x 3 Gaussian);
* contrast: each channel's deviation from its image mean scaled by ``c``;
* brightness: ``c`` added to the HSV value; with hue and saturation fixed this scales the pixel's channels by
  ``V' / V`` (a black pixel becomes grey ``V'``), so no colour-space round trip is needed.

Left out: frost (it blends photographs of frost shipped with the reference code), snow and motion / zoom / glass
blur (ImageMagick's motion blur, per-pixel shuffles), fog (a plasma fractal), and elastic, pixelate and JPEG
(geometric warps, Pillow resampling and codec). Randomness comes from one ``torch.Generator`` per sample.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..validation import check_budget, check_count
from .base import Attack
from .randomness import SampleRNG
from .registry import register_attack

__all__ = ["CORRUPTIONS", "SEVERITY_CONSTANTS", "MAX_SEVERITY", "corrupt", "defocus_kernel", "Corruption"]

#: per corruption, its constant at severities 1..5, from Hendrycks & Dietterich's ``make_cifar_c.py`` parameter
#: lists (github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py), i.e. the 32 x 32 CIFAR-10-C ones
SEVERITY_CONSTANTS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),     # noise standard deviation
    "shot_noise": (500, 250, 100, 75, 50),                # Poisson rate per unit intensity (lower: noisier)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),      # fraction of entries set to 0 or 1
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),      # multiplicative noise standard deviation
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),           # sigma in pixels
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),  # (disk radius, alias sigma)
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),              # factor on the deviation from the channel mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),            # added to the HSV value
}

MAX_SEVERITY = 5


# ----------------------------------------------------------------------------------------------- pixel noise
# ``rng`` is a SampleRNG (one generator per sample) or a _BatchRNG (one torch.Generator for the whole batch)
def _gaussian_noise(x, c, rng):
    return x + c * rng.randn(x.shape[1:], like=x)


def _shot_noise(x, c, rng):
    return rng.poisson(x * c) / c


def _impulse_noise(x, c, rng):
    flipped = rng.rand(x.shape[1:], like=x) <= c
    salt = rng.rand(x.shape[1:], like=x) <= 0.5
    return torch.where(flipped, salt.to(x.dtype), x)


def _speckle_noise(x, c, rng):
    return x + x * c * rng.randn(x.shape[1:], like=x)


class _BatchRNG:
    """A caller's single ``torch.Generator`` with :class:`SampleRNG`'s draws, for the whole batch at once (then a
    sample's noise depends on its batch; attacks use per-sample generators instead)."""

    def __init__(self, generator: torch.Generator, n: int):
        self.generator, self.n = generator, n

    def rand(self, shape, like):
        return torch.rand((self.n, *shape), generator=self.generator, device=like.device, dtype=like.dtype)

    def randn(self, shape, like):
        return torch.randn((self.n, *shape), generator=self.generator, device=like.device, dtype=like.dtype)

    def poisson(self, rates):
        return torch.poisson(rates, generator=self.generator)


# ----------------------------------------------------------------------------------------------- blurs
def _gaussian_taps(sigma: float, radius: int, dtype=torch.float64) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=dtype)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """Correlate every channel of (N, C, H, W) ``x`` with the 2-D ``kernel`` (odd sides), padding by
    ``padding_mode`` so the output keeps the input size."""
    kh, kw = kernel.shape
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=padding_mode)
    weight = kernel.to(x.dtype).to(x.device).expand(x.shape[1], 1, kh, kw)
    return F.conv2d(padded, weight, groups=x.shape[1])


def _gaussian_blur(x, sigma, rng):
    # skimage.filters.gaussian -> scipy.ndimage.gaussian_filter: truncate=4.0, radius int(4 sigma + 0.5)
    taps = _gaussian_taps(sigma, int(4.0 * sigma + 0.5))
    rows = _depthwise(x, taps[:, None], "replicate")
    return _depthwise(rows, taps[None, :], "replicate")


def defocus_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's ``disk(radius, alias_blur)`` for radius <= 8: a normalised disk on the 17 x 17 grid
    blurred by OpenCV's 3 x 3 Gaussian (sigma ``alias_blur``), cropped to its non-zero support (which changes no
    output value but lets small images be mirrored at their edges)."""
    grid = torch.arange(-8, 9, dtype=torch.float64)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius ** 2).to(torch.float64)
    disk = disk / disk.sum()
    taps = _gaussian_taps(alias_blur, 1)
    blurred = _depthwise(_depthwise(disk[None, None], taps[:, None], "reflect"), taps[None, :], "reflect")[0, 0]
    rows, cols = blurred.abs().sum(1).nonzero().squeeze(1), blurred.abs().sum(0).nonzero().squeeze(1)
    reach = int(max(8 - rows.min(), rows.max() - 8, 8 - cols.min(), cols.max() - 8))
    return blurred[8 - reach:9 + reach, 8 - reach:9 + reach]


def _defocus_blur(x, c, rng):
    return _depthwise(x, defocus_kernel(*c), "reflect")  # cv2.filter2D's default border is BORDER_REFLECT_101


# ----------------------------------------------------------------------------------------------- photometric
def _contrast(x, c, rng):
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * c + means


def _brightness(x, c, rng):
    value = x.amax(dim=1, keepdim=True)                 # HSV value = the largest channel
    brighter = (value + c).clamp(0.0, 1.0)
    scale = brighter / value.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(value > 0, x * scale, brighter.expand_as(x))


_CORRUPT: dict[str, Callable] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise, "gaussian_blur": _gaussian_blur, "defocus_blur": _defocus_blur,
    "contrast": _contrast, "brightness": _brightness,
}
#: the implemented corruptions
CORRUPTIONS = tuple(_CORRUPT)
# these work per image over its spatial axes and channels, so they need (N, C, H, W) batches
_NEEDS_IMAGES = ("gaussian_blur", "defocus_blur", "contrast", "brightness")


def corrupt(x: torch.Tensor, kind: str, severity: int,
            generator: torch.Generator | SampleRNG | None = None) -> torch.Tensor:
    """``x`` (values in [0, 1]) with the corruption ``kind`` at ``severity`` (1-5; 0 returns ``x``), in [0, 1].

    ``generator``: the RNG of the noise corruptions: a :class:`~nrpm.attacks.randomness.SampleRNG` (one generator
    per row), or one ``torch.Generator`` for the whole batch; default: per-row generators seeded by (0, row
    index), so a row's noise does not depend on the other rows. The global RNG is never used.
    """
    if kind not in _CORRUPT:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    severity = _check_severity(severity)
    if severity == 0:
        return x.clone()
    if kind in _NEEDS_IMAGES and x.dim() != 4:
        raise ValueError(f"the {kind} corruption needs (N, C, H, W) images, got shape {tuple(x.shape)}")
    if generator is None:
        rng = SampleRNG.for_samples(0, range(len(x)), x.device)
    elif isinstance(generator, torch.Generator):
        rng = _BatchRNG(generator, len(x))
    else:
        rng = generator
    constant = SEVERITY_CONSTANTS[kind][severity - 1]
    return _CORRUPT[kind](x, constant, rng).clamp(0.0, 1.0)


def _check_severity(severity) -> int:
    severity = check_count(check_budget(severity, "severity"), "severity", 0)
    if severity > MAX_SEVERITY:
        raise ValueError(f"severity must be an integer in 0..{MAX_SEVERITY}, got {severity}")
    return severity


@register_attack("corruption", help="--attack-arg kind=..., budget = severity")
class Corruption(Attack):
    """A common corruption as an "attack" (not adaptive: it never looks at the model or the labels).

    The budget is the severity, an integer 1-5 (0: no corruption); ``kind`` is one of :data:`CORRUPTIONS`;
    ``seed`` and each sample's global index seed its noise, so a sample is corrupted the same way in any batch. The result is not
    projected onto any norm ball (:meth:`limit` only clips to [0, 1]): the corruption is the threat model.
    """

    name = "corruption"
    seeded_per_sample = True
    norm = "corruption"

    def __init__(self, severity: int, kind: str = "gaussian_noise", seed: int = 0):
        super().__init__(_check_severity(severity))
        if kind not in _CORRUPT:
            raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
        self.severity = int(self.eps)
        self.kind = kind
        self.seed = int(seed)

    def perturb(self, model, x, y):
        # per-sample generators (seed, global index): a sample's noise does not depend on its batch
        return corrupt(x, self.kind, self.severity, self.sample_rng(x))

    def limit(self, x_adv, x):
        return x_adv.clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"Corruption(severity={self.severity}, kind={self.kind!r}, seed={self.seed})"
