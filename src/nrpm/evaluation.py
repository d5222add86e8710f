"""Evaluation: build a (reprogrammed) model and measure clean and robust accuracy over a (lam x budget) grid.

The model is a model spec (a registry name, ``FILE.py:factory``, ``package.module:factory``, ``timm:NAME`` or
``torchvision:NAME``, see :mod:`nrpm.models.external`, with ``model_args`` for the factory and an optional input
``normalize``) with its weights (``checkpoint``: 'pretrained' for registry models, a path or 'none'), reprogrammed
either by hand (paradigm 1: ``lams``, ``K``, ``eps``, ``layers``) or by a *stored reprogramming*: the per-layer lam,
K, eps and layers that ``nrpm reprogram`` trained, embedded in a paradigm-3 ``model.pt`` (given as the checkpoint)
or saved as ``reprogramming.pt`` (``reprogramming``, paradigm 2, applied to the checkpoint's weights). With a
stored reprogramming the grid row ``lam = "trained"`` (the default) keeps each layer's stored lam, a numeric lam
sets every layer to it, and an explicit K or eps overrides the stored one in every layer; results.json records
what was applied and from which file.

The samples are ``data`` (a dataset name, ``imagefolder:PATH`` or ``tensors:FILE``, see :mod:`nrpm.data.sources`;
default: the registry model's dataset), split ``test`` (the first N) or ``val`` (the last N training samples);
results.json records the model and data specs and what was detected in the data.

Results are written after every finished cell (atomically): results.json, results.csv, table.md and
accuracy.png, each from every cell on file (also those of earlier runs into the folder). A run of hours can be
interrupted and resumed without redoing finished (lam, budget) cells, provided the settings that define a cell
did not change.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from . import attacks as A
from . import data as D
from . import distributed as dist
from . import reports
from ._io import output_dir_lock
from .models import (default_robust_layers, describe_model, inner_model, is_registry_name, load_checkpoint,
                     model_entry, model_from_checkpoint, parse_model_spec, resolve_model_spec, with_normalization)
from .provenance import versions
from .reprogram import ReprogramConfig, lam_table, load_reprogramming, reprogram, robust_layers, set_lam
from .validation import check_eps, check_reprogram_K

__all__ = ["EvalSettings", "PreparedModel", "LoadedModel", "prepare_model", "build_model", "load_model",
           "load_weights", "load_plain_model", "read_torch_file", "run_eval", "evaluate_grid", "load_eval_samples",
           "load_eval_data", "data_spec", "resolve_device", "write_outputs", "grid_key", "grid_markdown", "TRAINED",
           "RESULTS_FORMAT"]

RESULTS_FORMAT = "nrpm-eval/1"
TRAINED = "trained"  # the lam row that keeps each layer's lam as the stored reprogramming has it
DEFAULT_LAM, DEFAULT_K, DEFAULT_EPS = 1.0, 3, 1e-3
DEFAULT_LAYER_TYPES = ("linear", "conv2d")
_REPROGRAMMING_FORMAT_PREFIX = "nrpm-reprogramming/"
_CSV_FIELDS = ["lam", "budget", "attack", "accuracy", "correct", "n", "seconds"]


@dataclass
class EvalSettings:
    """Everything that defines an evaluation run (saved with its results).

    ``lams``, ``K``, ``eps`` and ``layer_types`` left at None take their defaults (1.0, 3, 1e-3, linear and
    conv2d), or with a stored reprogramming its own values (lam row ``"trained"``); :func:`prepare_model`
    fills them in. ``model`` is a model spec (a registry name or a factory, see :mod:`nrpm.models.external`);
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
    n_samples: int = 1000
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
        of checkpoints, --layers and stored reprogramming."""
        return inner_model(self.model)


@dataclass
class LoadedModel:
    """A model with its weights, before reprogramming: where they came from, and what the spec resolved to."""

    model: nn.Module
    checkpoint_info: dict
    raw: object  # a checkpoint file's contents (a paradigm-3 model.pt keeps its reprogramming there), else None
    model_info: dict


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------------------ the model
def read_torch_file(path: str | Path, what: str = "checkpoint"):
    """``torch.load`` (weights only) of ``path``; a missing, truncated or foreign file raises an error naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    # torch.load reports bad bytes as RuntimeError, EOFError, UnpicklingError, even KeyError: any of them here
    # means the file is not a readable checkpoint, and its first line says why
    except Exception as error:  # noqa: BLE001
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"{what} {path} is not readable (truncated, corrupt or not written by torch.save): "
                         f"{type(error).__name__}: {first_line}") from None


def _refuse_other_nrpm_files(raw, path: Path, name: str) -> None:
    """A run's other files given as weights: say which file to give instead."""
    from .train import CHECKPOINT_FORMAT, MODEL_FORMAT  # here: nrpm.train is big and only needed for its names

    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt == MODEL_FORMAT and raw.get("model") not in (None, name):
        raise ValueError(f"{path} holds a trained {raw['model']!r}, not {name!r}: pass --model {raw['model']}")
    if fmt == CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is a training checkpoint (for nrpm train/reprogram --resume): evaluate the run's "
                         f"model.pt, or its reprogramming.pt with --reprogramming")
    if isinstance(fmt, str) and fmt.startswith(_REPROGRAMMING_FORMAT_PREFIX):
        raise ValueError(f"{path} is a reprogramming state, not weights: pass it as --reprogramming, with "
                         f"--checkpoint naming the weights it was trained on")


def _pretrained(spec: str, model_args: dict) -> LoadedModel:
    """The paper's released weights: registry models only, at their registered architecture."""
    if not is_registry_name(spec):
        raise ValueError(f"--checkpoint pretrained exists only for registry models; --model {spec} takes its "
                         f"weights from its factory (--checkpoint none) or from your file (--checkpoint PATH)")
    if model_args:
        raise ValueError(f"--model-arg {model_args} changes {spec}, and its released checkpoint fits only the "
                         f"registered architecture: give --checkpoint PATH or none, or drop --model-arg")
    model, info = model_from_checkpoint(spec, "pretrained")
    return LoadedModel(model, info, None, describe_model(parse_model_spec(spec), model, {}))


def load_model(spec: str, checkpoint: str | None, model_args: dict | None = None) -> LoadedModel:
    """The model ``spec`` names (built with ``model_args``) with the weights ``checkpoint`` names: 'pretrained'
    (registry models), a path (a state_dict, see :func:`nrpm.models.load_checkpoint`), or None / 'none' (the
    factory's own, for registry models a fresh initialisation)."""
    model_args = dict(model_args or {})
    parse_model_spec(spec)  # a misspelt name fails here, with close matches, whatever the checkpoint
    if checkpoint == "pretrained":
        return _pretrained(spec, model_args)
    model, model_info = resolve_model_spec(spec, model_args)
    if checkpoint in (None, "none"):
        return LoadedModel(model, {}, None, model_info)
    path = Path(checkpoint).expanduser()
    raw = read_torch_file(path, "checkpoint")
    _refuse_other_nrpm_files(raw, path, spec)
    # from the file again, not from ``raw``: load_checkpoint's errors then name the file
    return LoadedModel(model, load_checkpoint(model, path), raw, model_info)


def load_weights(name: str, checkpoint: str | None, model_args: dict | None = None) -> tuple[nn.Module, dict, object]:
    """(model, checkpoint info, the checkpoint file's contents or None) of :func:`load_model`."""
    loaded = load_model(name, checkpoint, model_args)
    return loaded.model, loaded.checkpoint_info, loaded.raw


def _stored_reprogramming(settings: EvalSettings, raw) -> tuple[dict | None, str | None]:
    """(state, source file) of the stored reprogramming to apply: --reprogramming, else a model.pt's own."""
    from .train import MODEL_FORMAT

    if settings.reprogramming is not None:
        path = Path(settings.reprogramming).expanduser()
        state = read_torch_file(path, "reprogramming state")
        if isinstance(state, dict) and state.get("format") == MODEL_FORMAT:
            raise ValueError(f"{path} is a model file (model.pt), not a reprogramming state: pass it as "
                             f"--checkpoint (it brings its reprogramming along)")
        base = state.get("base_model") if isinstance(state, dict) else None
        if base not in (None, settings.model):
            raise ValueError(f"{path} reprograms model {base!r}, not {settings.model!r}: pass --model {base}")
        return state, str(path)
    if isinstance(raw, dict) and raw.get("format") == MODEL_FORMAT and raw.get("reprogramming"):
        return raw["reprogramming"], str(Path(settings.checkpoint).expanduser())
    return None, None


def _with_defaults(settings: EvalSettings, stored_source: str | None) -> EvalSettings:
    """``settings`` with None values filled in: the library defaults, or with a stored reprogramming its own."""
    lams = list(settings.lams) if settings.lams else [TRAINED if stored_source else DEFAULT_LAM]
    if stored_source is None:
        if TRAINED in lams:
            raise ValueError(f"lam {TRAINED!r} means the per-layer lam of a stored reprogramming, and there is "
                             f"none: give --reprogramming FILE or a paradigm-3 model.pt as --checkpoint, or "
                             f"numeric lam values")
        return replace(settings, lams=lams, K=DEFAULT_K if settings.K is None else settings.K,
                       eps=DEFAULT_EPS if settings.eps is None else settings.eps, skip=list(settings.skip),
                       layer_types=list(settings.layer_types or DEFAULT_LAYER_TYPES))
    chosen = [flag for flag, value in (("--layers", settings.layers), ("--skip", settings.skip),
                                       ("--layer-types", settings.layer_types)) if value]
    if chosen:
        raise ValueError(f"{', '.join(chosen)} cannot be combined with the reprogramming stored in "
                         f"{stored_source}: it fixes which layers are robust; drop {', '.join(chosen)}")
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
    applied = None
    if state is None:
        reprogram(model, _paradigm1_config(resolved))
    else:
        applied = _apply_stored(model, state, source, resolved)
        # the stored per-layer lam stays until the grid sets each row: a first numeric row set here would
        # overwrite what a later 'trained' row must evaluate
        if TRAINED not in resolved.lams:
            set_lam(model, resolved.lams[0])
    dataset = model_entry(settings.model).dataset if is_registry_name(settings.model) else None
    return PreparedModel(_normalized(model, settings.normalize).to(device).eval(), resolved, loaded.checkpoint_info,
                         applied, _base_checkpoint_note(applied, settings.checkpoint),
                         {**loaded.model_info, "normalize": settings.normalize}, dataset,
                         _input_shape(settings.model, model))


def load_plain_model(settings: EvalSettings, checkpoint: str | None, device: torch.device | str = "cpu") -> nn.Module:
    """The model of ``settings`` with ``checkpoint``'s weights, not reprogrammed, behind its normalisation."""
    model = load_model(settings.model, checkpoint, settings.model_args).model
    return _normalized(model, settings.normalize).to(device).eval()


def build_model(settings: EvalSettings, device: torch.device = torch.device("cpu")) -> tuple[nn.Module, dict]:
    """(model, checkpoint info) of :func:`prepare_model`; info["reprogramming"] says what stored state was applied."""
    prepared = prepare_model(settings, device)
    return prepared.model, {**prepared.checkpoint_info, "reprogramming": prepared.reprogramming}


def load_eval_samples(dataset: str, settings: EvalSettings):
    """(x, y) of data spec ``dataset`` for ``settings`` (split, n; see :func:`nrpm.data.load_samples`); unlike
    :func:`load_eval_data`, nothing is checked against the model."""
    samples = D.load_samples(dataset, settings.split, settings.n_samples, root=settings.data_root,
                             image_size=settings.image_size)
    return samples.x, samples.y


def data_spec(settings: EvalSettings, dataset: str | None) -> str:
    """``settings.data``, else the registry model's ``dataset``; other models must say what data they take."""
    if settings.data is not None:
        return settings.data
    if dataset is None:
        raise ValueError(f"--model {settings.model} is not a registry model, so nrpm does not know its data: give "
                         f"--data (mnist, cifar10, cifar100, svhn, imagefolder:PATH or tensors:FILE)")
    return dataset


def _check_fits(model: nn.Module, samples: D.Samples, prepared: PreparedModel) -> None:
    """Data that does not fit the model fails here, in words, rather than as a shape error deep in an attack."""
    shape, spec, size = tuple(samples.x.shape[1:]), samples.info["spec"], "x".join(map(str, samples.x.shape[1:]))
    if prepared.input_shape and shape != prepared.input_shape:
        raise ValueError(f"--data {spec} gives {size} inputs, --model {prepared.settings.model} takes "
                         f"{'x'.join(map(str, prepared.input_shape))}")
    normalize = prepared.settings.normalize
    if normalize and len(normalize["mean"]) not in (1, shape[0]):
        raise ValueError(f"--normalize gives {len(normalize['mean'])} means and stds, --data {spec} has "
                         f"{shape[0]} channel(s): give one mean and one std per channel")
    try:
        with torch.no_grad():
            device = next(iter([*model.parameters(), *model.buffers()]), samples.x).device
            outputs = model(samples.x[:1].to(device)).shape
    except Exception as error:  # noqa: BLE001  (a shape error of the user's model: say which data caused it)
        raise ValueError(f"--model {prepared.settings.model} fails on the {size} inputs of --data {spec}: "
                         f"{type(error).__name__}: {error}") from None
    if len(outputs) != 2 or int(samples.y.max()) >= outputs[1]:
        raise ValueError(f"--model {prepared.settings.model} gives outputs of shape {tuple(outputs)}, and --data "
                         f"{spec} has labels up to {int(samples.y.max())}: the model must give one logit per class")


def load_eval_data(prepared: PreparedModel) -> D.Samples:
    """The samples of ``prepared.settings`` (data spec, split, n), read as its model takes them (imagefolder:
    the model's input size and channels) and checked against it; ``info["detected"]`` says what was read."""
    settings, shape = prepared.settings, prepared.input_shape
    samples = D.load_samples(data_spec(settings, prepared.dataset), settings.split, settings.n_samples,
                             root=settings.data_root, image_size=settings.image_size or (shape[-1] if shape else None),
                             channels=shape[0] if shape else None)
    _check_fits(prepared.model, samples, prepared)
    return samples


# ------------------------------------------------------------------------------------------ the grid
def grid_key(lam: float | str, budget: float) -> tuple:
    """The key of a (lam, budget) cell, rounded so that float noise never splits one cell in two."""
    return (lam if isinstance(lam, str) else round(lam, 6), round(budget, 9))


def _cells_by_key(cells) -> dict[tuple, dict]:
    return {grid_key(c["lam"], c["budget"]): c for c in cells}


def _attack_factory(settings: EvalSettings) -> Callable[[float], A.Attack]:
    kwargs = A.with_default_seed(settings.attack, settings.attack_kwargs, settings.seed)
    A.make_attack(settings.attack, 0.0, **kwargs)  # validate name and arguments before any work
    return lambda eps: A.make_attack(settings.attack, eps, **kwargs)


def evaluate_grid(model, x, y, lams, budgets, make_attack: Callable[[float], A.Attack], *, batch_size: int,
                  done: dict | None = None, on_cell: Callable[[dict], None] | None = None,
                  progress: bool = True, attack_name: str = "") -> list[dict]:
    """Accuracy of ``model`` for every (lam, budget); budget 0 is clean accuracy.

    A lam row is a number (every robust layer set to it) or :data:`TRAINED` (each layer's lam as the model has
    it when called, e.g. from a stored reprogramming). Cells already in ``done`` ({grid_key: cell}) are kept, not
    recomputed; ``on_cell`` is called after each new cell (used to save progress).
    """
    from tqdm.auto import tqdm

    trained = lam_table(model) if TRAINED in lams else None  # before a numeric row overwrites it
    done = dict(done or {})
    todo = [(lam, b) for lam in lams for b in budgets if grid_key(lam, b) not in done]
    bar = tqdm(total=len(lams) * len(budgets), initial=len(lams) * len(budgets) - len(todo),
               disable=not progress or not dist.is_main(), desc="eval cells", unit="cell")
    for lam, budget in todo:
        set_lam(model, trained if lam == TRAINED else lam)
        start = time.perf_counter()
        if budget == 0:
            measure = lambda xs, ys: A.clean_accuracy(model, xs, ys, batch_size=batch_size)
        else:
            attack = make_attack(budget)
            first = dist.shard_range(len(x))[0]  # global index of this rank's first sample (seeds its attack)
            measure = lambda xs, ys: A.robust_accuracy(model, attack, xs, ys, batch_size=batch_size,
                                                       first_index=first)
        correct = dist.sharded_correct(measure, x, y)  # this rank's block of x; counts summed over ranks
        acc = correct / len(x)
        cell = {"lam": lam, "budget": budget, "attack": "clean" if budget == 0 else attack_name,
                "accuracy": acc, "correct": correct, "n": len(x),
                "seconds": round(time.perf_counter() - start, 3)}
        done[grid_key(lam, budget)] = cell
        if on_cell is not None and dist.is_main():
            on_cell(cell)
        bar.set_postfix(lam=lam, budget=f"{budget:g}", acc=f"{100 * acc:.1f}")
        bar.update(1)
    bar.close()
    return [done[grid_key(lam, b)] for lam in lams for b in budgets]


# ------------------------------------------------------------------------------------------ resuming
def _is_cell(cell) -> bool:
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return (isinstance(cell, dict) and (number(cell.get("lam")) or cell.get("lam") == TRAINED)
            and number(cell.get("budget")) and number(cell.get("accuracy")))


def _previous_cells(path: Path, key: dict) -> dict:
    """The finished cells in ``path`` (results.json) of a run with the same cell key; {} when there is none."""
    fix = "use another --out, or --overwrite to start again"
    previous = reports.read_results_file(path, RESULTS_FORMAT, "an nrpm eval results file", fix)
    if previous is None:
        return {}
    if previous.get("cell_key") != key:
        raise ValueError(f"{path} holds results of other settings; resume needs the same model, checkpoint, "
                         f"reprogramming, K, eps, layers, attack, samples and seed. Use another --out or --overwrite.")
    cells = previous.get("cells")
    if not isinstance(cells, list) or not all(_is_cell(c) for c in cells):
        raise ValueError(f"{path} has malformed cells (each needs a numeric lam, budget and accuracy): {fix}")
    return _cells_by_key(cells)


def _resume_key(prepared: PreparedModel) -> dict:
    """The cell key, plus the stored state itself: a retrained model.pt at the same path must not resume."""
    key = prepared.settings.cell_key()
    if A.make_attack(prepared.settings.attack, 0.0, **prepared.settings.attack_kwargs).seeded_per_sample:
        key["attack_rng"] = "per-sample"  # cells from before per-sample seeding hold other numbers: not resumed
    if prepared.reprogramming is not None:
        applied = prepared.reprogramming
        key["stored_reprogramming"] = json.loads(json.dumps(
            {"lam": applied["lam"], "K": applied["K"], "eps": applied["eps"]}))
    return key


def run_eval(settings: EvalSettings, out_dir: str | Path | None, *, device: str = "auto", progress: bool = True,
             overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) an evaluation; after every cell write results.json/.csv, table.md and accuracy.png under
    ``out_dir`` (each from every cell on file). Returns the results, with this run's grid as ``table``."""
    dev = dist.init_from_env(device).device  # torchrun: joins the group, one GPU per local rank
    torch.manual_seed(settings.seed)
    make_attack = _attack_factory(settings)
    prepared = prepare_model(settings, dev)
    model, settings = prepared.model, prepared.settings
    for note in prepared.notes:
        log(f"note: {note}")
    samples = load_eval_data(prepared)
    x, y = samples.x, samples.y
    key = _resume_key(prepared)
    out = Path(out_dir) if out_dir is not None else None
    writes = out is not None and dist.is_main()  # under torchrun only rank 0 writes
    with output_dir_lock(out, "eval", enabled=writes):
        done = _previous_cells(out / "results.json", key) if out is not None and not overwrite else {}
        log(f"data: {samples.info['detected']}")  # here: a refused resume stays one line of error
        if done:
            log(f"resuming: {len(done)} finished cells found in {out / 'results.json'}")
        on_file = dict(done)  # every finished cell, also of lam values / budgets not asked for in this run
        started = time.perf_counter()

        def payload() -> dict:
            recorded = {**asdict(settings), "model_info": prepared.model_info, "data_info": samples.info}
            return {"format": RESULTS_FORMAT, "settings": reports.jsonable(recorded), "cell_key": key,
                    "versions": versions(), "device": str(dev),
                    "checkpoint_info": reports.jsonable(prepared.checkpoint_info),
                    "reprogramming": reports.jsonable(prepared.reprogramming), "notes": prepared.notes,
                    "robust_layers": sorted(robust_layers(prepared.network)), "cells": list(on_file.values())}

        def save(cell: dict) -> None:
            on_file[grid_key(cell["lam"], cell["budget"])] = cell
            if writes:
                write_outputs(out, payload(), settings)

        cells = evaluate_grid(model, x, y, settings.lams, settings.budgets, make_attack,
                              batch_size=settings.batch_size, done=done, on_cell=save, progress=progress,
                              attack_name=settings.attack)
        on_file.update(_cells_by_key(cells))
        result = {**payload(), "seconds_this_run": round(time.perf_counter() - started, 2)}
        if writes:
            write_outputs(out, result, settings)  # also when every cell was already on file
        result["table"] = grid_markdown(cells, settings.lams, settings.budgets, unit=settings.budget_unit)
        return result


# ------------------------------------------------------------------------------------------ outputs
def _row_label(lam: float | str) -> str:
    return lam if isinstance(lam, str) else f"{lam:g}"


def _grid_axes(cells: Sequence[dict]) -> tuple[list, list[float]]:
    """The rows (the trained row first, then lam from 1 down) and budgets (ascending) of the cells."""
    lams = {grid_key(c["lam"], 0)[0]: c["lam"] for c in cells}
    budgets = {round(c["budget"], 9): c["budget"] for c in cells}
    rows = ([TRAINED] if TRAINED in lams else []) + sorted((v for v in lams.values() if v != TRAINED), reverse=True)
    return rows, sorted(budgets.values())


def grid_markdown(cells: Sequence[dict], lams: Sequence, budgets: Sequence[float], *, unit: float = 1.0) -> str:
    """Rows lam, columns budgets (clean = budget 0 first), values in %; missing cells show as '…'."""
    lookup = _cells_by_key(cells)
    header = ["lam"] + [("clean" if b == 0 else reports.format_budget(b, unit)) for b in budgets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lam in lams:
        values = [lookup.get(grid_key(lam, b)) for b in budgets]
        row = [_row_label(lam)] + ["…" if c is None else f"{100 * c['accuracy']:.1f}" for c in values]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, cells: Sequence[dict], rows: Sequence) -> None:
    order = {grid_key(lam, 0)[0]: i for i, lam in enumerate(rows)}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for cell in sorted(cells, key=lambda c: (order[grid_key(c["lam"], 0)[0]], c["budget"])):
        writer.writerow(cell)
    reports.atomic_write_text(path, buf.getvalue())


def _plot(path: Path, cells: Sequence[dict], rows: Sequence, budgets: Sequence[float], settings: EvalSettings,
          K) -> None:
    lookup = _cells_by_key(cells)
    unit = settings.budget_unit
    curves = {}
    for lam in rows:
        points = [(b * unit, lookup[grid_key(lam, b)]["accuracy"]) for b in budgets if grid_key(lam, b) in lookup]
        curves[f"lam={_row_label(lam)}"] = ([p[0] for p in points], [p[1] for p in points])
    xlabel = f"budget (x1/{unit:g})" if unit != 1 else "budget"
    reports.plot_curves(path, curves, title=f"{settings.model}: {settings.attack}, K={K}",
                        xlabel=xlabel)


def write_outputs(out: Path, results: dict, settings: EvalSettings) -> None:
    """results.json as given, and results.csv, table.md and accuracy.png from every cell in it."""
    cells, applied = results["cells"], results.get("reprogramming")
    rows, budgets = _grid_axes(cells)
    reports.write_json(out / "results.json", results)
    _write_csv(out / "results.csv", cells, rows)
    table = grid_markdown(cells, rows, budgets, unit=settings.budget_unit)
    samples = results.get("settings", {}).get("data_info", {}).get("detected")
    reports.atomic_write_text(out / "table.md", _table_doc(settings, applied, table, samples))
    _plot(out / "accuracy.png", cells, rows, budgets, settings, applied["K"] if applied else settings.K)


def _table_doc(settings: EvalSettings, applied: dict | None, table: str, samples: str | None = None) -> str:
    samples = samples or (f"the first {settings.n_samples} test images" if settings.split == "test"
                          else f"the last {settings.n_samples} training images (split val)")
    if applied is None:
        how = f"K={settings.K}, eps={settings.eps:g}"
    else:
        how = (f"reprogramming stored in {applied['source']} (row trained = its per-layer lam; a number sets "
               f"every layer), K={applied['K']}, eps={applied['eps']:g}"
               + (f" (overridden: {applied['overrides']})" if applied["overrides"] else ""))
    return (f"# {settings.model}, attack {settings.attack} {settings.attack_kwargs or ''}\n\n"
            f"Accuracy (%) on {samples}; rows lam (1 = original model), {how}, seed={settings.seed}. "
            f"Every cell on file; '…' = not evaluated.\n\n{table}\n")
