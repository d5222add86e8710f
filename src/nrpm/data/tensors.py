"""A user's own samples in one file: ``tensors:FILE``.

FILE is a ``.pt`` / ``.pth`` holding ``{'x': images, 'y': labels}`` (``torch.save``, read with weights_only) or an
``.npz`` with arrays ``x`` and ``y`` (``numpy.savez``). Two image layouts are accepted, told apart by dtype:

* float (16/32/64 bit), (N, C, H, W), values in [0, 1] (what nrpm's loaders return);
* uint8, (N, H, W, C), values 0..255 (how images are usually stored), converted to float (N, C, H, W) / 255.

Everything else is refused with what was expected: another rank, float values outside [0, 1] (normalised data:
store the raw images and give ``--normalize``), NaN, a float array that looks channels-last, labels that are not
one integer per sample, negative labels.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..formats import read_torch_file

__all__ = ["TensorData", "load_tensor_file", "TENSOR_SUFFIXES"]

TENSOR_SUFFIXES = (".pt", ".pth", ".npz")
_CHANNELS = (1, 3)  # the channel counts a layout check may take for granted
_EXPECTED = "float (N, C, H, W) in [0, 1] or uint8 (N, H, W, C)"


@dataclass
class TensorData:
    """The samples of a tensors file, and one line saying what was found and how it was read."""

    x: torch.Tensor  # float32 (N, C, H, W) in [0, 1]
    y: torch.Tensor  # int64 (N,)
    layout: str  # "float NCHW" or "uint8 NHWC"
    detected: str


def _read_pt(path: Path) -> tuple[object, object]:
    raw = read_torch_file(path, "tensors file", "save it with torch.save({'x': x, 'y': y}, FILE)")
    if not isinstance(raw, dict) or "x" not in raw or "y" not in raw:
        found = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"tensors file {path} holds {found}, expected a dict with 'x' (images) and 'y' (labels): "
                         f"torch.save({{'x': x, 'y': y}}, FILE)")
    return raw["x"], raw["y"]


def _read_npz(path: Path) -> tuple[object, object]:
    def unreadable(error: Exception) -> ValueError:
        return ValueError(f"tensors file {path} is not a readable .npz ({type(error).__name__}: {error})")

    try:
        arrays = np.load(path, allow_pickle=False)  # never unpickle: a data file must not run code
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise unreadable(error) from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise ValueError(f"tensors file {path} holds one array, expected an .npz with 'x' and 'y': "
                         f"numpy.savez(FILE, x=x, y=y)")
    with arrays:
        if "x" not in arrays.files or "y" not in arrays.files:
            raise ValueError(f"tensors file {path} holds arrays {sorted(arrays.files)}, expected 'x' (images) and "
                             f"'y' (labels): numpy.savez(FILE, x=x, y=y)")
        try:
            return arrays["x"], arrays["y"]
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:  # truncated, or object arrays
            raise unreadable(error) from None


def _as_tensor(value, name: str, path: Path) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ValueError(f"tensors file {path}: {name} is an object array, expected numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise ValueError(f"tensors file {path}: {name} is a {type(value).__name__}, expected a tensor or array")


def _float_images(x: torch.Tensor, path: Path) -> torch.Tensor:
    if x.shape[-1] in _CHANNELS and x.shape[1] not in _CHANNELS:
        raise ValueError(f"tensors file {path}: float x of shape {tuple(x.shape)} looks channels-last; float images "
                         f"must be (N, C, H, W): x.permute(0, 3, 1, 2)")
    if not torch.isfinite(x).all():
        raise ValueError(f"tensors file {path}: x holds NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise ValueError(f"tensors file {path}: float x spans {low:g}..{high:g}, expected [0, 1]: for pixels 0..255 "
                         f"divide by 255; for normalised images store the raw ones and give --normalize MEAN... STD...")
    return x.float()


def _uint8_images(x: torch.Tensor, path: Path) -> torch.Tensor:
    if x.shape[-1] not in _CHANNELS:
        hint = " (it looks channels-first: x.permute(0, 2, 3, 1))" if x.shape[1] in _CHANNELS else ""
        raise ValueError(f"tensors file {path}: uint8 x of shape {tuple(x.shape)} has {x.shape[-1]} channels last; "
                         f"uint8 images must be (N, H, W, C) with C 1 or 3{hint}")
    return x.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _images(x: torch.Tensor, path: Path) -> tuple[torch.Tensor, str]:
    if x.dim() != 4:
        raise ValueError(f"tensors file {path}: x has shape {tuple(x.shape)} ({x.dim()} dims), expected {_EXPECTED}")
    if x.dtype == torch.uint8:
        return _uint8_images(x, path), "uint8 NHWC"
    if x.is_floating_point():
        return _float_images(x, path), "float NCHW"
    raise ValueError(f"tensors file {path}: x is {x.dtype}, expected {_EXPECTED}")


def _labels(y: torch.Tensor, n: int, path: Path) -> torch.Tensor:
    if y.dim() != 1:
        raise ValueError(f"tensors file {path}: y has shape {tuple(y.shape)}, expected one integer label per sample "
                         f"(N,) (class indices, not one-hot)")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"tensors file {path}: y is {y.dtype}, expected integer class indices (y.long())")
    if len(y) != n:
        raise ValueError(f"tensors file {path}: {len(y)} labels for {n} images")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"tensors file {path}: labels span {int(y.min())}..{int(y.max())}, expected indices >= 0")
    return y.long()


def load_tensor_file(path: str | Path) -> TensorData:
    """Every sample of ``path`` (see the module docstring), converted to float (N, C, H, W) in [0, 1]."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tensors file not found: {path} (expected a .pt with {{'x', 'y'}} or an .npz)")
    if path.suffix.lower() not in TENSOR_SUFFIXES:
        raise ValueError(f"tensors file {path}: unknown suffix {path.suffix!r}, expected .pt / .pth "
                         f"(torch.save({{'x': x, 'y': y}})) or .npz (numpy.savez(FILE, x=x, y=y))")
    raw_x, raw_y = _read_npz(path) if path.suffix.lower() == ".npz" else _read_pt(path)
    x, layout = _images(_as_tensor(raw_x, "x", path), path)
    y = _labels(_as_tensor(raw_y, "y", path), len(x), path)
    read_as = "values 0..255 converted to float NCHW in [0, 1]" if layout == "uint8 NHWC" else "float in [0, 1]"
    classes = int(y.max()) + 1 if len(y) else 0
    detected = (f"{path}: {len(x)} samples {'x'.join(map(str, x.shape[1:]))}, {layout} ({read_as}), "
                f"labels 0..{classes - 1}")
    return TensorData(x, y, layout, detected)
