"""What a run is built from: the model (reprogrammed for paradigms 2 and 3), the data split, the optimiser and
schedule, and the per-process RNG states a checkpoint saves so that a resume continues exactly."""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch
from torch import nn

from .. import data as D
from ..models import model_from_checkpoint
from ..reprogram import lam_parameters, reprogram, robust_layers
from .config import TrainConfig

__all__ = ["build_model", "load_train_data", "make_optimizer", "make_scheduler", "is_batchnorm", "set_train_modes",
           "rng_state", "set_rng_state", "seed_rank", "lam_values"]


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
    return {n: m.lam_value() for n, m in robust_layers(model).items()}


def build_model(config: TrainConfig, model: nn.Module | None, *, starting: bool = True) -> tuple[nn.Module, dict]:
    """The model to train and what its checkpoint said about itself.

    ``model`` None: the registry model of ``config`` with its checkpoint. Paradigms 2 and 3 reprogram a plain
    model with ``config``'s settings, or accept one already reprogrammed with a learnable lam (its own lam is
    kept). ``starting``: a fresh run (not a resume), which warns when the configured lam had to be clamped.
    """
    info: dict = {}
    if model is None:
        model, info = model_from_checkpoint(config.model, config.checkpoint)
    layers = robust_layers(model)
    if config.paradigm == 0:
        if layers:
            raise ValueError("the model is reprogrammed (has robust layers): train it with paradigm 3, or call "
                             "nrpm.undo_reprogramming(model) for plain training")
    elif not layers:
        reprogram(model, config.reprogram_config())
        if starting:
            _warn_if_lam_clamped(config, model)
    else:
        _require_learnable_lam(config, layers)
        for pname, p in model.named_parameters():
            p.requires_grad_(config.paradigm == 3 or pname.endswith("lam_logit"))
    if config.paradigm == 2 and not robust_layers(model):
        raise ValueError("paradigm 2 needs robust layers to learn lam, and the model has none")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters")
    return model, info


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
    # stacklevel 5 points at the caller of run_training (here < build_model < _Run.build < run_training)
    warnings.warn(f"paradigm {config.paradigm} learns lam through a logit, which is infinite at lam = "
                  f"{config.lam:g}: the starting lam was clamped to {', '.join(started)}", UserWarning, stacklevel=5)


# ------------------------------------------------------------------------------------------------ data
def load_train_data(config: TrainConfig, model: nn.Module, data):
    """(x_train, y_train, x_val, y_val): the held-out set is the last ``val_size`` images of the training split."""
    if data is None:
        dataset = getattr(model, "dataset", None)
        if dataset is None:
            raise ValueError(f"model {config.model!r} names no dataset; pass data=(x, y)")
        x, y = D.load_dataset(dataset, root=config.data_root, train=True)
    else:
        x, y = data
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
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
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)
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
