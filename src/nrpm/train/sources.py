"""Where a run's model and data come from: the model spec (a registry name or a user's factory, behind an optional
input normalisation) and the data specs (``data``, ``train_data``) read as whole splits.

Training reads the *training* split of its data (named datasets: ``train=True``; imagefolder: ``train/``, or the
whole folder without split folders; a tensors file given as ``train_data``: all of it); the final test reads the
test split of ``data`` (tensors: the file's first samples; imagefolder: ``test/``). The held-out check is taken
from the end of the training split by :func:`nrpm.train.setup.load_train_data`, never from the test data.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import data as D
from ..data.imagefolder import list_images, split_folder
from ..models import inner_model, is_registry_name, model_entry, parse_model_spec, with_normalization
from ..models.external import FILE
from .config import TrainConfig

__all__ = ["normalized", "loadable_spec", "input_shape", "training_spec", "test_spec", "read_split",
           "load_test_data"]


# ------------------------------------------------------------------------------------------------ the model
def normalized(network: nn.Module, normalize: dict | None) -> nn.Module:
    """``network`` behind ``(x - mean) / std`` when ``normalize`` is given, else ``network`` itself."""
    return network if not normalize else with_normalization(network, normalize["mean"], normalize["std"])


def loadable_spec(spec: str) -> str:
    """``spec`` with a factory file's absolute path, so that a run folder rebuilds its model from any folder;
    other specs (and names only a caller's own ``model=`` knows) unchanged."""
    try:
        parsed = parse_model_spec(spec)
    except ValueError:
        return spec
    return f"{parsed.source}:{parsed.factory}" if parsed.kind == FILE else spec


def input_shape(spec: str, network: nn.Module) -> tuple | None:
    """(C, H, W) as the registry or the model itself (an ``input_shape`` attribute) says, else None."""
    shape = model_entry(spec).input_shape if is_registry_name(spec) else None
    shape = shape or getattr(inner_model(network), "input_shape", None)
    return tuple(shape) if shape else None


# ------------------------------------------------------------------------------------------------ the data
def _model_dataset(config: TrainConfig, network: nn.Module | None) -> str | None:
    """The registry model's dataset (or a ready model's ``dataset`` attribute): the data when none is given."""
    if is_registry_name(config.model):
        return model_entry(config.model).dataset
    return getattr(inner_model(network), "dataset", None) if network is not None else None


def training_spec(config: TrainConfig, network: nn.Module | None = None) -> str:
    """The data spec whose training split the run trains on; ValueError when there is none, or only a tensors
    file as ``data`` (it has no training part: it is the test set, and ``train_data`` names the training set)."""
    if config.train_data is not None:
        return config.train_data
    spec = config.data or _model_dataset(config, network)
    if spec is None:
        raise ValueError(f"model {config.model!r} is not a registry model, so nrpm does not know its data: give "
                         f"--data (mnist, cifar10, cifar100, svhn, imagefolder:PATH) or --train-data tensors:FILE")
    if D.parse_data_spec(spec).kind == "tensors":
        raise ValueError(f"--data {spec} is one file of samples with no training part: give the training samples "
                         f"as --train-data tensors:FILE (--data {spec} is then the test set of --test-attack)")
    return spec


def test_spec(config: TrainConfig, network: nn.Module | None = None) -> str | None:
    """The data spec whose test split the final test reads (None: no data is known)."""
    return config.data or _model_dataset(config, network)


def _imagefolder_count(path: str, train: bool) -> int:
    folder, _ = split_folder(Path(path).expanduser(), "val" if train else "test")
    return len(list_images(folder)[1])


def read_split(spec: str, train: bool, *, root=None, image_size: int | None = None, channels: int | None = None,
               limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the training (``train``) or test split of ``spec``, at most ``limit`` samples of it (the first
    ones; training reads all). A tensors file is one split, whichever is asked for."""
    parsed = D.parse_data_spec(spec)
    if parsed.kind == "named":
        return D.load_dataset(parsed.value, root=root, train=train)
    if parsed.kind == "tensors":
        data = D.load_tensor_file(parsed.value)
        return data.x, data.y
    # imagefolder: split val reads the last N of train/ and split test the first N of test/, so N = all (or
    # the limit) of that folder is the whole split in the order load_samples gives it
    count = _imagefolder_count(parsed.value, train)
    n = count if train or limit is None else min(limit, count)
    samples = D.load_samples(parsed, "val" if train else "test", n, image_size=image_size, channels=channels)
    return samples.x, samples.y


def load_test_data(config: TrainConfig, network: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (or fewer) samples of the test split of the run's data, read as its model takes them."""
    spec = test_spec(config, network)
    if spec is None:
        raise ValueError(f"model {config.model!r} names no dataset, so the final test has no data: give --data "
                         f"(or test_data=(x, y))")
    shape = input_shape(config.model, network)
    x, y = read_split(spec, False, root=config.data_root, image_size=config.image_size or (shape[-1] if shape
                      else None), channels=shape[0] if shape else None, limit=n)
    return D.subset(x, y, min(n, len(x)))
