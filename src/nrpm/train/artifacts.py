"""Everything a run writes to (and reads back from) its output folder; only rank 0 calls the writers.

* ``checkpoint.pt`` (:data:`CHECKPOINT_FORMAT`): the full state of the run after an epoch, for an exact resume;
* ``reprogramming.pt`` / ``model.pt`` (:data:`MODEL_FORMAT`): the trained artifact; :func:`load_trained`
  rebuilds the model from either;
* ``log.jsonl`` / ``log.csv`` (one row per epoch), optional TensorBoard scalars, ``run.json`` (the summary) and
  ``test_<label>.json/.md`` (final test evaluations).

Every file is written atomically (temp file + rename), so a crash while saving never leaves a torn file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .. import reports
from ..formats import (CHECKPOINT_FORMAT, MODEL_FORMAT, REPROGRAMMING_FORMAT, RUN_FORMAT, TEST_FORMAT, read_tagged,
                       write_tagged)
from ..models import inner_model, load_checkpoint, model_from_checkpoint, resolve_model_spec
from ..reprogram import load_reprogramming, reprogram, reprogramming_state
from .config import TestSettings, TrainConfig
from .sources import loadable_spec, normalized

__all__ = ["CHECKPOINT_FORMAT", "MODEL_FORMAT", "RUN_FORMAT", "TEST_FORMAT", "CHECKPOINT_NAME", "check_writable",
           "read_checkpoint", "write_checkpoint", "artifact_names", "write_artifacts",
           "load_trained", "write_logs", "open_tensorboard", "log_tensorboard", "epoch_line", "write_test_files",
           "write_run_json"]

CHECKPOINT_NAME = "checkpoint.pt"


def check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, so a bad folder fails before any training."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".nrpm-write-test.", dir=out)
        os.close(fd)
        os.remove(tmp)
    except OSError as error:
        raise ValueError(f"output folder {out} is not writable: {error}") from None


# ------------------------------------------------------------------------------------------------ checkpoints
def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a training checkpoint written by :func:`~nrpm.train.run_training`."""
    return read_tagged(path, CHECKPOINT_FORMAT, "an nrpm training checkpoint",
                       "give the checkpoint.pt of an nrpm train / reprogram run")


def write_checkpoint(path: Path, config: TrainConfig, model: nn.Module, *, epoch: int, optimizer, scheduler,
                     generator: torch.Generator, rng: list, history: list, train_seconds: float,
                     wall_seconds: float, world_size: int) -> None:
    """The state after ``epoch``: enough to continue as if never stopped (``rng`` holds every rank's states)."""
    write_tagged(path, {"format": CHECKPOINT_FORMAT, "identity": config.identity(),
                        "config": config.to_dict(), "model_source": loadable_spec(config.model), "epoch": epoch,
                        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "generator": generator.get_state(), "rng": rng, "history": history,
                        "train_seconds": train_seconds, "wall_seconds": wall_seconds,
                        "world_size": world_size})


def _plain_state_dict(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.endswith(".lam_logit")}


def artifact_names(config: TrainConfig) -> list[str]:
    """The artifact files of a paradigm: the reprogramming state (2, 3) and the full model (0, 3)."""
    return (["reprogramming.pt"] if config.paradigm in (2, 3) else []) + (
        ["model.pt"] if config.paradigm in (0, 3) else [])


def _model_spec_fields(config: TrainConfig, prefix: str = "") -> dict:
    """What rebuilds the model: the spec as given (what nrpm eval --model compares), its factory arguments and
    normalisation, and ``model_source``, the spec with a factory file's absolute path (loadable from anywhere)."""
    return {f"{prefix}model": config.model, f"{prefix}model_args": dict(config.model_args),
            f"{prefix}normalize": config.normalize, f"{prefix}model_source": loadable_spec(config.model)}


def write_artifacts(out: Path, config: TrainConfig, model: nn.Module, epoch: int) -> list[str]:
    """Refresh the trained artifact(s) from ``model`` (the plain module, not a DDP wrapper). They hold the
    model's own weights and layer names, without a normalisation in front, as a checkpoint of the factory
    (nrpm eval --checkpoint, with the same --normalize) takes them."""
    network = inner_model(model)
    written = []
    if config.paradigm in (2, 3):
        rp = reprogramming_state(network)
        if config.paradigm == 2:  # the artifact alone names what it applies to
            rp.update(_model_spec_fields(config, "base_"), base_checkpoint=config.checkpoint)
        write_tagged(out / "reprogramming.pt", rp)
        written.append("reprogramming.pt")
    if config.paradigm in (0, 3):
        write_tagged(out / "model.pt", {"format": MODEL_FORMAT, **_model_spec_fields(config),
                                        "paradigm": config.paradigm, "epoch": epoch,
                                        "state_dict": _plain_state_dict(network),
                                        "reprogramming": reprogramming_state(network) if config.paradigm else None,
                                        "config": config.to_dict()})
        written.append("model.pt")
    return written


# ------------------------------------------------------------------------------------------------ load_trained
def load_trained(path: str | os.PathLike, map_location="cpu") -> tuple[nn.Module, dict]:
    """The trained model of a run folder (or its ``model.pt`` / ``reprogramming.pt`` / ``checkpoint.pt``), in
    eval mode: paradigm 2 = the base checkpoint with the learned lam; paradigm 3 = trained weights with the
    learned lam; paradigm 0 = the trained plain model. Returns (model, info)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no trained model at {path}")
    if path.is_dir():
        path = _preferred_file(path)
    if path.name == CHECKPOINT_NAME:
        model, info = _from_checkpoint(path)
    elif path.name != "reprogramming.pt":
        model, info = _from_model_file(path)
    else:
        model, info = _from_reprogramming(path)
    return model.to(map_location).eval(), info


def _preferred_file(folder: Path) -> Path:
    candidates = [folder / "model.pt", folder / "reprogramming.pt", folder / CHECKPOINT_NAME]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise FileNotFoundError(f"no model.pt, reprogramming.pt or {CHECKPOINT_NAME} in {folder}")
    return found[0]


def _rebuild(spec: str, source: str | None, model_args: dict | None) -> nn.Module:
    """A fresh model of the spec a run trained (``source``: its loadable form, where the file has one)."""
    return resolve_model_spec(source or spec, model_args or {})[0]


def _from_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    ckpt = read_checkpoint(path)
    config = TrainConfig.from_dict(ckpt["config"])
    network = _rebuild(config.model, ckpt.get("model_source"), config.model_args)
    if config.paradigm:
        reprogram(network, config.reprogram_config())
    model = normalized(network, config.normalize)  # the training state is that of the model as trained
    model.load_state_dict(ckpt["model_state"])
    return model, {"source": str(path), "epoch": ckpt["epoch"], "paradigm": config.paradigm}


def _from_model_file(path: Path) -> tuple[nn.Module, dict]:
    obj = read_tagged(path, MODEL_FORMAT, "an nrpm model file", "give the model.pt of an nrpm train run")
    network = _rebuild(obj["model"], obj.get("model_source"), obj.get("model_args"))
    info = load_checkpoint(network, obj)
    if obj.get("reprogramming"):
        load_reprogramming(network, obj["reprogramming"])
    info.update(source=str(path), paradigm=obj.get("paradigm"))
    return normalized(network, obj.get("normalize")), info


def _from_reprogramming(path: Path) -> tuple[nn.Module, dict]:
    state = read_tagged(path, REPROGRAMMING_FORMAT, "an nrpm reprogramming state",
                        "give the reprogramming.pt of an nrpm reprogram run")
    name, base = state.get("base_model"), state.get("base_checkpoint")
    if name is None:
        raise ValueError(f"{path} does not name its base model; load the base model yourself and call "
                         f"nrpm.load_reprogramming(model, path)")
    if base == "pretrained":  # registry models only: a run could not have started otherwise
        network, info = model_from_checkpoint(name, "pretrained")
    else:
        network = _rebuild(name, state.get("base_model_source"), state.get("base_model_args"))
        info = load_checkpoint(network, base) if base not in (None, "none") else {}
    load_reprogramming(network, state)
    info.update(source=str(path), paradigm=2)
    return normalized(network, state.get("base_normalize")), info


# ------------------------------------------------------------------------------------------------ logs
_CSV_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_clean", "val_robust", "epoch_seconds",
               "train_seconds", "wall_seconds", "samples"]


def write_logs(out: Path, history: list[dict]) -> None:
    """``log.jsonl`` and ``log.csv`` (one column per layer's lam), rewritten whole so they match the checkpoint."""
    reports.atomic_write_text(out / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    lam_names = list(history[-1].get("lam", {})) if history else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS + [f"lam/{n}" for n in lam_names], extrasaction="ignore")
    writer.writeheader()
    for row in history:
        flat = dict(row)
        flat.update({f"lam/{n}": v for n, v in row.get("lam", {}).items()})
        writer.writerow(flat)
    reports.atomic_write_text(out / "log.csv", buf.getvalue())


def open_tensorboard(out: Path, enabled: bool, log):
    """A SummaryWriter on ``out/tb``, or None when not asked for or tensorboard is not installed."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        log("tensorboard is not installed: skipping TensorBoard logs (log.jsonl and log.csv are written)")
        return None
    return SummaryWriter(log_dir=str(out / "tb"))


def log_tensorboard(writer, row: dict, epoch: int) -> None:
    for key in ("train_loss", "train_acc", "val_clean", "val_robust", "lr"):
        if row[key] is not None:
            writer.add_scalar(key, row[key], epoch)
    for name, value in row["lam"].items():
        writer.add_scalar(f"lam/{name}", value, epoch)
    writer.flush()


def epoch_line(config: TrainConfig, row: dict) -> str:
    """The one-line progress report of an epoch."""
    # with a training attack the loss and accuracy are measured on the adversarial examples trained on
    kind = "train acc" if config.attack == "none" else f"train acc on {config.attack} examples"
    parts = [f"epoch {row['epoch']}/{config.epochs}", f"loss {row['train_loss']:.4f}",
             f"{kind} {100 * row['train_acc']:.1f}%"]
    if row.get("val_clean") is not None:
        parts.append(f"val clean {100 * row['val_clean']:.1f}%")
    if row.get("val_robust") is not None:
        parts.append(f"val {config.val_attack}({config.val_eps:g}) {100 * row['val_robust']:.1f}%")
    parts += [f"lr {row['lr']:.3g}", f"{row['epoch_seconds']:.1f} s"]
    if row.get("lam"):
        parts.append("lam " + " ".join(f"{n}={v:.3f}" for n, v in row["lam"].items()))
    return " | ".join(parts)


# ------------------------------------------------------------------------------------------------ results
def write_test_files(out: Path, settings: TestSettings, result: dict, n_images: int) -> None:
    """``test_<label>.json`` (the cells) and ``.md`` (the table) of one final test evaluation."""
    label = settings.label()
    reports.write_json(out / f"test_{label}.json", result)
    reports.atomic_write_text(out / f"test_{label}.md",
                              f"# {result['row']}: {settings.attack} {settings.attack_kwargs or ''}\n\n"
                              f"Accuracy (%) on the first {n_images} test images.\n\n"
                              f"{result['table']}\n")


def write_run_json(out: Path, summary: dict) -> dict:
    """Write ``run.json``, keeping the test results of earlier calls on the same folder (a resume that only
    evaluates adds its tests to those already there). Returns the summary with the merged tests."""
    previous = {}
    if (out / "run.json").is_file():
        try:
            previous = reports.read_json(out / "run.json").get("tests", {})
        except (ValueError, OSError):
            previous = {}
    summary["tests"] = {**previous, **summary["tests"]}
    reports.write_json(out / "run.json", summary)
    return summary
