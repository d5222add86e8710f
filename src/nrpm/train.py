"""Training: base models (standard or adversarial) and reprogramming paradigms 2 and 3.

    from nrpm.train import TrainConfig, run_training
    cfg = TrainConfig(model="mlp3", paradigm=2, checkpoint="pretrained", lam=0.5, attack="fgsm", attack_eps=0.3,
                      epochs=10, optimizer="adam", lr=0.01)
    summary = run_training(cfg, "runs/mlp3_p2")

Paradigms: 0 = a plain model, no reprogramming (``nrpm train``); 2 = only the per-layer lam logits train, every
weight and BatchNorm statistic stays as in the base checkpoint (the artifact is the small reprogramming state);
3 = weights and lam train together (the artifact is a full checkpoint plus the reprogramming state).

What a run writes to its output folder (only rank 0 writes):

* ``checkpoint.pt`` after every epoch (atomically: temp file + rename): model, optimizer, scheduler, the data
  generator and every rank's RNG states, epoch, history and time. ``resume=True`` continues exactly: the same
  lam and weights as an uninterrupted run at the same epoch. A run killed mid-epoch loses only that epoch.
* the artifact, refreshed every epoch: ``reprogramming.pt`` (paradigms 2 and 3: config + per-layer lam, apply it
  with ``nrpm.load_reprogramming`` on the base model) and ``model.pt`` (paradigms 0 and 3: ``{'state_dict':
  plain weights, ...}``, loadable by ``nrpm.models.load_checkpoint`` / ``nrpm eval --checkpoint``).
  :func:`load_trained` rebuilds the trained model from a run folder.
* ``log.jsonl`` / ``log.csv`` (one row per epoch: loss, train accuracy, clean and robust accuracy on the held-out
  set, per-layer lam, learning rate, time), rewritten with the checkpoint so they never disagree with it;
  TensorBoard scalars under ``tb/`` when asked for and installed; ``run.json`` (settings, versions, summary);
  ``test_<attack>.json/.md`` when a test evaluation is asked for.

Data: the held-out (validation) set is the last ``val_size`` images of the *training* split, never the test set;
training uses the rest, in a fresh seeded order each epoch (``train_subset`` = a random subset of that size per
epoch). The last incomplete batch of an epoch is dropped (so every step has the full global batch, which keeps
a multi-process run equal to a single-process one).

Adversarial examples (FGSM = one step of size ``attack_alpha`` (default eps) from x; PGD-k = k signed-gradient
steps with projection, from a uniform random start, returning the last iterate as in Madry et al.) are computed
on the current model in eval mode with its parameters frozen; the random starts come from the run's seeded
generator, drawn for the whole global batch, so they do not depend on the number of processes.

Multi-process (``torchrun --nproc_per_node=N``): see :mod:`nrpm.distributed`. The global batch (``batch_size``)
is drawn identically on every rank and split into equal contiguous parts, one per rank; DistributedDataParallel
averages the gradients, so a step equals the single-process step on the whole batch up to floating-point
reduction order. (This is DistributedSampler's contract, disjoint per-rank shards of one seeded shuffle,
applied per batch instead of per epoch: a per-epoch DistributedSampler makes rank r's i-th batch a different set
of images than one process's i-th batch.) Exceptions: dropout masks come from per-rank RNGs, and BatchNorm in
train mode uses per-rank batch statistics on CPU (on CUDA it is converted to SyncBatchNorm, which is exact).

CPU threads: on a busy machine give each process one thread (``--threads 1`` or ``OMP_NUM_THREADS=1``; torchrun
sets the latter); two OpenMP threads competing with other jobs for two cores were measured 5-10x slower.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import attacks as A
from . import data as D
from . import distributed as dist
from . import reports
from ._io import output_dir_lock
from .models import create_model, default_robust_layers, load_checkpoint, model_from_checkpoint
from .reprogram import (ReprogramConfig, atomic_torch_save, lam_parameters, load_reprogramming, reprogram,
                        reprogramming_state, robust_layers)

__all__ = ["TrainConfig", "TestSettings", "run_training", "adversarial_examples", "load_trained",
           "read_checkpoint", "CHECKPOINT_FORMAT", "MODEL_FORMAT"]

CHECKPOINT_FORMAT = "nrpm-train-checkpoint/1"
MODEL_FORMAT = "nrpm-model/1"
CHECKPOINT_NAME = "checkpoint.pt"

_ATTACKS = ("none", "fgsm", "pgd")
_OPTIMIZERS = ("sgd", "adam", "adamw")
_SCHEDULES = ("constant", "step", "cosine")
_BN_MODES = ("auto", "train", "eval")


@dataclass
class TrainConfig:
    """Everything that defines a training run; a resume must have the same values (``identity()``).

    model / checkpoint: registry name; "pretrained" (the paper's file), a path, or None (random init).
    paradigm: 0 (plain model), 2 (lam only) or 3 (weights and lam).
    lam, K, eps, layers, skip, layer_types: the reprogramming (paradigms 2, 3); layers None = the paper's
    choice (:func:`nrpm.models.default_robust_layers`: all Linear/Conv2d, ResNets their 3x3 block convs).
    attack: "none", "fgsm" or "pgd"; attack_eps budget (inputs in [0, 1]); attack_steps (fgsm: 1, pgd default 7);
    attack_alpha step size (fgsm default eps, pgd default 2.5 eps / steps); random_start (fgsm default off,
    pgd default on). clean_weight: the loss is ``w * CE(clean) + (1 - w) * CE(adversarial)`` (0 = adversarial
    only, Madry et al. and the paper; 0.5 = Goodfellow et al.'s mix); ignored without an attack.
    optimizer "sgd" | "adam" | "adamw", lr (weights), lam_lr (lam logits; default lr), momentum, nesterov,
    weight_decay (never applied to lam logits); schedule "constant" | "step" (milestones, gamma) | "cosine",
    stepped once per epoch.
    augment: random crop (pad 4) + flip; None = on for CIFAR-10, off for MNIST.
    train_subset: train on a fresh random subset of this many images each epoch (None = all).
    val_size: the last val_size training images, held out for per-epoch clean/robust accuracy (0 = none).
    val_attack / val_eps / val_steps: the per-epoch robust check (default: the training attack).
    bn_mode: "auto" (paradigm 2: BatchNorm in eval mode, frozen statistics; otherwise train mode), "train", "eval".
    """

    model: str
    paradigm: int = 0
    checkpoint: str | None = None
    lam: float = 0.5
    K: int = 3
    eps: float = 1e-3
    layers: Sequence[str] | None = None
    skip: Sequence[str] = ()
    layer_types: Sequence[str] = ("linear", "conv2d")
    attack: str = "none"
    attack_eps: float = 0.0
    attack_steps: int | None = None
    attack_alpha: float | None = None
    random_start: bool | None = None
    clean_weight: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    lam_lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    augment: bool | None = None
    train_subset: int | None = None
    val_size: int = 1000
    val_attack: str | None = None
    val_eps: float | None = None
    val_steps: int | None = None
    bn_mode: str = "auto"
    seed: int = 0
    data_root: str | None = None

    def __post_init__(self):
        if self.paradigm not in (0, 2, 3):
            raise ValueError(f"unknown paradigm {self.paradigm!r}: training knows 0 (plain model), 2 (lam only) "
                             f"and 3 (weights and lam); paradigm 1 trains nothing (use nrpm eval --lam)")
        if self.checkpoint == "none":
            self.checkpoint = None
        self.attack = str(self.attack).lower()
        if self.attack not in _ATTACKS:
            raise ValueError(f"unknown training attack {self.attack!r}; choose one of {list(_ATTACKS)}")
        self.attack_eps = _nonneg(self.attack_eps, "attack eps")
        if self.attack != "none" and self.attack_eps == 0:
            raise ValueError(f"attack {self.attack!r} needs a budget > 0 (attack_eps / --attack-eps)")
        if self.attack == "none":
            self.attack_eps, self.attack_steps, self.attack_alpha, self.random_start = 0.0, None, None, None
        else:
            default_steps = 1 if self.attack == "fgsm" else 7
            self.attack_steps = _count(default_steps if self.attack_steps is None else self.attack_steps,
                                       "attack steps", 1)
            if self.attack_alpha is None:
                fgsm = self.attack == "fgsm"
                self.attack_alpha = self.attack_eps if fgsm else 2.5 * self.attack_eps / self.attack_steps
            self.attack_alpha = _positive(self.attack_alpha, "attack step size (alpha)")
            if self.random_start is None:
                self.random_start = self.attack == "pgd"
            self.random_start = bool(self.random_start)
        self.clean_weight = float(self.clean_weight)
        if not 0.0 <= self.clean_weight <= 1.0:
            raise ValueError(f"clean weight must be in [0, 1], got {self.clean_weight}")
        if self.attack == "none":
            self.clean_weight = 0.0
        self.val_attack = self.attack if self.val_attack is None else str(self.val_attack).lower()
        if self.val_attack not in _ATTACKS:
            raise ValueError(f"unknown validation attack {self.val_attack!r}; choose one of {list(_ATTACKS)}")
        if self.val_attack == "none":
            self.val_eps, self.val_steps = None, None
        else:
            self.val_eps = _positive(self.attack_eps if self.val_eps is None else self.val_eps, "validation eps")
            default = self.attack_steps if (self.attack == self.val_attack and self.attack_steps) else (
                1 if self.val_attack == "fgsm" else 7)
            self.val_steps = _count(default if self.val_steps is None else self.val_steps, "validation steps", 1)
        self.epochs = _count(self.epochs, "epochs", 1)
        self.batch_size = _count(self.batch_size, "batch size", 1)
        self.optimizer = str(self.optimizer).lower()
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {list(_OPTIMIZERS)}")
        self.lr = _positive(self.lr, "learning rate")
        if self.lam_lr is not None:
            self.lam_lr = _positive(self.lam_lr, "lam learning rate")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        self.weight_decay = _nonneg(self.weight_decay, "weight decay")
        self.schedule = str(self.schedule).lower()
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {list(_SCHEDULES)}")
        self.milestones = [_count(m, "milestone", 1) for m in self.milestones]
        if self.schedule == "step" and not self.milestones:
            self.milestones = sorted({max(1, self.epochs // 2), max(1, (3 * self.epochs) // 4)})
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")
        if self.train_subset is not None:
            self.train_subset = _count(self.train_subset, "train subset", 1)
            if self.train_subset < self.batch_size:
                raise ValueError(f"train subset {self.train_subset} is smaller than one batch ({self.batch_size})")
        self.val_size = _count(self.val_size, "validation size", 0)
        self.bn_mode = str(self.bn_mode).lower()
        if self.bn_mode not in _BN_MODES:
            raise ValueError(f"unknown BatchNorm mode {self.bn_mode!r}; choose one of {list(_BN_MODES)}")
        if self.paradigm == 2 and self.bn_mode == "train":
            raise ValueError("paradigm 2 keeps the base model untouched, BatchNorm statistics included (its artifact "
                             "holds only lam): bn_mode 'train' is not allowed; use paradigm 3")
        if self.paradigm in (2, 3):
            self.reprogram_config()  # validates lam, K, eps, layer types
            if self.K == 0:
                raise ValueError("K = 0 makes every robust layer the plain layer, so lam has no effect and "
                                 "nothing can be learned; use K >= 1")
        if isinstance(self.layers, str):
            self.layers = [self.layers]
        self.layers = list(self.layers) if self.layers is not None else None
        self.skip = [self.skip] if isinstance(self.skip, str) else list(self.skip)
        self.layer_types = [self.layer_types] if isinstance(self.layer_types, str) else list(self.layer_types)

    def reprogram_config(self) -> ReprogramConfig:
        layers = self.layers if self.layers is not None else default_robust_layers(self.model)
        return ReprogramConfig(lam=self.lam, K=self.K, eps=self.eps, paradigm=self.paradigm if self.paradigm else 1,
                               target_modules=layers, skip=list(self.skip), target_types=list(self.layer_types))

    def bn_eval(self) -> bool:
        return self.bn_mode == "eval" or (self.bn_mode == "auto" and self.paradigm == 2)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("layers", "skip", "layer_types", "milestones"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    def identity(self) -> dict:
        """The settings a resume must share: all but where the data lives, and the number of epochs unless the
        schedule depends on it (cosine), so a constant- or step-schedule run can be extended."""
        d = self.to_dict()
        d.pop("data_root")
        if self.schedule != "cosine":
            d.pop("epochs")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class TestSettings:
    """A final evaluation on the first ``n_samples`` test images: attack name (nrpm.attacks registry), its
    options, budgets (0 = clean, in [0, 1] input units), ``budget_unit`` for display (255: '8/255')."""

    attack: str = "fgsm"
    attack_kwargs: dict = field(default_factory=dict)
    budgets: Sequence[float] = (0.0,)
    n_samples: int = 1000
    batch_size: int = 250
    budget_unit: float = 1.0

    def __post_init__(self):
        self.budgets = [_nonneg(b, "test budget") for b in self.budgets]
        self.n_samples = _count(self.n_samples, "test samples", 1)
        self.batch_size = _count(self.batch_size, "test batch size", 1)
        A.make_attack(self.attack, 0.0, **self.attack_kwargs)  # validates name and options

    def label(self) -> str:
        opts = "".join(f"_{k}{v}" for k, v in sorted(self.attack_kwargs.items()))
        return f"{A.canonical_name(self.attack).replace('-', '_')}{opts}"


# ------------------------------------------------------------------------------------------------ validation
def _nonneg(value, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return value


def _positive(value, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {value}")
    return value


def _count(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".nrpm-write-test.", dir=out)
        os.close(fd)
        os.remove(tmp)
    except OSError as error:
        raise ValueError(f"output folder {out} is not writable: {error}") from None


# ------------------------------------------------------------------------------------------------ attacks
class _EvalFrozen:
    """Eval mode and frozen parameters for an attack; every flag restored afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.eval()
        for p, _ in self.flags:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)
        for m, mode in self.modes:
            m.training = mode
        return False


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str, eps: float,
                         steps: int = 1, alpha: float | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Training-time adversarial examples (Linf), computed on ``model`` in eval mode with frozen parameters.

    "fgsm": ``x + alpha * sign(grad)`` (alpha default eps), from ``x + noise`` when ``noise`` is given;
    "pgd": ``steps`` signed-gradient steps of size alpha (default 2.5 eps / steps), each projected onto the eps
    ball around x and [0, 1], from ``x + noise`` (``noise`` uniform in [-eps, eps], or None for no random start);
    returns the last iterate. ``attack="none"`` returns ``x``.
    """
    if attack == "none" or eps == 0:
        return x
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"unknown training attack {attack!r}")
    if alpha is None:
        alpha = eps if attack == "fgsm" else 2.5 * eps / steps
    x = x.detach()
    with _EvalFrozen(model):
        x_adv = x.clone() if noise is None else (x + noise.to(x)).clamp(0.0, 1.0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(x_adv), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


def _val_attack(config: TrainConfig) -> A.Attack | None:
    if config.val_attack == "none":
        return None
    if config.val_attack == "fgsm":
        return A.FGSM(config.val_eps)
    same = config.attack == "pgd" and config.val_eps == config.attack_eps and config.val_steps == config.attack_steps
    alpha = config.attack_alpha if same else None
    return A.PGD(config.val_eps, steps=config.val_steps, alpha=alpha, random_start=True, seed=config.seed)


# ------------------------------------------------------------------------------------------------ model/data
def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _set_train_modes(model: nn.Module, bn_eval: bool) -> None:
    model.train()
    if bn_eval:
        for m in model.modules():
            if _is_bn(m):
                m.eval()


def _build_model(config: TrainConfig, model: nn.Module | None) -> tuple[nn.Module, dict]:
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
    else:
        for name, layer in layers.items():
            if not layer.learnable_lam:
                raise ValueError(f"robust layer {name!r} has a fixed lam (paradigm 1); reprogram the model with "
                                 f"paradigm {config.paradigm} to learn lam")
        for pname, p in model.named_parameters():
            p.requires_grad_(config.paradigm == 3 or pname.endswith("lam_logit"))
    if config.paradigm == 2 and not robust_layers(model):
        raise ValueError("paradigm 2 needs robust layers to learn lam, and the model has none")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters")
    return model, info


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
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


def _scheduler(config: TrainConfig, optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[], gamma=1.0)  # constant, stateful


def _load_train_data(config: TrainConfig, model: nn.Module, data):
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


# ------------------------------------------------------------------------------------------------ RNG state
def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_rank(seed: int, rank: int, epoch: int = 0) -> None:
    s = seed + 1009 * rank + 1000003 * epoch
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


# ------------------------------------------------------------------------------------------------ checkpoints
def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a training checkpoint written by :func:`run_training`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign file
        raise ValueError(f"{path} is not a readable nrpm training checkpoint: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an nrpm training checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state


def _identity_diff(saved: dict, now: dict) -> list[str]:
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k)!r} in the file, {now.get(k)!r} now" for k in keys if saved.get(k) != now.get(k)]


def _plain_state_dict(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.endswith(".lam_logit")}


def load_trained(path: str | os.PathLike, map_location="cpu") -> tuple[nn.Module, dict]:
    """The trained model of a run folder (or its ``model.pt`` / ``reprogramming.pt`` / ``checkpoint.pt``), in
    eval mode: paradigm 2 = the base checkpoint with the learned lam; paradigm 3 = trained weights with the
    learned lam; paradigm 0 = the trained plain model. Returns (model, info)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no trained model at {path}")
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        candidates = [folder / "model.pt", folder / "reprogramming.pt", folder / CHECKPOINT_NAME]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"no model.pt, reprogramming.pt or {CHECKPOINT_NAME} in {folder}")
        path = found[0]
    if path.name == CHECKPOINT_NAME:
        ckpt = read_checkpoint(path)
        config = TrainConfig.from_dict(ckpt["config"])
        model = create_model(config.model)
        if config.paradigm:
            reprogram(model, config.reprogram_config())
        model.load_state_dict(ckpt["model_state"])
        return model.to(map_location).eval(), {"source": str(path), "epoch": ckpt["epoch"],
                                                "paradigm": config.paradigm}
    if path.name != "reprogramming.pt":
        model_file = path
        obj = torch.load(model_file, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
            raise ValueError(f"{model_file} is not an nrpm model file (expected format {MODEL_FORMAT!r})")
        model = create_model(obj["model"])
        info = load_checkpoint(model, obj)
        if obj.get("reprogramming"):
            load_reprogramming(model, obj["reprogramming"])
        info.update(source=str(model_file), paradigm=obj.get("paradigm"))
        return model.to(map_location).eval(), info
    rp_file = path
    state = torch.load(rp_file, map_location="cpu", weights_only=True)
    name, base = state.get("base_model"), state.get("base_checkpoint")
    if name is None:
        raise ValueError(f"{rp_file} does not name its base model; load the base model yourself and call "
                         f"nrpm.load_reprogramming(model, path)")
    model, info = model_from_checkpoint(name, base or None)
    load_reprogramming(model, state)
    info.update(source=str(rp_file), paradigm=2)
    return model.to(map_location).eval(), info


# ------------------------------------------------------------------------------------------------ logs
def _lam_values(model: nn.Module) -> dict[str, float]:
    return {n: m.lam_value() for n, m in robust_layers(model).items()}


def _write_logs(out: Path, history: list[dict]) -> None:
    reports.atomic_write_text(out / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    lam_names = list(history[-1].get("lam", {})) if history else []
    fields = ["epoch", "lr", "train_loss", "train_acc", "val_clean", "val_robust", "epoch_seconds",
              "train_seconds", "wall_seconds", "samples"] + [f"lam/{n}" for n in lam_names]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        flat = dict(row)
        flat.update({f"lam/{n}": v for n, v in row.get("lam", {}).items()})
        writer.writerow(flat)
    reports.atomic_write_text(out / "log.csv", buf.getvalue())


def _tensorboard(out: Path, enabled: bool, log):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        log("tensorboard is not installed: skipping TensorBoard logs (log.jsonl and log.csv are written)")
        return None
    return SummaryWriter(log_dir=str(out / "tb"))


def _epoch_line(config: TrainConfig, row: dict) -> str:
    parts = [f"epoch {row['epoch']}/{config.epochs}", f"loss {row['train_loss']:.4f}",
             f"train acc {100 * row['train_acc']:.1f}%"]
    if row.get("val_clean") is not None:
        parts.append(f"val clean {100 * row['val_clean']:.1f}%")
    if row.get("val_robust") is not None:
        parts.append(f"val {config.val_attack}({config.val_eps:g}) {100 * row['val_robust']:.1f}%")
    parts += [f"lr {row['lr']:.3g}", f"{row['epoch_seconds']:.1f} s"]
    if row.get("lam"):
        parts.append("lam " + " ".join(f"{n}={v:.3f}" for n, v in row["lam"].items()))
    return " | ".join(parts)


def _versions(info: dist.DistInfo) -> dict:
    import nrpm

    return {"nrpm": nrpm.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads(), "world_size": info.world_size, "backend": info.backend,
            "device": str(info.device)}


# ------------------------------------------------------------------------------------------------ evaluation
def _evaluate_split(model: nn.Module, x, y, attack: A.Attack | None, batch_size: int) -> tuple[float, float | None]:
    n = len(x)
    clean = dist.sharded_correct(lambda xs, ys: A.clean_accuracy(model, xs, ys, batch_size=batch_size), x, y) / n
    robust = None
    if attack is not None:
        robust = dist.sharded_correct(lambda xs, ys: A.robust_accuracy(model, attack, xs, ys,
                                                                       batch_size=batch_size), x, y) / n
    return clean, robust


def _run_test(model: nn.Module, settings: TestSettings, test_data, config: TrainConfig, seed: int,
              out: Path, main: bool, log, meta: dict) -> dict:
    if test_data is None:
        x, y = D.load_dataset(model.dataset, root=config.data_root, train=False)
    else:
        x, y = test_data
    x, y = D.subset(x, y, min(settings.n_samples, len(x)))
    kwargs = A.with_default_seed(settings.attack, settings.attack_kwargs, seed)
    cells = []
    for budget in settings.budgets:
        start = time.perf_counter()
        if budget == 0:
            correct = dist.sharded_correct(lambda xs, ys: A.clean_accuracy(model, xs, ys,
                                                                           batch_size=settings.batch_size), x, y)
        else:
            attack = A.make_attack(settings.attack, budget, **kwargs)
            correct = dist.sharded_correct(lambda xs, ys: A.robust_accuracy(model, attack, xs, ys,
                                                                            batch_size=settings.batch_size), x, y)
        cells.append({"budget": budget, "attack": "clean" if budget == 0 else settings.attack,
                      "accuracy": correct / len(x), "correct": correct, "n": len(x),
                      "seconds": round(time.perf_counter() - start, 3)})
    header = ["model"] + ["clean" if c["budget"] == 0 else reports.format_budget(c["budget"], settings.budget_unit)
                          for c in cells]
    row = [meta["row"]] + [f"{100 * c['accuracy']:.1f}" for c in cells]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(row) + " |"])
    result = {"format": "nrpm-train-test/1", "settings": asdict(settings), "cells": cells, "table": table, **meta}
    if main:
        label = settings.label()
        reports.write_json(out / f"test_{label}.json", result)
        reports.atomic_write_text(out / f"test_{label}.md",
                                  f"# {meta['row']}: {settings.attack} {settings.attack_kwargs or ''}\n\n"
                                  f"Accuracy (%) on the first {len(x)} test images.\n\n{table}\n")
        log(table)
    return result


# ------------------------------------------------------------------------------------------------ training
def run_training(config: TrainConfig, out_dir: str | os.PathLike, *, model: nn.Module | None = None,
                 data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 test_data: tuple[torch.Tensor, torch.Tensor] | None = None, device: str = "auto",
                 resume: bool | str | os.PathLike | None = None, overwrite: bool = False,
                 max_minutes: float | None = None, progress: bool = True, tensorboard: bool = False,
                 test: TestSettings | Sequence[TestSettings] | None = None, log: Callable[[str], None] = print,
                 step_hook: Callable[[int, int], None] | None = None) -> dict:
    """Train (or resume) the run ``config`` into ``out_dir``; returns the summary also written to run.json.

    model / data / test_data: a ready model (plain, or reprogrammed with learnable lam) and the training split
    (x, y) / test split, instead of the registry model and dataset named by ``config``.
    resume: True (``out_dir/checkpoint.pt``, which must exist), "auto" (that file if it exists, else start), or a
    checkpoint path; refused when it was written for other settings.
    Without resume an existing checkpoint in ``out_dir`` is an error unless ``overwrite``.
    max_minutes: budget of optimisation time (summed over resumes; per-epoch validation and checkpointing not
    counted); the run stops at the epoch boundary before the first epoch that would end past it.
    test: evaluation(s) of the final model on the test split, written to ``test_<attack>.json/.md``.
    step_hook(epoch, step): called after every optimiser step (for tests and custom monitoring).
    Under torchrun every rank calls this; only rank 0 prints and writes.
    """
    per_rank = dist.per_rank_batch_size(config.batch_size, dist.env_world_size())  # before joining any group
    info = dist.init_from_env(device)
    main = info.is_main
    say = log if main else (lambda *_: None)
    if max_minutes is not None:
        max_minutes = _positive(max_minutes, "max minutes")
    tests = [] if test is None else ([test] if isinstance(test, TestSettings) else list(test))
    out = Path(out_dir)
    _check_writable(out)
    with output_dir_lock(out, "train", enabled=main):
        ckpt_path = out / CHECKPOINT_NAME

        saved = None
        if resume == "auto" and not ckpt_path.exists():
            resume = None  # "auto": continue the run in out_dir if there is one, else start it
        if resume:
            resume_path = ckpt_path if resume is True or resume == "auto" else Path(resume)
            if not resume_path.is_file():
                raise FileNotFoundError(f"nothing to resume: {resume_path} does not exist")
            saved = read_checkpoint(resume_path)
            diff = _identity_diff(saved["identity"], config.identity())
            if diff:
                raise ValueError(f"resume file {resume_path} was written for other settings (model or config): "
                                 + "; ".join(diff))
        elif ckpt_path.exists() and not overwrite:
            raise ValueError(f"{ckpt_path} exists: pass resume (--resume) to continue that run, or overwrite "
                             f"(--overwrite) to start again")

        torch.manual_seed(config.seed)  # model init (checkpoint 'none') is the same on every rank
        model, model_info = _build_model(config, model)
        x_train, y_train, x_val, y_val = _load_train_data(config, model, data)
        augment = config.augment if config.augment is not None else getattr(model, "dataset", None) == "cifar10"
        bn_eval = config.bn_eval()
        model = model.to(info.device)
        optimizer = _optimizer(config, model)
        scheduler = _scheduler(config, optimizer)
        generator = torch.Generator().manual_seed(config.seed)
        history: list[dict] = []
        start_epoch, train_seconds, wall_seconds = 0, 0.0, 0.0
        if saved is not None:
            try:
                model.load_state_dict(saved["model_state"])
            except RuntimeError as error:
                raise ValueError(f"resume file does not fit the model: {error}") from None
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            generator.set_state(saved["generator"])
            history = list(saved["history"])
            start_epoch, train_seconds, wall_seconds = saved["epoch"], saved["train_seconds"], saved["wall_seconds"]
            ranks = saved["rng"]
            if len(ranks) == info.world_size:
                _set_rng_state(ranks[info.rank], info.device)
            else:
                _seed_rank(config.seed, info.rank, start_epoch)
                say(f"note: the checkpoint holds RNG states of {len(ranks)} processes, this run has "
                    f"{info.world_size}: per-process RNGs (dropout) are reseeded")
            say(f"resuming from {resume_path} at epoch {start_epoch}/{config.epochs}")
        else:
            _seed_rank(config.seed, info.rank)

        raw = model
        has_train_bn = any(_is_bn(m) for m in raw.modules()) and not bn_eval
        if info.distributed:
            if has_train_bn and info.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                raw = model
            elif has_train_bn:
                say("note: BatchNorm in train mode uses per-process batch statistics on CPU (SyncBatchNorm needs "
                    "CUDA), so results differ slightly from a single process")
            ddp_kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
            model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

        writer = _tensorboard(out, tensorboard and main, say) if main else None
        val_attack = _val_attack(config)
        val_batch = max(config.batch_size, 250)
        if main:
            n_trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
            say(f"nrpm {'train' if config.paradigm == 0 else f'reprogram paradigm {config.paradigm}'}: "
                f"{config.model}, {n_trainable} trainable parameters, {len(x_train)} training / {len(x_val)} held-out "
                f"images, {info.world_size} process(es) on {info.device}, attack {config.attack}"
                + (f" eps={config.attack_eps:g} steps={config.attack_steps} alpha={config.attack_alpha:g}"
                   if config.attack != "none" else "")
                + (", BatchNorm frozen (eval mode)" if bn_eval and any(_is_bn(m) for m in raw.modules()) else ""))
            if robust_layers(raw):
                say("lam " + " ".join(f"{n}={v:.3f}" for n, v in _lam_values(raw).items()))

        def artifacts(epoch: int) -> list[str]:
            written = []
            if config.paradigm in (2, 3):
                rp = reprogramming_state(raw)
                if config.paradigm == 2:
                    rp.update(base_model=config.model, base_checkpoint=config.checkpoint)
                atomic_torch_save(rp, out / "reprogramming.pt")
                written.append("reprogramming.pt")
            if config.paradigm in (0, 3):
                atomic_torch_save({"format": MODEL_FORMAT, "model": config.model, "paradigm": config.paradigm,
                                   "epoch": epoch, "state_dict": _plain_state_dict(raw),
                                   "reprogramming": reprogramming_state(raw) if config.paradigm else None,
                                   "config": config.to_dict()}, out / "model.pt")
                written.append("model.pt")
            return written

        stopped = "completed"
        epoch = start_epoch
        from tqdm.auto import tqdm

        while epoch < config.epochs:
            done_epochs = max(1, len(history))
            mean_epoch = train_seconds / done_epochs if history else 0.0
            over = max_minutes is not None and history and train_seconds + mean_epoch > max_minutes * 60
            if dist.all_reduce_max(1.0 if over else 0.0) > 0:
                stopped = "time budget"
                say(f"stopping before epoch {epoch + 1}: {train_seconds / 60:.2f} of {max_minutes:g} minutes of "
                    f"optimisation used, an epoch takes about {mean_epoch / 60:.2f}")
                break
            wall_start = time.perf_counter()
            order = torch.randperm(len(x_train), generator=generator)
            if config.train_subset is not None:
                order = order[:config.train_subset]
            n_steps = len(order) // config.batch_size
            lr_now = optimizer.param_groups[0]["lr"]
            bar = tqdm(total=n_steps, disable=not (progress and main), desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="step", leave=False)
            totals = torch.zeros(3, dtype=torch.float64)
            step_start = time.perf_counter()
            for step in range(n_steps):
                idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                xb, yb = x_train[idx], y_train[idx]
                if augment:
                    xb = D.random_crop_flip(xb, 4, generator=generator)
                noise = None
                if config.attack != "none" and config.random_start:
                    noise = (2 * torch.rand(xb.shape, generator=generator, dtype=xb.dtype) - 1) * config.attack_eps
                lo, hi = info.rank * per_rank, (info.rank + 1) * per_rank
                xl, yl = xb[lo:hi].to(info.device), yb[lo:hi].to(info.device)
                x_clean = xl
                if config.attack != "none":
                    xl = adversarial_examples(raw, xl, yl, attack=config.attack, eps=config.attack_eps,
                                              steps=config.attack_steps, alpha=config.attack_alpha,
                                              noise=None if noise is None else noise[lo:hi])
                _set_train_modes(raw, bn_eval)
                logits = model(xl)
                loss = F.cross_entropy(logits, yl)
                if config.clean_weight > 0:
                    w = config.clean_weight
                    loss = w * F.cross_entropy(model(x_clean), yl) + (1 - w) * loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                totals += torch.tensor([loss.item() * len(yl), (logits.argmax(1) == yl).sum().item(), len(yl)],
                                       dtype=torch.float64)
                if main and progress:
                    post = {"loss": f"{loss.item():.3f}"}
                    if robust_layers(raw):
                        lams = list(_lam_values(raw).values())
                        post["lam"] = f"{min(lams):.3f}..{max(lams):.3f}" if len(lams) > 1 else f"{lams[0]:.3f}"
                    bar.set_postfix(post)
                bar.update(1)
                if step_hook is not None:
                    step_hook(epoch, step)
            bar.close()
            step_seconds = dist.all_reduce_max(time.perf_counter() - step_start)
            totals = dist.all_reduce_sum(totals)
            train_seconds += step_seconds
            scheduler.step()
            val_clean = val_robust = None
            if len(x_val):
                val_clean, val_robust = _evaluate_split(raw, x_val, y_val, val_attack, val_batch)
            epoch += 1
            row = {"epoch": epoch, "lr": lr_now, "train_loss": totals[0].item() / max(totals[2].item(), 1),
                   "train_acc": totals[1].item() / max(totals[2].item(), 1), "val_clean": val_clean,
                   "val_robust": val_robust, "lam": _lam_values(raw), "samples": int(totals[2].item()),
                   "step_seconds": round(step_seconds, 3)}
            rng = dist.all_gather_object(_rng_state(info.device))
            epoch_wall = dist.all_reduce_max(time.perf_counter() - wall_start)
            wall_seconds += epoch_wall
            row.update(epoch_seconds=round(epoch_wall, 3), train_seconds=round(train_seconds, 3),
                       wall_seconds=round(wall_seconds, 3))
            history.append(row)
            if main:
                atomic_torch_save({"format": CHECKPOINT_FORMAT, "identity": config.identity(),
                                   "config": config.to_dict(), "epoch": epoch,
                                   "model_state": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
                                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                   "generator": generator.get_state(), "rng": rng, "history": history,
                                   "train_seconds": train_seconds, "wall_seconds": wall_seconds,
                                   "world_size": info.world_size}, ckpt_path)
                artifacts(epoch)
                _write_logs(out, history)
                if writer is not None:
                    for key in ("train_loss", "train_acc", "val_clean", "val_robust", "lr"):
                        if row[key] is not None:
                            writer.add_scalar(key, row[key], epoch)
                    for name, value in row["lam"].items():
                        writer.add_scalar(f"lam/{name}", value, epoch)
                    writer.flush()
                say(_epoch_line(config, row))
            dist.barrier()

        if writer is not None:
            writer.close()
        written = [] if epoch == 0 else (["reprogramming.pt"] if config.paradigm in (2, 3) else []) + (
            ["model.pt"] if config.paradigm in (0, 3) else [])
        summary = {"format": "nrpm-train-run/1", "config": config.to_dict(), "epochs_done": epoch,
                   "stopped": stopped, "train_seconds": round(train_seconds, 3), "wall_seconds": round(wall_seconds, 3),
                   "max_minutes": max_minutes, "final": history[-1] if history else None,
                   "lam": _lam_values(raw) if robust_layers(raw) else None, "artifacts": written,
                   "checkpoint_info": {k: v for k, v in model_info.items() if isinstance(v, (str, int, float))},
                   "versions": _versions(info), "tests": {}}
        row_name = {0: f"{config.model} trained", 2: f"{config.model} paradigm 2", 3: f"{config.model} paradigm 3"}
        for settings in tests:
            res = _run_test(raw, settings, test_data, config, config.seed, out, main, say,
                            {"row": row_name[config.paradigm], "epochs_done": epoch})
            summary["tests"][settings.label()] = {"table": res["table"], "cells": res["cells"]}
        if main:
            previous = {}
            if (out / "run.json").is_file():
                try:
                    previous = reports.read_json(out / "run.json").get("tests", {})
                except (ValueError, OSError):
                    previous = {}
            summary["tests"] = {**previous, **summary["tests"]}
            reports.write_json(out / "run.json", summary)
        dist.barrier()
        return summary
