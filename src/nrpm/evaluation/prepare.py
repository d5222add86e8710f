"""The model and samples of an evaluation: :class:`EvalSettings`, :func:`prepare_model` (weights, stored or
paradigm-1 reprogramming, normalisation) and :func:`load_eval_data` (the samples, checked against the model).

Errors name the settings (``checkpoint=PATH``, ``layers``), not command-line flags: the CLI names its flags.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .. import data as D
from ..coverage import UnreprogrammedWeightsWarning
from ..formats import MODEL_FORMAT, REPROGRAMMING_FORMAT, format_of, read_tagged
from ..models import default_robust_layers, inner_model, is_registry_name, model_entry, with_normalization
from ..models.loading import load_model
from ..nn_attention import RobustMultiheadAttention
from ..reprogram import (DEFAULT_TARGET_TYPES, ReprogramConfig, lam_table, load_reprogramming, reprogram,
                         robust_layers, set_lam)
from ..validation import check_eps, check_reprogram_K
from .grid import TRAINED

__all__ = ["EvalSettings", "PreparedModel", "prepare_model", "coverage_notes", "load_plain_model", "load_eval_data", "resolve_device"]

# lam 1 is the original model: the one row an evaluation without a stored reprogramming shows by default
# (functional.DEFAULT_LAM, 0.5, is the lam a robust layer is built with; it is not this)
UNREPROGRAMMED_LAM = 1.0
DEFAULT_K, DEFAULT_EPS = 3, 1e-3
DEFAULT_LAYER_TYPES = DEFAULT_TARGET_TYPES  # every module type nrpm reprograms
DEFAULT_N_SAMPLES = 1000  # of a named dataset; a user's tensors file is evaluated whole


@dataclass
class EvalSettings:
    """Everything that defines an evaluation run (saved with its results).

    ``lams``, ``K``, ``eps`` and ``layer_types`` left at None take their defaults (1.0, 3, 1e-3, linear and
    conv2d), or with a stored reprogramming its own values (lam row ``"trained"``); :func:`prepare_model`
    fills them in. ``n_samples`` None: 1000 of a named dataset, every sample of a ``tensors:`` file. ``model`` is a model spec (a registry name or a factory, see :mod:`nrpm.models.external`);
    ``data`` a data spec (None: the registry model's dataset; other models need one).
    """

    model: str
    checkpoint: str | None = "pretrained"
    lams: Sequence[float | str] | None = None
    K: int | None = None
    eps: float | None = None
    layers: Sequence[str] | None = None  # None: default_robust_layers(model)
    skip: Sequence[str] = ()
    layer_types: Sequence[str] | None = None
    attack: str = "fgsm"
    attack_kwargs: dict = field(default_factory=dict)
    budgets: Sequence[float] = (0.0,)
    budget_unit: float = 1.0  # budgets are stored in [0, 1] input units; unit 255 only changes display
    n_samples: int | None = None
    batch_size: int = 250
    seed: int = 0
    data_root: str | None = None
    split: str = "test"  # "test": first n_samples test images; "val": last n_samples of the training split
    reprogramming: str | None = None  # a saved reprogramming state applied to the checkpoint's weights
    # the robust estimator {'norm', 'gamma', 'delta', 'scale'}; None: L1 (or a stored reprogramming's own)
    estimator: dict | None = None
    model_args: dict = field(default_factory=dict)  # keyword arguments of the model's factory / builder
    normalize: dict | None = None  # {'mean': [...], 'std': [...]}: a Normalize in front of a model wanting it
    data: str | None = None  # the data spec; None: the registry model's dataset
    image_size: int | None = None  # imagefolder: the side images are resized and cropped to (None: model's, or 32)

    def cell_key(self) -> dict:
        """The settings a finished cell depends on; resuming requires them to be equal."""
        d = asdict(self)
        for k in ("lams", "budgets", "batch_size", "data_root", "budget_unit"):
            d.pop(k)
        for k in ("reprogramming", "estimator", "model_args", "normalize", "data", "image_size"):
            if not d[k]:
                d.pop(k)  # so that results of runs from before this field still resume
        return json.loads(json.dumps(d))  # as it reads back from results.json (tuples become lists)


@dataclass
class PreparedModel:
    """A model ready to evaluate, the settings with their defaults filled in, and where its state came from."""

    model: nn.Module
    settings: EvalSettings
    checkpoint_info: dict
    reprogramming: dict | None = None  # the stored reprogramming applied: source, per-layer lam, K, eps
    notes: list[str] = field(default_factory=list)
    model_info: dict = field(default_factory=dict)  # the model spec resolved: kind, factory, class, normalisation
    dataset: str | None = None  # the registry model's dataset (the default data)
    input_shape: tuple | None = None  # (C, H, W) where the registry or the model says it

    @property
    def network(self) -> nn.Module:
        """The model behind the input normalisation (``model`` itself without one): its layer names are the ones
        of checkpoints, ``layers`` and stored reprogramming."""
        return inner_model(self.model)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto': CUDA where there is a GPU, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------------------ the model
def _stored_reprogramming(settings: EvalSettings, raw) -> tuple[dict | None, str | None]:
    """(state, source file) of the stored reprogramming to apply: ``reprogramming``, else a model.pt's own."""
    if settings.reprogramming is not None:
        path = Path(settings.reprogramming).expanduser()
        state = read_tagged(path, (REPROGRAMMING_FORMAT, MODEL_FORMAT), "a reprogramming state",
                            "give the reprogramming.pt of nrpm reprogram, or a file of nrpm.save_reprogramming")
        if format_of(state) == MODEL_FORMAT:
            raise ValueError(f"{path} is a model file (model.pt), not a reprogramming state: pass it as "
                             f"checkpoint={path} (it brings its reprogramming along)")
        base = state.get("base_model")
        if base not in (None, settings.model):
            raise ValueError(f"{path} reprograms model {base!r}, not {settings.model!r}: pass model={base}")
        return state, str(path)
    if format_of(raw) == MODEL_FORMAT and raw.get("reprogramming"):
        return raw["reprogramming"], str(Path(settings.checkpoint).expanduser())
    return None, None


def _with_defaults(settings: EvalSettings, stored_source: str | None) -> EvalSettings:
    """``settings`` with None values filled in: the library defaults, or with a stored reprogramming its own."""
    # a value given twice is one row or column (dict keeps the first occurrence's order)
    lams = list(dict.fromkeys(settings.lams)) if settings.lams else [TRAINED if stored_source else UNREPROGRAMMED_LAM]
    settings = replace(settings, budgets=list(dict.fromkeys(settings.budgets)))
    if stored_source is None:
        if TRAINED in lams:
            raise ValueError(f"lam {TRAINED!r} means the per-layer lam of a stored reprogramming, and there is "
                             f"none: give reprogramming=FILE or a paradigm-3 model.pt as checkpoint=FILE, or "
                             f"numeric lams=")
        return replace(settings, lams=lams, K=DEFAULT_K if settings.K is None else settings.K,
                       eps=DEFAULT_EPS if settings.eps is None else settings.eps, skip=list(settings.skip),
                       layer_types=list(settings.layer_types or DEFAULT_LAYER_TYPES))
    chosen = ", ".join(f"{name}={' '.join(map(str, value))}" for name, value in (
        ("layers", settings.layers), ("skip", settings.skip), ("layer_types", settings.layer_types)) if value)
    if chosen:
        raise ValueError(f"{chosen} cannot be combined with the reprogramming stored in {stored_source}: it fixes "
                         f"which layers are robust; drop {chosen}")
    return replace(settings, lams=lams, skip=[])


def _paradigm1_config(settings: EvalSettings) -> ReprogramConfig:
    layers = settings.layers if settings.layers is not None else default_robust_layers(settings.model)
    return ReprogramConfig(lam=settings.lams[0], K=settings.K, eps=settings.eps, paradigm=1,
                           target_modules=layers, skip=list(settings.skip), target_types=list(settings.layer_types),
                           **(settings.estimator or {}))


def _apply_stored(model: nn.Module, state: dict, source: str, settings: EvalSettings) -> dict:
    """Apply a stored reprogramming, then an explicit K / eps over it; returns what was applied, for the record."""
    try:
        load_reprogramming(model, state)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot apply the reprogramming stored in {source}: {error}") from None
    config = state.get("config", {})
    stored = {"K": config.get("K"), "eps": config.get("eps")}
    overrides = {}
    if settings.K is not None:
        overrides["K"] = check_reprogram_K(settings.K)
    if settings.eps is not None:
        overrides["eps"] = check_eps(settings.eps)
    if settings.estimator is not None:
        overrides["estimator"] = dict(settings.estimator)
    stored["estimator"] = config.get("norm", "l1")
    for layer in robust_layers(model).values():
        layer.K = overrides.get("K", layer.K)
        layer.eps = overrides.get("eps", layer.eps)
        if settings.estimator is not None:
            layer.set_estimator(**settings.estimator)
    return {"source": source, "lam": lam_table(model), "K": overrides.get("K", stored["K"]),
            "eps": overrides.get("eps", stored["eps"]), "stored": stored, "overrides": overrides,
            "base_model": state.get("base_model"), "base_checkpoint": state.get("base_checkpoint")}


def _base_checkpoint_note(applied: dict | None, checkpoint) -> list[str]:
    """A paradigm-2 state applied to other weights than it was trained on: allowed (files move), but said."""
    base = (applied or {}).get("base_checkpoint")
    if base is None or checkpoint is None or str(base) == str(checkpoint):
        return []
    return [f"{applied['source']} was trained on checkpoint {base!r} and is applied to {checkpoint!r}"]


def _normalized(model: nn.Module, normalize: dict | None) -> nn.Module:
    return model if not normalize else with_normalization(model, normalize["mean"], normalize["std"])


def _input_shape(spec: str, network: nn.Module) -> tuple | None:
    """(C, H, W) as the registry or the model itself (an ``input_shape`` attribute) says, else None."""
    shape = model_entry(spec).input_shape if is_registry_name(spec) else None
    shape = shape or getattr(network, "input_shape", None)
    return tuple(shape) if shape else None


def prepare_model(settings: EvalSettings, device: torch.device | str = "cpu") -> PreparedModel:
    """The model ``settings`` names, with its weights and reprogramming (stored or paradigm 1), at the first lam
    row, in eval mode on ``device``, behind ``settings.normalize`` if given; the settings come back with their
    defaults filled in. Reprogramming acts on the model itself, before the normalisation is put in front, so that
    layer names are the model's own."""
    loaded = load_model(settings.model, settings.checkpoint, settings.model_args)
    model = loaded.model
    state, source = _stored_reprogramming(settings, loaded.raw)
    resolved = _with_defaults(settings, source)
    # reprogram's UnreprogrammedWeightsWarning becomes notes instead: printed as 'note:' lines and kept in the
    # results, where a Python warning on stderr would be easy to miss and lost from the record
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreprogrammedWeightsWarning)
        applied = _reprogrammed(model, state, source, resolved)
    notes = [*_base_checkpoint_note(applied, settings.checkpoint), *coverage_notes(model, resolved.layer_types)]
    dataset = model_entry(settings.model).dataset if is_registry_name(settings.model) else None
    return PreparedModel(_normalized(model, settings.normalize).to(device).eval(), resolved, loaded.checkpoint_info,
                         applied, notes, {**loaded.model_info, "normalize": settings.normalize}, dataset,
                         _input_shape(settings.model, model))


def _reprogrammed(model: nn.Module, state, source, resolved: EvalSettings) -> dict | None:
    """Paradigm 1 with ``resolved``'s settings, or the stored reprogramming ``state`` (returned as applied)."""
    if state is None:
        reprogram(model, _paradigm1_config(resolved))
        return None
    applied = _apply_stored(model, state, source, resolved)
    # the stored per-layer lam stays until the grid sets each row: a first numeric row set here would
    # overwrite what a later 'trained' row must evaluate
    if TRAINED not in resolved.lams:
        set_lam(model, resolved.lams[0])
    return applied


_ATTENTION_TYPES = ("attention", "attention_aggregation")


def _own_attention_modules(model: nn.Module) -> dict[str, str]:
    """{name: class} of the outermost modules whose class name says attention but that are not torch's
    nn.MultiheadAttention (or nrpm's robust one): timm's / HF's attention blocks, which compute softmax(q k^T) v
    themselves, so nrpm cannot make their aggregation robust."""
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in found):
            continue
        if "attention" in type(module).__name__.lower() and not isinstance(
                module, (nn.MultiheadAttention, RobustMultiheadAttention)):
            found[name] = type(module).__name__
    return found


def coverage_notes(model: nn.Module, layer_types) -> list[str]:
    """Notes on what the reprogramming left plain: the weight-bearing modules nrpm does not cover
    (``model.nrpm_unreprogrammed``) and, where robust attention was asked for, attention modules of the model's
    own that it cannot reach."""
    notes = [f"{name or '(root)'} stays plain: {why}"
             for name, why in (getattr(model, "nrpm_unreprogrammed", None) or {}).items()]
    own = _own_attention_modules(model) if set(layer_types or ()) & set(_ATTENTION_TYPES) else {}
    if own:
        listed = ", ".join(f"{name} ({kind})" for name, kind in own.items())
        notes.append(f"robust attention applies to nn.MultiheadAttention only; {len(own)} attention module(s) of "
                     f"the model's own keep their plain softmax(q k^T) v aggregation: {listed} (their nn.Linear "
                     f"projections are reprogrammed where 'linear' is a layer type)")
    return notes


def load_plain_model(settings: EvalSettings, checkpoint: str | None, device: torch.device | str = "cpu") -> nn.Module:
    """The model of ``settings`` with ``checkpoint``'s weights, not reprogrammed, behind its normalisation."""
    model = load_model(settings.model, checkpoint, settings.model_args).model
    return _normalized(model, settings.normalize).to(device).eval()


def _data_spec(settings: EvalSettings, dataset: str | None) -> str:
    """``settings.data``, else the registry model's ``dataset``; other models must say what data they take."""
    if settings.data is not None:
        return settings.data
    if dataset is None:
        raise ValueError(f"model={settings.model} is not a registry model, so nrpm does not know its data: give "
                         f"data=SPEC (mnist, cifar10, cifar100, svhn, imagefolder:PATH or tensors:FILE)")
    return dataset


def _check_fits(model: nn.Module, samples: D.Samples, prepared: PreparedModel) -> None:
    """Data that does not fit the model fails here, in words, rather than as a shape error deep in an attack."""
    shape, spec, size = tuple(samples.x.shape[1:]), samples.info["spec"], "x".join(map(str, samples.x.shape[1:]))
    if prepared.input_shape and shape != prepared.input_shape:
        raise ValueError(f"data={spec} gives {size} inputs, model={prepared.settings.model} takes "
                         f"{'x'.join(map(str, prepared.input_shape))}")
    normalize = prepared.settings.normalize
    if normalize and len(normalize["mean"]) not in (1, shape[0]):
        values = " ".join(f"{v:g}" for v in [*normalize["mean"], *normalize["std"]])
        raise ValueError(f"normalize={values} gives {len(normalize['mean'])} means and stds, data={spec} has "
                         f"{shape[0]} channel(s): give one mean and one std per channel")
    try:
        with torch.no_grad():
            device = next(iter([*model.parameters(), *model.buffers()]), samples.x).device
            outputs = model(samples.x[:1].to(device)).shape
    except Exception as error:  # noqa: BLE001  (a shape error of the user's model: say which data caused it)
        raise ValueError(f"model={prepared.settings.model} fails on the {size} inputs of data={spec}: "
                         f"{type(error).__name__}: {error}") from None
    if len(outputs) != 2 or int(samples.y.max()) >= outputs[1]:
        raise ValueError(f"model={prepared.settings.model} gives outputs of shape {tuple(outputs)}, and data="
                         f"{spec} has labels up to {int(samples.y.max())}: the model must give one logit per class")


def _sample_count(settings: EvalSettings, spec: D.DataSpec) -> int | None:
    """``n_samples``, else 1000 of a dataset, else (None) every sample of a user's tensors file: a file made for
    the evaluation is meant whole, and a default count larger than it would only be refused."""
    if settings.n_samples is not None:
        return settings.n_samples
    return None if spec.kind == "tensors" else DEFAULT_N_SAMPLES


def load_eval_data(prepared: PreparedModel) -> D.Samples:
    """The samples of ``prepared.settings`` (data spec, split, n), read as its model takes them (imagefolder:
    the model's input size and channels) and checked against it; ``info["detected"]`` says what was read and
    ``info["n"]`` how many (``n_samples`` None: 1000 of a named dataset, all of a tensors file)."""
    settings, shape = prepared.settings, prepared.input_shape
    spec = D.parse_data_spec(_data_spec(settings, prepared.dataset))
    samples = D.load_samples(spec, settings.split, _sample_count(settings, spec),
                             root=settings.data_root, image_size=settings.image_size or (shape[-1] if shape else None),
                             channels=shape[0] if shape else None)
    _check_fits(prepared.model, samples, prepared)
    return samples
