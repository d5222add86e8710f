"""Data specs (``--data``) and the samples of a split: one function for every kind of data.

A spec is a dataset name (``mnist``, ``cifar10``, ``cifar100``, ``svhn``), ``imagefolder:PATH`` or
``tensors:FILE``. :func:`load_samples` returns the N samples of a split with a description of what was read:

* ``test``: the first N test samples (tensors: the first N of the file; imagefolder: of ``test/``);
* ``val``: the last N training samples, to choose hyper-parameters such as lam without the test set (tensors: the
  last N of the file; imagefolder: of ``train/``). See :mod:`.imagefolder` and :mod:`.tensors` for the details.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .batching import subset
from .imagefolder import load_imagefolder
from .datasets import load_dataset
from .named import dataset_key
from .tensors import load_tensor_file

__all__ = ["DataSpec", "Samples", "parse_data_spec", "load_samples", "SPLITS", "DEFAULT_IMAGE_SIZE"]

SPLITS = ("test", "val")
NAMED, IMAGEFOLDER, TENSORS = "named", "imagefolder", "tensors"
DEFAULT_IMAGE_SIZE = 32  # imagefolder images for a model that does not say its input size


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value: ``kind`` 'named' (``value`` the dataset key), 'imagefolder' or 'tensors' (a path)."""

    kind: str
    value: str
    text: str

    @property
    def dataset(self) -> str | None:
        """The dataset key of a named spec (what per-dataset defaults are looked up by), else None."""
        return self.value if self.kind == NAMED else None


@dataclass
class Samples:
    """The evaluated samples and what they are: ``info`` has the spec, the split, the count and ``detected``, one
    line saying what was found (for stderr and results files)."""

    x: torch.Tensor
    y: torch.Tensor
    info: dict = field(default_factory=dict)


def parse_data_spec(text: str) -> DataSpec:
    """The spec ``text`` names; ValueError listing the accepted forms otherwise (the path is checked on loading)."""
    kind, sep, value = str(text).partition(":")
    if sep and kind in (IMAGEFOLDER, TENSORS):
        if not value:
            raise ValueError(f"{kind}: needs a path, e.g. {kind}:{'images/' if kind == IMAGEFOLDER else 'samples.pt'}")
        return DataSpec(kind, value, text)
    return DataSpec(NAMED, dataset_key(text), text)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")


def _named(spec: DataSpec, split: str, n: int, root) -> tuple[torch.Tensor, torch.Tensor, str]:
    if split == "test":
        x, y = subset(*load_dataset(spec.value, root=root, train=False), n)
        return x, y, f"{spec.value}: the first {n} test images"
    x, y = load_dataset(spec.value, root=root, train=True)
    if n > len(x):
        raise ValueError(f"--n-samples {n} exceeds the {len(x)} training images")
    return x[-n:], y[-n:], f"{spec.value}: the last {n} training images (split val)"


def _tensors(spec: DataSpec, split: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    data = load_tensor_file(spec.value)
    if n is None:  # a user's own file is evaluated whole unless a count is asked for
        return data.x, data.y, f"{data.detected}; all {len(data.x)} samples of the file"
    if n > len(data.x):
        raise ValueError(f"--n-samples {n} exceeds the {len(data.x)} samples in {spec.value}: pass --n-samples "
                         f"{len(data.x)} or fewer")
    if split == "test":
        return data.x[:n], data.y[:n], f"{data.detected}; split test = the first {n} samples of the file"
    return (data.x[-n:], data.y[-n:],
            f"{data.detected}; split val = the last {n} samples of the file (a file has no training part)")


def load_samples(spec: DataSpec | str, split: str = "test", n: int | None = 1000, *,
                 root: str | os.PathLike | None = None, image_size: int | None = None,
                 channels: int | None = None) -> Samples:
    """The ``n`` samples of ``split`` (see the module docstring) as float (N, C, H, W) in [0, 1] and int64 labels;
    ``n`` None takes every sample of a tensors file (a named dataset or an imagefolder needs a count).

    ``root``: the data root of named datasets (``--data-root``); ``image_size`` and ``channels``: how imagefolder
    images are read (default 32, RGB).
    """
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    _check_split(split)
    if spec.kind == NAMED:
        x, y, detected = _named(spec, split, n, root)
    elif spec.kind == TENSORS:
        x, y, detected = _tensors(spec, split, n)
    else:
        data = load_imagefolder(Path(spec.value), split, n, image_size=image_size or DEFAULT_IMAGE_SIZE,
                                channels=channels or 3)
        x, y, detected = data.x, data.y, data.detected
    info = {"spec": spec.text, "kind": spec.kind, "dataset": spec.dataset, "split": split, "n": len(x),
            "shape": list(x.shape[1:]), "detected": detected}
    return Samples(x, y, info)
