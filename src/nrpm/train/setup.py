"""What a run is built from: the model (reprogrammed for paradigms 2 and 3), the data split, the optimiser and
schedule, and the per-process RNG states a checkpoint saves so that a resume continues exactly."""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..models.loading import load_model
from ..models import inner_model
from ..reprogram import lam_parameters, reprogram, robust_layers
from .config import TrainConfig
from .sources import input_shape, normalized, read_split, training_spec

__all__ = ["BuiltModel", "build_model", "load_train_data", "make_optimizer", "make_scheduler", "is_batchnorm",
           "set_train_modes", "rng_state", "set_rng_state", "seed_rank", "lam_values"]


# ------------------------------------------------------------------------------------------------ model
def is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def set_train_modes(model: nn.Module, bn_eval: bool) -> None:
    """Train mode for the optimiser step, BatchNorm kept in eval mode (frozen statistics) when asked."""
    model.train()
    if bn_eval:
        for m in model.modules():
            if is_batchnorm(m):
                m.eval()


def lam_values(model: nn.Module) -> dict[str, float]:
    """Each robust layer's lam, by the model's own layer names (not those of a normalisation in front)."""
    return {n: m.lam_value() for n, m in robust_layers(inner_model(model)).items()}


@dataclass
class BuiltModel:
    """The model to train (behind its input normalisation, if any), what its checkpoint said about itself, and
    what its spec resolved to (kind, factory, class; empty for a ready model passed in)."""

    model: nn.Module
    checkpoint_info: dict = field(default_factory=dict)
    model_info: dict = field(default_factory=dict)


def build_model(config: TrainConfig, model: nn.Module | None, *, starting: bool = True) -> BuiltModel:
    """The model to train and where it came from.

    ``model`` None: the model spec of ``config`` (with ``model_args``) and its checkpoint. Paradigms 2 and 3
    reprogram a plain model with ``config``'s settings, or accept one already reprogrammed with a learnable lam
    (its own lam is kept). Reprogramming acts on the model itself and ``config.normalize`` is then put in front
    (a ready :class:`~nrpm.models.NormalizedModel` keeps its own), so that layer names stay the model's own.
    ``starting``: a fresh run (not a resume), which warns when the configured lam had to be clamped.
    """
    checkpoint_info, model_info = {}, {}
    if model is None:
        loaded = load_model(config.model, config.checkpoint, config.model_args)
        model, checkpoint_info, model_info = loaded.model, loaded.checkpoint_info, loaded.model_info
    network = inner_model(model)
    _prepare_layers(config, network, starting)
    if network is model:
        model = normalized(network, config.normalize)
    if config.paradigm == 2 and not robust_layers(network):
        raise ValueError("paradigm 2 needs robust layers to learn lam, and the model has none")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters")
    return BuiltModel(model, checkpoint_info, {**model_info, "normalize": config.normalize} if model_info else {})


def _prepare_layers(config: TrainConfig, network: nn.Module, starting: bool) -> None:
    """Paradigm 0: refuse robust layers; 2 and 3: reprogram a plain model, or set the gradients of a reprogrammed
    one (paradigm 2: only the lam logits learn)."""
    layers = robust_layers(network)
    if config.paradigm == 0:
        if layers:
            raise ValueError("the model is reprogrammed (has robust layers): train it with paradigm 3, or call "
                             "nrpm.undo_reprogramming(model) for plain training")
    elif not layers:
        reprogram(network, config.reprogram_config())
        if starting:
            _warn_if_lam_clamped(config, network)
    else:
        _require_learnable_lam(config, layers)
        for pname, p in network.named_parameters():
            p.requires_grad_(config.paradigm == 3 or pname.endswith("lam_logit"))


def _require_learnable_lam(config: TrainConfig, layers: dict) -> None:
    for name, layer in layers.items():
        if not layer.learnable_lam:
            raise ValueError(f"robust layer {name!r} has a fixed lam (paradigm 1); reprogram the model with "
                             f"paradigm {config.paradigm} to learn lam")


def _warn_if_lam_clamped(config: TrainConfig, model: nn.Module) -> None:
    # A learnable lam lives in logit space, infinite at exactly 0 and 1, so the layers store a value just inside
    # (0, 1). Report the value they really start from (read back from the model, not assumed).
    if config.lam not in (0, 1):
        return
    started = sorted({f"{v:.4g}" for v in lam_values(model).values()})
    # stacklevel 6 points at the caller of run_training (here < _prepare_layers < build_model < _Run.build <
    # run_training)
    warnings.warn(f"paradigm {config.paradigm} learns lam through a logit, which is infinite at lam = "
                  f"{config.lam:g}: the starting lam was clamped to {', '.join(started)}", UserWarning, stacklevel=6)


# ------------------------------------------------------------------------------------------------ data
def load_train_data(config: TrainConfig, model: nn.Module, data):
    """(x_train, y_train, x_val, y_val): the held-out set is the last ``val_size`` images of the training split
    (``data`` (x, y), else the training split of the run's data: see :mod:`nrpm.train.sources`)."""
    x, y = data if data is not None else _read_training_split(config, model)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    _check_channels(config, x)
    if config.val_size >= len(x):
        raise ValueError(f"validation size {config.val_size} leaves no training images out of {len(x)}")
    n_train = len(x) - config.val_size
    x_train, y_train = x[:n_train], y[:n_train]
    x_val, y_val = x[n_train:], y[n_train:]
    per_epoch = config.train_subset if config.train_subset is not None else n_train
    if config.train_subset is not None and config.train_subset > n_train:
        raise ValueError(f"train subset {config.train_subset} exceeds the {n_train} training images "
                         f"(after holding out {config.val_size})")
    if per_epoch < config.batch_size:
        raise ValueError(f"{per_epoch} training images per epoch are fewer than one batch ({config.batch_size})")
    return x_train, y_train, x_val, y_val


def _read_training_split(config: TrainConfig, model: nn.Module):
    shape = input_shape(config.model, model)
    return read_split(training_spec(config, model), True, root=config.data_root,
                      image_size=config.image_size or (shape[-1] if shape else None),
                      channels=shape[0] if shape else None)


def _check_channels(config: TrainConfig, x) -> None:
    """A normalisation of other channels than the data's fails here in words, not as a broadcasting error."""
    if config.normalize and x.dim() == 4 and len(config.normalize["mean"]) not in (1, x.shape[1]):
        raise ValueError(f"normalize gives {len(config.normalize['mean'])} means and stds, the training data has "
                         f"{x.shape[1]} channel(s): give one mean and one std per channel")


# ------------------------------------------------------------------------------------------------ optimisation
def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Two parameter groups: weights (lr, weight decay) and lam logits (lam_lr, never decayed)."""
    lam_ids = {id(p) for p in lam_parameters(model)} if robust_layers(model) else set()
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in lam_ids]
    lams = [p for p in model.parameters() if p.requires_grad and id(p) in lam_ids]
    groups = []
    if weights:
        groups.append({"params": weights, "lr": config.lr, "weight_decay": config.weight_decay, "name": "weights"})
    if lams:
        groups.append({"params": lams, "lr": config.lam_lr or config.lr, "weight_decay": 0.0, "name": "lam"})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and
                               config.momentum > 0)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=config.lr)


def make_scheduler(config: TrainConfig, optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.lr_gamma)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[], gamma=1.0)  # constant, stateful


# ------------------------------------------------------------------------------------------------ RNG state
def rng_state(device: torch.device) -> dict:
    """This process's global RNG states (torch, Python, NumPy, CUDA), as tensors and plain values that
    ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_rank(seed: int, rank: int, epoch: int = 0) -> None:
    """Distinct per-process global RNG streams (dropout), reproducible from (seed, rank, epoch)."""
    s = seed + 1009 * rank + 1000003 * epoch
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)
