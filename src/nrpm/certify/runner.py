"""Certify every sample for every (lam, sigma), resumable per sample, with results.json, table.md, results.csv
and certified.png under an output folder.

results.json is rewritten atomically after every sample, or at most every ``save_every_s`` seconds when samples
are quick (a large file rewritten per sample would cost more than the samples), after every cell, and when the
run stops, also by an exception or Ctrl-C. A rerun into the same folder skips finished samples; it refuses a
file of other settings (other n0, n, alpha, seed or model), since mixing them would make one table of
incomparable certificates.

Each sample draws its noise from its own generator, seeded from (seed, sample index): a resumed run gives the
same certificates as an uninterrupted one, and every (lam, sigma) cell sees the same standard normal noise
(common random numbers), so differences between lam values are not noise. Exact bits also depend on the batch
size and the device, which are recorded but not required to match on resume (their certificates are equally
valid).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from .. import distributed as dist
from .. import reports
from ..attacks import eval_frozen
from ..evaluation import TRAINED
from ..functional import sustained_work
from ..nn import lam_override
from ..provenance import versions
from ..reprogram import robust_layers
from ..runs import START_AGAIN, ResultsFile, RunContext, resumable
from . import outputs
from .smoothing import (ABSTAIN, DEFAULT_BATCH_SIZE, certify, check_alpha, check_count, check_sigma,
                        lower_confidence_bound)

__all__ = ["run_certify", "CertifySettings", "sample_generator", "max_certifiable_radius", "RESULTS_FORMAT", "NOISE"]

RESULTS_FORMAT = "nrpm-certify/1"
NOISE = "gaussian N(0, sigma^2 I) added to inputs in [0, 1], not clipped (as in Cohen et al. 2019)"


# ------------------------------------------------------------------------------------------ small helpers
def sample_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of sample ``index``'s noise: seeded from (seed, index) by numpy's SeedSequence, so that
    neighbouring seeds and indices give unrelated streams."""
    state = np.random.SeedSequence([seed % (1 << 64), index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) >> 1)  # 63 bits: what manual_seed surely takes


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``n`` samples: all n samples in the top class."""
    return float(sigma * stats.norm.ppf(lower_confidence_bound(n, n, alpha)))


def _unique(values: Sequence) -> list:
    return list(dict.fromkeys(values))


def _check_lams(lams: Sequence, model: nn.Module) -> list:
    """lam values: numbers in [0, 1] or TRAINED; lam != 1 and TRAINED need robust layers to act on."""
    if not lams:
        raise ValueError("lams must name at least one lam value (1 = the original model)")
    checked = []
    for lam in _unique(lams):
        if lam != TRAINED and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 1):
            raise ValueError(f"lam values must lie in [0, 1] (1 = the original model) or be {TRAINED!r}, "
                             f"got {lam!r}")
        checked.append(lam if lam == TRAINED else float(lam))
    has_robust_layers = bool(robust_layers(model))
    needing = [lam for lam in checked if lam != 1.0]
    if needing and not has_robust_layers:
        raise ValueError(f"lam {needing[0]!r} needs a reprogrammed model (nrpm.reprogram), and this one has no "
                         f"robust layers: use lam 1 for the plain model")
    return checked


def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() < 2:
        raise ValueError("x must be a batch of inputs (N, ...) and y a tensor of N labels")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must hold the same number (>= 1) of samples, got {len(x)} and {len(y)}")


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _lam_applied(model: nn.Module, lam):
    """Every robust layer at ``lam`` inside the block; TRAINED keeps each layer's own lam."""
    return contextlib.nullcontext(model) if lam == TRAINED else lam_override(model, lam)


# ------------------------------------------------------------------------------------------ resuming
def _is_sample(sample) -> bool:
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return (isinstance(sample, dict) and isinstance(sample.get("index"), int) and number(sample.get("radius"))
            and isinstance(sample.get("prediction"), int) and isinstance(sample.get("correct"), bool))


def _read_cells(results: ResultsFile) -> dict:
    """{cell name: {lam, sigma, samples: {index: sample}}} of the run on file; {} without one."""
    previous = results.previous()
    if previous is None:
        return {}
    cells = previous.get("cells")
    if not isinstance(cells, dict) or not all(isinstance(c, dict) and isinstance(c.get("samples"), list)
                                              and all(_is_sample(s) for s in c["samples"]) for c in cells.values()):
        raise ValueError(f"{results.path} has malformed cells (each needs lam, sigma and a list of samples): "
                         f"{START_AGAIN}")
    return {name: {"lam": c["lam"], "sigma": c["sigma"], "samples": {s["index"]: s for s in c["samples"]}}
            for name, c in cells.items()}


def _check_labels(path: Path, cells: dict, y: torch.Tensor) -> None:
    """Finished samples must be of these images: their labels on file must be the labels given now."""
    for name, cell in cells.items():
        for index, sample in cell["samples"].items():
            if index < len(y) and sample.get("label") != int(y[index]):
                raise ValueError(f"{path} holds other samples (sample {index} of {name} has label "
                                 f"{sample.get('label')!r}, the data now {int(y[index])}): {FIX}")


# ------------------------------------------------------------------------------------------ one sample
def _certify_sample(model, x, y, index: int, sigma: float, *, n0, n, alpha, batch_size, seed, device) -> dict:
    image = x[index].to(device)
    certificate = certify(model, image, sigma, n0, n, alpha, batch_size=batch_size,
                          generator=sample_generator(seed, index, device))
    label = int(y[index])
    with eval_frozen(model), torch.no_grad():
        base_prediction = int(model(image.unsqueeze(0)).argmax(dim=1)[0])  # the base model, without noise
    return {"index": index, "label": label, "prediction": certificate.prediction, "radius": certificate.radius,
            "correct": certificate.prediction != ABSTAIN and certificate.prediction == label,
            "pA_lower": certificate.pA_lower, "counts_top": certificate.counts_top,
            "base_prediction": base_prediction}


# ------------------------------------------------------------------------------------------ the run
def _as_model(model_factory_or_model) -> nn.Module:
    if isinstance(model_factory_or_model, nn.Module):
        return model_factory_or_model
    if callable(model_factory_or_model):
        model = model_factory_or_model()
        if isinstance(model, nn.Module):
            return model
    raise ValueError("run_certify wants an nn.Module or a function that returns one")


@dataclass(frozen=True)
class CertifySettings:
    """What a certify run does. ``lams``: numbers in [0, 1] applied to every robust layer with
    :func:`nrpm.lam_override` (1 = the original model), or ``"trained"`` (each layer's own lam); ``sigmas`` the
    noise levels; ``n0`` / ``n`` / ``alpha`` CERTIFY's selection and estimation counts and failure probability;
    ``seed`` the noise seed (per sample: see :func:`sample_generator`). ``describe``: what defines the model
    (name, checkpoint contents, K, ...), part of the identity a resumed run must match; ``info``: recorded only.
    ``save_every_s``: results.json is rewritten at most this often while samples finish."""

    lams: Sequence = (1.0,)
    sigmas: Sequence[float] = (0.25, 0.5)
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    describe: dict | None = None
    info: dict | None = None
    title: str = "randomized smoothing"
    save_every_s: float = 5.0

    def checked(self, model: nn.Module) -> "CertifySettings":
        """These settings validated (ValueError naming the value), lams and sigmas without repeats."""
        if not self.sigmas:
            raise ValueError("sigmas must name at least one noise level sigma > 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        return replace(self, lams=_check_lams(self.lams, model),
                       sigmas=[check_sigma(s) for s in _unique(self.sigmas)], n0=check_count(self.n0, "n0"),
                       n=check_count(self.n, "n"), alpha=check_alpha(self.alpha),
                       batch_size=check_count(self.batch_size, "batch_size"))

    def identity(self) -> dict:
        """What determines the certificates besides the samples (checked on resume)."""
        return reports.jsonable({"n0": self.n0, "n": self.n, "alpha": self.alpha, "seed": self.seed,
                                 "noise": NOISE, **(self.describe or {})})

    def options(self) -> dict:
        return dict(n0=self.n0, n=self.n, alpha=self.alpha, batch_size=self.batch_size, seed=self.seed)


def run_certify(model_factory_or_model, x: torch.Tensor, y: torch.Tensor, settings: CertifySettings | None = None,
                ctx: RunContext | None = None, *, on_sample: Callable[[dict], None] | None = None,
                on_start: Callable[[], None] | None = None) -> dict:
    """Certify every sample of (x, y) (inputs in [0, 1]) for every (lam, sigma) of ``settings``; returns the results.

    ``ctx`` (:class:`nrpm.runs.RunContext`) says where results go: with an output folder the run resumes from and
    writes results.json, table.md, results.csv and certified.png (see the module docstring); ``ctx.overwrite``
    ignores an earlier results.json there. ``on_sample(sample)`` is called after each new sample is recorded
    (e.g. to stop a test run). ``on_start()``: called once the output folder is held and the results on file are
    checked, before the first sample (the CLI prints its data line there, so a refused folder stays one line).
    """
    model = _as_model(model_factory_or_model)
    _check_data(x, y)
    settings = (settings or CertifySettings()).checked(model)
    ctx = ctx or RunContext(command="certify", progress=False)
    with resumable(ctx, "results.json", fmt=RESULTS_FORMAT, identity=settings.identity(), identity_field="key",
                   what="an nrpm certify results file", settings_hint="model, n0, n, alpha and seed") as results:
        previous = _read_cells(results)
        if ctx.out is not None:
            _check_labels(results.path, previous, y)
        if on_start is not None:
            on_start()
        run = _Run(model, x, y, settings, previous, results, ctx, on_sample=on_sample, device=_device_of(model))
        with sustained_work():  # n noise draws per sample: the kernels compile at every batch size
            return run.execute()


class _Run:
    """One run_certify call: the cells on file (also of lam / sigma values not asked for now), and their saving."""

    def __init__(self, model, x, y, settings: CertifySettings, cells: dict, results: ResultsFile, ctx: RunContext,
                 *, on_sample, device):
        self.model, self.x, self.y, self.settings, self.cells = model, x, y, settings, cells
        self.results, self.ctx, self.on_sample, self.device = results, ctx, on_sample, device
        self.options = settings.options()
        self.started = self.last_save = time.perf_counter()
        self.unsaved = False

    def payload(self) -> dict:
        settings = {"lams": self.settings.lams, "sigmas": self.settings.sigmas, **self.options,
                    "n_samples": len(self.x), "noise": NOISE, "device": str(self.device), "radius_norm": "L2"}
        cells = {name: {"lam": c["lam"], "sigma": c["sigma"],
                        "samples": [c["samples"][i] for i in sorted(c["samples"])]}
                 for name, c in self.cells.items() if c["samples"]}  # a cell begun and stopped at once: none
        import scipy

        return {"format": RESULTS_FORMAT, "settings": settings, "key": self.results.identity,
                "versions": versions(scipy=scipy.__version__), "info": reports.jsonable(self.settings.info or {}),
                "cells": cells, "seconds_this_run": round(time.perf_counter() - self.started, 2)}

    def max_radius(self) -> float:
        sigmas = [c["sigma"] for c in self.cells.values()] or self.settings.sigmas
        return max(max_certifiable_radius(s, self.options["n"], self.options["alpha"]) for s in sigmas)

    def save(self, everything: bool) -> str | None:
        """results.json; with ``everything`` also table.md, results.csv and certified.png. Returns the table."""
        self.last_save, self.unsaved = time.perf_counter(), False
        if not self.ctx.writes:
            return None
        payload = self.payload()
        self.results.write({k: v for k, v in payload.items() if k not in ("format", "key")})
        if not everything:
            return None
        note = (f"Certified accuracy (%) of the smoothed classifier (Cohen et al. 2019) against the L2 radius: "
                f"n0={self.options['n0']}, n={self.options['n']}, alpha={self.options['alpha']:g}, "
                f"seed={self.options['seed']}; noise {NOISE}. r=0 is the smoothed classifier's clean accuracy "
                f"(abstentions count as wrong); 'base clean' is the base model on the un-noised images; "
                f"'abstain' the abstention rate. Every sample on file; '…' = not evaluated.")
        return outputs.write_outputs(self.ctx.out, payload, self.max_radius(), title=self.settings.title, note=note,
                                     footer=self.radius_limits())

    def execute(self) -> dict:
        from tqdm.auto import tqdm

        plan = [(lam, sigma) for lam in self.settings.lams for sigma in self.settings.sigmas]
        wanted = set(range(len(self.x)))
        done = sum(len(self.cells.get(outputs.cell_name(lam, sigma), {"samples": {}})["samples"].keys() & wanted)
                   for lam, sigma in plan)
        if done:
            self.ctx.log(f"resuming: {done} of {len(plan) * len(self.x)} samples found in {self.results.path}")
        bar = tqdm(total=len(plan) * len(self.x), initial=done, disable=not self.ctx.progress, desc="certify",
                   unit="sample")
        try:
            for lam, sigma in plan:
                if self._certify_cell(lam, sigma, bar):
                    self.save(everything=True)
        finally:
            bar.close()
            if self.unsaved:
                self.save(everything=False)  # what an interruption or an error would otherwise lose
        table = self.save(everything=True)
        result = self.payload()
        result["table"] = table if table is not None else outputs.certify_markdown(
            {k: c for k, c in result["cells"].items() if c["samples"]}, outputs.radius_grid(self.max_radius()))
        result["table"] += "\n\n" + self.radius_limits()
        return result

    def radius_limits(self) -> str:
        """The largest radius each sigma can certify with n noise samples: larger radii are 0 by construction."""
        sigmas = sorted({c["sigma"] for c in self.cells.values()} or set(self.settings.sigmas))
        limits = ", ".join(f"sigma {s:g}: {max_certifiable_radius(s, self.options['n'], self.options['alpha']):.2f}"
                           for s in sigmas)
        return (f"Largest radius n={self.options['n']} noise samples can certify (alpha "
                f"{self.options['alpha']:g}): {limits}; past it every certified accuracy is 0 by construction.")

    def _cell(self, lam, sigma) -> dict:
        return self.cells.setdefault(outputs.cell_name(lam, sigma), {"lam": lam, "sigma": sigma, "samples": {}})

    def _certify_cell(self, lam, sigma, bar) -> bool:
        """Certify the cell's samples not on file yet; False when there were none.

        Under torchrun the samples go round the ranks, one each per round, and every round's certificates are
        gathered to all ranks (rank 0 records and saves them): each sample draws its noise from its own generator,
        so the certificates are those of one process, and a killed run loses at most the round in flight."""
        cell = self._cell(lam, sigma)
        todo = [i for i in range(len(self.x)) if i not in cell["samples"]]
        if not todo:
            return False
        world, rank = self.ctx.world_size, self.ctx.rank
        with eval_frozen(self.model), _lam_applied(self.model, lam):
            for start in range(0, len(todo), world):
                batch = todo[start:start + world]
                mine = None if rank >= len(batch) else _certify_sample(
                    self.model, self.x, self.y, batch[rank], sigma, device=self.device, **self.options)
                finished = [s for s in dist.all_gather_object(mine) if s is not None]
                for sample in finished:
                    self._record(cell, sample, lam, sigma, bar)
                if world > 1 or time.perf_counter() - self.last_save >= self.settings.save_every_s:
                    self.save(everything=False)
                for sample in finished:  # after the save: a hook that stops the run finds these on file
                    if self.on_sample is not None:
                        self.on_sample(sample)
        return True

    def _record(self, cell: dict, sample: dict, lam, sigma, bar) -> None:
        cell["samples"][sample["index"]] = sample
        self.unsaved = True
        bar.set_postfix(lam=lam, sigma=f"{sigma:g}", radius=f"{sample['radius']:.2f}")
        bar.update(1)
