"""Evaluation: build a (reprogrammed) model and measure clean and robust accuracy over a (lam x budget) grid.

Results are written after every finished cell (atomically), so a run of hours can be interrupted and resumed
without redoing finished (lam, budget) cells, provided the settings that define a cell did not change.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import attacks as A
from . import data as D
from . import distributed as dist
from . import reports
from ._io import output_dir_lock
from .provenance import versions
from .models import default_robust_layers, model_from_checkpoint
from .reprogram import ReprogramConfig, reprogram, set_lam

__all__ = ["EvalSettings", "build_model", "run_eval", "evaluate_grid",
           "resolve_device"]

RESULTS_FORMAT = "nrpm-eval/1"

@dataclass
class EvalSettings:
    """Everything that defines an evaluation run (saved with its results)."""

    model: str
    checkpoint: str | None = "pretrained"
    lams: Sequence[float] = (1.0,)
    K: int = 3
    eps: float = 1e-3
    layers: Sequence[str] | None = None  # None: default_robust_layers(model)
    skip: Sequence[str] = ()
    layer_types: Sequence[str] = ("linear", "conv2d")
    attack: str = "fgsm"
    attack_kwargs: dict = field(default_factory=dict)
    budgets: Sequence[float] = (0.0,)
    budget_unit: float = 1.0  # budgets are stored in [0, 1] input units; unit 255 only changes display
    n_samples: int = 1000
    batch_size: int = 250
    seed: int = 0
    data_root: str | None = None
    split: str = "test"  # "test": first n_samples test images; "val": last n_samples of the training split


    def cell_key(self) -> dict:
        """The settings a finished cell depends on; resuming requires them to be equal."""
        d = asdict(self)
        for k in ("lams", "budgets", "batch_size", "data_root", "budget_unit"):
            d.pop(k)
        return json.loads(json.dumps(d))  # as it reads back from results.json (tuples become lists)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(settings: EvalSettings, device: torch.device = torch.device("cpu")) -> tuple[torch.nn.Module, dict]:
    """The model named in ``settings`` with its checkpoint, reprogrammed (paradigm 1, lam = lams[0])."""
    model, info = model_from_checkpoint(settings.model, settings.checkpoint)
    model = model.to(device).eval()
    layers = settings.layers if settings.layers is not None else default_robust_layers(settings.model)
    config = ReprogramConfig(lam=settings.lams[0], K=settings.K, eps=settings.eps, paradigm=1,
                             target_modules=layers, skip=list(settings.skip),
                             target_types=list(settings.layer_types))
    reprogram(model, config)
    return model, info


def load_eval_samples(dataset: str, settings: EvalSettings):
    """The evaluated samples: the first n test images, or for choosing hyper-parameters such as lam without
    touching the test set, the last n images of the training split ("val")."""
    if settings.split == "test":
        return D.subset(*D.load_dataset(dataset, root=settings.data_root, train=False), settings.n_samples)
    if settings.split == "val":
        x, y = D.load_dataset(dataset, root=settings.data_root, train=True)
        if settings.n_samples > len(x):
            raise ValueError(f"--n-samples {settings.n_samples} exceeds the {len(x)} training images")
        return x[-settings.n_samples:], y[-settings.n_samples:]
    raise ValueError(f"split must be 'test' or 'val', got {settings.split!r}")


def _attack_factory(settings: EvalSettings) -> Callable[[float], A.Attack]:
    kwargs = A.with_default_seed(settings.attack, settings.attack_kwargs, settings.seed)
    A.make_attack(settings.attack, 0.0, **kwargs)  # validate name and arguments before any work
    return lambda eps: A.make_attack(settings.attack, eps, **kwargs)


def evaluate_grid(model, x, y, lams, budgets, make_attack: Callable[[float], A.Attack], *, batch_size: int,
                  done: dict | None = None, on_cell: Callable[[dict], None] | None = None,
                  progress: bool = True, attack_name: str = "") -> list[dict]:
    """Accuracy of ``model`` for every (lam, budget); budget 0 is clean accuracy.

    Cells already in ``done`` ({(lam, budget): cell}) are kept, not recomputed; ``on_cell`` is called after each
    new cell (used to save progress).
    """
    from tqdm.auto import tqdm

    done = dict(done or {})
    todo = [(lam, b) for lam in lams for b in budgets if (round(lam, 6), round(b, 9)) not in done]
    bar = tqdm(total=len(lams) * len(budgets), initial=len(lams) * len(budgets) - len(todo),
               disable=not progress or not dist.is_main(), desc="eval cells", unit="cell")
    for lam, budget in todo:
        set_lam(model, lam)
        start = time.perf_counter()
        if budget == 0:
            measure = lambda xs, ys: A.clean_accuracy(model, xs, ys, batch_size=batch_size)
        else:
            attack = make_attack(budget)
            measure = lambda xs, ys: A.robust_accuracy(model, attack, xs, ys, batch_size=batch_size)
        correct = dist.sharded_correct(measure, x, y)  # this rank's block of x; counts summed over ranks
        acc = correct / len(x)
        cell = {"lam": lam, "budget": budget, "attack": "clean" if budget == 0 else attack_name,
                "accuracy": acc, "correct": correct, "n": len(x),
                "seconds": round(time.perf_counter() - start, 3)}
        done[(round(lam, 6), round(budget, 9))] = cell
        if on_cell is not None and dist.is_main():
            on_cell(cell)
        bar.set_postfix(lam=lam, budget=f"{budget:g}", acc=f"{100 * acc:.1f}")
        bar.update(1)
    bar.close()
    return [done[(round(lam, 6), round(b, 9))] for lam in lams for b in budgets]


def _load_previous(out_dir: Path, settings: EvalSettings, overwrite: bool) -> dict:
    path = out_dir / "results.json"
    if not path.exists() or overwrite:
        return {}
    previous = reports.read_json(path)
    if previous.get("format") != RESULTS_FORMAT or previous.get("cell_key") != settings.cell_key():
        raise ValueError(f"{path} holds results of other settings; resume needs the same model, checkpoint, "
                         f"K, eps, layers, attack, samples and seed. Use another --out or --overwrite.")
    return reports.cell_map(previous["cells"])


def run_eval(settings: EvalSettings, out_dir: str | Path | None, *, device: str = "auto", progress: bool = True,
             overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) an evaluation; write results.json/.csv/.md and accuracy.png under ``out_dir``."""
    dev = dist.init_from_env(device).device  # torchrun: joins the group, one GPU per local rank
    torch.manual_seed(settings.seed)
    make_attack = _attack_factory(settings)
    model, info = build_model(settings, dev)
    x, y = load_eval_samples(model.dataset, settings)
    out = Path(out_dir) if out_dir is not None else None
    writes = out is not None and dist.is_main()  # under torchrun only rank 0 writes
    with output_dir_lock(out, "eval", enabled=writes):
        done = _load_previous(out, settings, overwrite) if out is not None else {}
        if done:
            log(f"resuming: {len(done)} finished cells found in {out / 'results.json'}")
        cells_so_far = dict(done)
        started = time.perf_counter()

        def payload(cells):
            return {"format": RESULTS_FORMAT, "settings": asdict(settings), "cell_key": settings.cell_key(),
                    "versions": versions(), "device": str(dev), "checkpoint_info": reports.jsonable(info),
                    "robust_layers": sorted(n for n, _ in _robust_names(model)), "cells": cells}

        def save(cell):
            cells_so_far.update(reports.cell_map([cell]))
            if writes:
                reports.write_json(out / "results.json", payload(list(cells_so_far.values())))

        cells = evaluate_grid(model, x, y, settings.lams, settings.budgets, make_attack,
                              batch_size=settings.batch_size, done=done, on_cell=save, progress=progress,
                              attack_name=settings.attack)
        # keep every finished cell on file, also those of lam values / budgets not asked for in this run
        result = payload(list({**cells_so_far, **reports.cell_map(cells)}.values()))
        result["seconds_this_run"] = round(time.perf_counter() - started, 2)
        result["table"] = reports.markdown_grid(cells, settings.lams, settings.budgets, unit=settings.budget_unit)
        if writes:
            _write_outputs(out, settings, result, cells)
        return result


def _write_outputs(out: Path, settings: EvalSettings, result: dict, cells: list[dict]) -> None:
    """results.json (every cell on file), and this run's grid as results.csv, table.md and accuracy.png."""
    reports.write_json(out / "results.json", result)
    reports.write_grid_csv(out / "results.csv", cells)
    reports.atomic_write_text(out / "table.md", _table_doc(settings, result["table"]))
    curves = {f"lam={lam:g}": (list(settings.budgets),
                               [c["accuracy"] for c in cells if c["lam"] == lam]) for lam in settings.lams}
    unit = f" (x1/{settings.budget_unit:g})" if settings.budget_unit != 1 else ""
    reports.plot_curves(out / "accuracy.png", {k: ([b * settings.budget_unit for b in v[0]], v[1])
                                               for k, v in curves.items()},
                        title=f"{settings.model}: {settings.attack}, K={settings.K}", xlabel=f"budget{unit}")

def _table_doc(settings: EvalSettings, table: str) -> str:
    return (f"# {settings.model}, attack {settings.attack} {settings.attack_kwargs or ''}\n\n"
            f"Accuracy (%) on the first {settings.n_samples} test images; rows lam (1 = original model), "
            f"K={settings.K}, eps={settings.eps:g}, seed={settings.seed}.\n\n{table}\n")


def _robust_names(model):
    from .reprogram import robust_layers

    return robust_layers(model).items()


