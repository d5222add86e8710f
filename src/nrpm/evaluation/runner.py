"""``run_eval``: an evaluation on the run skeleton of :mod:`nrpm.runs`, resumable cell by cell.

The folder is locked and claimed for ``eval``; results.json carries the run's identity (``cell_key``: the settings
a cell depends on, the stored reprogramming applied, and the sha256 of the checkpoint, reprogramming and tensors
files read), so a changed file at the same path is another run, refused with the settings that differ.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from .. import attacks as A
from .. import data as D
from .. import distributed as dist
from .. import reports
from ..formats import EVAL_FORMAT
from ..provenance import versions
from ..reprogram import robust_layers
from ..runs import START_AGAIN, ResultsFile, RunContext, RunRefused, file_digest, resumable
from .grid import TRAINED, cell_map, evaluate_grid, grid_axes, grid_key, markdown_grid, plot_grid, write_grid_csv
from .prepare import EvalSettings, PreparedModel, load_eval_data, prepare_model

__all__ = ["run_eval", "eval_identity", "model_identity", "RESULTS_FORMAT"]

RESULTS_FORMAT = EVAL_FORMAT
_SETTINGS_HINT = "model, checkpoint, reprogramming, K, eps, layers, attack, data, samples and seed"


def run_eval(settings: EvalSettings, ctx: RunContext | None = None, *, device: str = "auto") -> dict:
    """Run (or resume) an evaluation; with ``ctx.out`` write results.json/.csv, table.md and accuracy.png there
    after every cell (each from every cell on file). Returns the results, with this run's grid as ``table``."""
    dev = dist.init_from_env(device).device  # torchrun: joins the group, one GPU per local rank
    ctx = (ctx or RunContext(command="eval", progress=False)).joined()
    torch.manual_seed(settings.seed)
    make_attack = _attack_factory(settings)
    prepared = prepare_model(settings, dev)
    for note in prepared.notes:
        ctx.log(f"note: {note}")
    samples = load_eval_data(prepared)
    prepared.settings = replace(prepared.settings, n_samples=samples.info["n"])  # the count evaluated, as keyed
    with resumable(ctx, "results.json", fmt=RESULTS_FORMAT, identity=eval_identity(prepared),
                   identity_field="cell_key", what="an nrpm eval results file",
                   settings_hint=_SETTINGS_HINT) as results:
        done = _previous_cells(results)
        ctx.log(f"data: {samples.info['detected']}")  # here: a refused resume stays one line of error
        if done:
            ctx.log(f"resuming: {len(done)} finished cells found in {results.path}")
        return _Run(prepared, samples, results, str(dev)).execute(done, make_attack, ctx.progress)


def eval_identity(prepared: PreparedModel) -> dict:
    """What a finished cell depends on: the model's identity (:func:`model_identity`) and the attack's seeding."""
    settings = prepared.settings
    key = model_identity(prepared)
    if A.make_attack(settings.attack, 0.0, **settings.attack_kwargs).seeded_per_sample:
        key["attack_rng"] = "per-sample"  # cells from before per-sample seeding hold other numbers: not resumed
    return key


def model_identity(prepared: PreparedModel) -> dict:
    """The settings' cell key, the stored reprogramming applied, and the contents (sha256) of the files read, so
    that a retrained checkpoint at the same path is not taken for the old one (eval's and certify's resume key)."""
    settings = prepared.settings
    key = settings.cell_key()
    if prepared.reprogramming is not None:
        applied = prepared.reprogramming
        key["stored_reprogramming"] = json.loads(json.dumps(
            {"lam": applied["lam"], "K": applied["K"], "eps": applied["eps"]}))
    files = {"checkpoint_sha256": settings.checkpoint if settings.checkpoint not in (None, "none", "pretrained")
             else None, "reprogramming_sha256": settings.reprogramming, "data_sha256": _tensors_file(settings)}
    key.update({name: file_digest(Path(path).expanduser()) for name, path in files.items() if path is not None})
    return key


def _tensors_file(settings: EvalSettings) -> str | None:
    """The file of a ``tensors:FILE`` data spec (its contents key the run), else None."""
    if settings.data is None:
        return None
    spec = D.parse_data_spec(settings.data)
    return spec.value if spec.kind == "tensors" else None


def _attack_factory(settings: EvalSettings) -> Callable[[float], A.Attack]:
    kwargs = A.with_default_seed(settings.attack, settings.attack_kwargs, settings.seed)
    A.make_attack(settings.attack, 0.0, **kwargs)  # validate name and arguments before any work
    return lambda eps: A.make_attack(settings.attack, eps, **kwargs)


def _is_cell(cell) -> bool:
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return (isinstance(cell, dict) and (number(cell.get("lam")) or cell.get("lam") == TRAINED)
            and number(cell.get("budget")) and number(cell.get("accuracy")))


def _previous_cells(results: ResultsFile) -> dict:
    """The finished cells of an earlier run of the same identity ({grid_key: cell}); {} when there is none."""
    previous = results.previous()
    if previous is None:
        return {}
    cells = previous.get("cells")
    if not isinstance(cells, list) or not all(_is_cell(c) for c in cells):
        raise RunRefused(f"{results.path} has malformed cells (each needs a numeric lam, budget and accuracy): "
                         f"{START_AGAIN}")
    return cell_map(cells)


class _Run:
    """One run_eval call: every cell on file (also of lams / budgets not asked for now), saved after each cell."""

    def __init__(self, prepared: PreparedModel, samples: D.Samples, results: ResultsFile, device: str):
        self.prepared, self.samples, self.results, self.device = prepared, samples, results, device
        self.settings = prepared.settings
        self.on_file: dict = {}
        self.started = time.perf_counter()

    def payload(self) -> dict:
        prepared, settings = self.prepared, self.settings
        recorded = {**asdict(settings), "model_info": prepared.model_info, "data_info": self.samples.info}
        return {"format": RESULTS_FORMAT, "settings": reports.jsonable(recorded), "cell_key": self.results.identity,
                "versions": versions(), "device": self.device,
                "checkpoint_info": reports.jsonable(prepared.checkpoint_info),
                "reprogramming": reports.jsonable(prepared.reprogramming), "notes": prepared.notes,
                "robust_layers": sorted(robust_layers(prepared.network)), "cells": list(self.on_file.values())}

    def save(self, cell: dict) -> None:
        """After each new cell: every output, from every cell on file, so a kill loses only the cell in flight."""
        self.on_file[grid_key(cell["lam"], cell["budget"])] = cell
        if self.results.ctx.writes:
            write_outputs(self.results, self.payload(), self.settings)

    def execute(self, done: dict, make_attack, progress: bool) -> dict:
        self.on_file = dict(done)
        settings = self.settings
        cells = evaluate_grid(self.prepared.model, self.samples.x, self.samples.y, settings.lams, settings.budgets,
                              make_attack, batch_size=settings.batch_size, done=done, on_cell=self.save,
                              progress=progress, attack_name=settings.attack)
        self.on_file.update(cell_map(cells))
        result = {**self.payload(), "seconds_this_run": round(time.perf_counter() - self.started, 2)}
        if self.results.ctx.writes:  # also when every cell was already on file
            write_outputs(self.results, result, settings)
        result["table"] = markdown_grid(cells, settings.lams, settings.budgets, unit=settings.budget_unit)
        result["title"] = table_title(settings, self.samples.info.get("detected"))
        return result


def write_outputs(results: ResultsFile, payload: dict, settings: EvalSettings) -> None:
    """results.json (through ``results``: tag and identity), and results.csv, table.md and accuracy.png from every
    cell in ``payload``."""
    out, cells, applied = results.path.parent, payload["cells"], payload.get("reprogramming")
    results.write({k: v for k, v in payload.items() if k not in ("format", "cell_key")})
    write_grid_csv(out / "results.csv", cells)
    rows, budgets = grid_axes(cells)
    table = markdown_grid(cells, rows, budgets, unit=settings.budget_unit)
    samples = payload.get("settings", {}).get("data_info", {}).get("detected")
    reports.atomic_write_text(out / "table.md", _table_doc(settings, applied, table, samples))
    K = applied["K"] if applied else settings.K
    plot_grid(out / "accuracy.png", cells, title=f"{settings.model}: {settings.attack}, K={K}",
              unit=settings.budget_unit)


def table_title(settings: EvalSettings, samples: str | None) -> str:
    """What the grid shows, in one line: model, attack, samples, reprogramming."""
    attack = "clean only" if settings.budgets and max(settings.budgets) == 0 else \
        f"{settings.attack}{' ' + str(settings.attack_kwargs) if settings.attack_kwargs else ''}"
    return (f"# Accuracy (%) of {settings.model} under {attack}, on {samples or f'{settings.n_samples} samples'}: "
            f"rows lam (1 = original model), columns budgets")


def _table_doc(settings: EvalSettings, applied: dict | None, table: str, samples: str | None = None) -> str:
    samples = samples or (f"the first {settings.n_samples} test images" if settings.split == "test"
                          else f"the last {settings.n_samples} training images (split val)")
    if applied is None:
        how = f"K={settings.K}, eps={settings.eps:g}"
    else:
        how = (f"reprogramming stored in {applied['source']} (row trained = its per-layer lam; a number sets "
               f"every layer), K={applied['K']}, eps={applied['eps']:g}"
               + (f" (overridden: {applied['overrides']})" if applied["overrides"] else ""))
    attacked = any(b > 0 for b in settings.budgets)  # budget 0 only: the attack (a default) never ran
    title = f"attack {settings.attack} {settings.attack_kwargs or ''}" if attacked else "clean accuracy"
    return (f"# {settings.model}, {title}\n\n"
            f"Accuracy (%) on {samples}; rows lam (1 = original model), {how}, seed={settings.seed}. "
            f"Every cell on file; '…' = not evaluated.\n\n{table}\n")
