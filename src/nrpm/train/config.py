"""The settings of a training run (:class:`TrainConfig`) and of a final test evaluation (:class:`TestSettings`).

Both validate and normalise themselves on construction, so a bad value fails before any work (and before a
process group is joined); defaults that depend on other settings (PGD's step size, the validation attack,
step-schedule milestones) are resolved here once, so a checkpoint stores the values the run really used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from .. import attacks as A
from ..data import parse_data_spec
from ..models import default_robust_layers
from ..reprogram import DEFAULT_TARGET_TYPES, ReprogramConfig
from ..validation import check_count, check_nonneg, check_positive

__all__ = ["TrainConfig", "TestSettings", "ATTACKS", "OPTIMIZERS", "SCHEDULES", "BN_MODES"]

ATTACKS = ("none", "fgsm", "pgd")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
BN_MODES = ("auto", "train", "eval")
# the reprogramming's fields: a plain training run (paradigm 0) ignores them, so they are not part of its identity
REPROGRAMMING_FIELDS = ("lam", "K", "eps", "layers", "skip", "layer_types", "estimator", "lam_lr")
# the fields that bring a user's own model and data; left empty they are not part of a run's identity
_SPEC_FIELDS = ("model_args", "normalize", "data", "train_data", "image_size")


def _one_of(value, allowed: Sequence[str], what: str) -> str:
    value = str(value).lower()
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {list(allowed)}")
    return value


def _normalization(normalize: dict) -> dict:
    """{'mean': [float], 'std': [float]}, one of each per channel (or one for all), every std > 0."""
    try:
        mean, std = [float(v) for v in normalize["mean"]], [float(v) for v in normalize["std"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"normalize must be {{'mean': [...], 'std': [...]}} of numbers, got {normalize!r}") from None
    if len(mean) != len(std) or not mean or min(std) <= 0:
        raise ValueError(f"normalize needs as many means as stds (one per channel) and stds > 0, got mean {mean}, "
                         f"std {std}")
    return {"mean": mean, "std": std}


def _as_list(value) -> list:
    """A single name or a sequence of names, as a list (a str is one name, not its characters)."""
    return [value] if isinstance(value, str) else list(value)


@dataclass
class TrainConfig:
    """Everything that defines a training run; a resume must have the same values (``identity()``).

    model / checkpoint: a model spec (a registry name, FILE.py:FACTORY, package.module:FACTORY, timm:NAME,
    torchvision:NAME; see :mod:`nrpm.models.external`); "pretrained" (the paper's file, registry models), a path,
    or None (the factory's own weights: a fresh initialisation). model_args: keyword arguments of the factory;
    normalize {'mean', 'std'}: the model wants normalised inputs, so ``(x - mean) / std`` is put in front of it
    (training, attacks and the saved artifacts stay in [0, 1] input units; the artifacts hold the model's own
    weights and layer names).
    data: a data spec (mnist, cifar10, cifar100, svhn, imagefolder:PATH, tensors:FILE; None: the registry
    model's dataset): training uses its training split (imagefolder: ``train/``), the final test its test split.
    train_data: the training data instead (required where ``data`` is a tensors file, which has no training
    part: all of ``train_data`` is the training split). image_size: imagefolder images' side (default: the
    model's input size, else 32).
    paradigm: 0 (plain model), 2 (lam only) or 3 (weights and lam).
    lam, K, eps, layers, skip, layer_types: the reprogramming (paradigms 2, 3); layers None = the paper's
    choice (:func:`nrpm.models.default_robust_layers`: all Linear/Conv2d, ResNets their 3x3 block convs).
    attack: "none", "fgsm" or "pgd"; attack_eps budget (inputs in [0, 1]); attack_steps (fgsm: 1, pgd default 7);
    attack_alpha step size (fgsm default eps, pgd default 2.5 eps / steps); random_start (fgsm default off,
    pgd default on). clean_weight: the loss is ``w * CE(clean) + (1 - w) * CE(adversarial)`` (0 = adversarial
    only, Madry et al. and the paper; 0.5 = Goodfellow et al.'s mix); ignored without an attack.
    optimizer "sgd" | "adam" | "adamw", lr (weights), lam_lr (lam logits; default lr), momentum, nesterov,
    weight_decay (never applied to lam logits); schedule "constant" | "step" (milestones, lr_gamma) | "cosine",
    stepped once per epoch.
    augment: random crop (pad 4) + flip; None = on for CIFAR-10 and CIFAR-100, off for other data.
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
    layer_types: Sequence[str] = DEFAULT_TARGET_TYPES
    # the robust estimator {'norm', 'gamma', 'delta', 'scale'} (paradigms 2, 3); None: the paper's L1
    estimator: dict | None = None
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
    lr_gamma: float = 0.1
    augment: bool | None = None
    train_subset: int | None = None
    val_size: int = 1000
    val_attack: str | None = None
    val_eps: float | None = None
    val_steps: int | None = None
    bn_mode: str = "auto"
    seed: int = 0
    data_root: str | None = None
    model_args: dict = field(default_factory=dict)
    normalize: dict | None = None
    data: str | None = None
    train_data: str | None = None
    image_size: int | None = None

    def __post_init__(self):
        # The order matters: later defaults read earlier resolved values (validation steps read the training
        # attack's, step milestones read epochs), and the first bad value found is the one reported.
        self._check_paradigm()
        self._check_model_and_data_specs()
        self._resolve_attack()
        self._resolve_clean_weight()
        self._resolve_validation()
        self._check_optimisation()
        self._resolve_schedule()
        self._check_data()
        self._check_batchnorm()
        self._check_reprogramming()
        self._normalise_layer_lists()

    # ---------------------------------------------------------------------------------------- validation
    def _check_paradigm(self) -> None:
        if self.paradigm not in (0, 2, 3):
            raise ValueError(f"unknown paradigm {self.paradigm!r}: training knows 0 (plain model), 2 (lam only) "
                             f"and 3 (weights and lam); paradigm 1 trains nothing (use nrpm eval --lam)")
        if self.checkpoint == "none":
            self.checkpoint = None

    def _check_model_and_data_specs(self) -> None:
        self.model_args = dict(self.model_args or {})
        if self.normalize is not None:
            self.normalize = _normalization(self.normalize)
        for spec in (self.data, self.train_data):
            if spec is not None:
                parse_data_spec(spec)  # a misspelt dataset fails here, with the accepted forms
        if self.image_size is not None:
            self.image_size = check_count(self.image_size, "image size", 1)

    def _resolve_attack(self) -> None:
        self.attack = _one_of(self.attack, ATTACKS, "training attack")
        self.attack_eps = check_nonneg(self.attack_eps, "attack eps")
        if self.attack != "none" and self.attack_eps == 0:
            raise ValueError(f"attack {self.attack!r} needs a budget > 0 (attack_eps / --attack-eps)")
        if self.attack == "none":
            self.attack_eps, self.attack_steps, self.attack_alpha, self.random_start = 0.0, None, None, None
            return
        fgsm = self.attack == "fgsm"
        default_steps = 1 if fgsm else 7
        self.attack_steps = check_count(default_steps if self.attack_steps is None else self.attack_steps,
                                        "attack steps", 1)
        if self.attack_alpha is None:
            self.attack_alpha = self.attack_eps if fgsm else 2.5 * self.attack_eps / self.attack_steps
        self.attack_alpha = check_positive(self.attack_alpha, "attack step size (alpha)")
        self.random_start = bool(not fgsm if self.random_start is None else self.random_start)

    def _resolve_clean_weight(self) -> None:
        self.clean_weight = float(self.clean_weight)
        if not 0.0 <= self.clean_weight <= 1.0:
            raise ValueError(f"clean weight must be in [0, 1], got {self.clean_weight}")
        if self.attack == "none":
            self.clean_weight = 0.0  # nothing to mix without an attack

    def _resolve_validation(self) -> None:
        self.val_attack = self.attack if self.val_attack is None else self.val_attack
        self.val_attack = _one_of(self.val_attack, ATTACKS, "validation attack")
        if self.val_attack == "none":
            self.val_eps, self.val_steps = None, None
            return
        self.val_eps = check_positive(self.attack_eps if self.val_eps is None else self.val_eps, "validation eps")
        same_attack = self.attack == self.val_attack and self.attack_steps
        default = self.attack_steps if same_attack else (1 if self.val_attack == "fgsm" else 7)
        self.val_steps = check_count(default if self.val_steps is None else self.val_steps, "validation steps", 1)

    def _check_optimisation(self) -> None:
        self.epochs = check_count(self.epochs, "epochs", 1)
        self.batch_size = check_count(self.batch_size, "batch size", 1)
        self.optimizer = _one_of(self.optimizer, OPTIMIZERS, "optimizer")
        self.lr = check_positive(self.lr, "learning rate")
        if self.lam_lr is not None:
            self.lam_lr = check_positive(self.lam_lr, "lam learning rate")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        self.weight_decay = check_nonneg(self.weight_decay, "weight decay")

    def _resolve_schedule(self) -> None:
        self.schedule = _one_of(self.schedule, SCHEDULES, "schedule")
        self.milestones = [check_count(m, "milestone", 1) for m in self.milestones]
        if self.schedule == "step" and not self.milestones:
            self.milestones = sorted({max(1, self.epochs // 2), max(1, (3 * self.epochs) // 4)})
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr_gamma (the learning rate's step decay) must lie in (0, 1], got {self.lr_gamma}")

    def _check_data(self) -> None:
        if self.train_subset is not None:
            self.train_subset = check_count(self.train_subset, "train subset", 1)
            if self.train_subset < self.batch_size:
                raise ValueError(f"train subset {self.train_subset} is smaller than one batch ({self.batch_size})")
        self.val_size = check_count(self.val_size, "validation size", 0)

    def _check_batchnorm(self) -> None:
        self.bn_mode = _one_of(self.bn_mode, BN_MODES, "BatchNorm mode")
        if self.paradigm == 2 and self.bn_mode == "train":
            raise ValueError("paradigm 2 keeps the base model untouched, BatchNorm statistics included (its artifact "
                             "holds only lam): bn_mode 'train' is not allowed; use paradigm 3")

    def _check_reprogramming(self) -> None:
        if self.paradigm not in (2, 3):
            return
        self.reprogram_config()  # validates lam, K, eps, layer types
        if self.K == 0:
            raise ValueError("K = 0 makes every robust layer the plain layer, so lam has no effect and "
                             "nothing can be learned; use K >= 1")

    def _normalise_layer_lists(self) -> None:
        self.layers = _as_list(self.layers) if self.layers is not None else None
        self.skip = _as_list(self.skip)
        self.layer_types = _as_list(self.layer_types)

    # ---------------------------------------------------------------------------------------- derived values
    def reprogram_config(self) -> ReprogramConfig:
        layers = self.layers if self.layers is not None else default_robust_layers(self.model)
        return ReprogramConfig(lam=self.lam, K=self.K, eps=self.eps, paradigm=self.paradigm if self.paradigm else 1,
                               target_modules=layers, skip=list(self.skip), target_types=list(self.layer_types),
                               **(self.estimator or {}))

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
        d["gamma"] = d.pop("lr_gamma")  # the name checkpoints have always used: their resumes keep working
        if self.paradigm == 0:
            for k in REPROGRAMMING_FIELDS:
                d.pop(k)
        if self.schedule != "cosine":
            d.pop("epochs")
        for k in _SPEC_FIELDS:
            if not d[k]:
                d.pop(k)  # so that checkpoints of runs from before these fields still resume
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        if "gamma" in d and "lr_gamma" not in d:  # written before the field was renamed
            d = {**d, "lr_gamma": d["gamma"]}
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
        self.budgets = [check_nonneg(b, "test budget") for b in self.budgets]
        self.n_samples = check_count(self.n_samples, "test samples", 1)
        self.batch_size = check_count(self.batch_size, "test batch size", 1)
        A.make_attack(self.attack, 0.0, **self.attack_kwargs)  # validates name and options

    def label(self) -> str:
        opts = "".join(f"_{k}{v}" for k, v in sorted(self.attack_kwargs.items()))
        return f"{A.canonical_name(self.attack).replace('-', '_')}{opts}"
