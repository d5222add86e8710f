"""The training loop: :func:`run_training` sets a run up (or resumes it), trains epoch by epoch with a
checkpoint after each, then writes the summary and the optional test evaluations.

The state of a run lives in one :class:`_Run` so that each stage is a short method. What must stay exact for a
resume is the order of random draws: the model is initialised from ``config.seed``; every epoch draws, from
the run's own generator and in this order, the training order, then per batch the augmentation and the PGD
random start; the global RNGs (dropout) are per rank and saved with every checkpoint.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as D
from .. import distributed as dist
from ..functional import sustained_work
from ..models import inner_model
from ..provenance import versions
from ..reprogram import robust_layers
from ..runs import RunContext, differences, run_folder
from ..validation import check_positive
from .adversarial import adversarial_examples, validation_attack
from .artifacts import (CHECKPOINT_NAME, RUN_FORMAT, artifact_names, check_writable, epoch_line,
                        log_tensorboard, open_tensorboard, read_checkpoint, write_artifacts, write_checkpoint,
                        write_logs, write_run_json)
from .config import REPROGRAMMING_FIELDS, TestSettings, TrainConfig
from .evaluate import evaluate_split, run_test
from .sources import load_test_data, test_spec, training_spec
from .setup import (build_model, is_batchnorm, lam_values, load_train_data, make_optimizer, make_scheduler,
                    rng_state, seed_rank, set_rng_state, set_train_modes)

__all__ = ["run_training", "TrainOptions"]


@dataclass(frozen=True)
class TrainOptions:
    """How a training run is carried out, besides its config (none of it changes the trained numbers).

    device: "auto", "cpu", "cuda", "cuda:1", ... (under torchrun each rank takes its local GPU).
    resume: True (the output folder's checkpoint.pt, which must exist), "auto" (that file if it exists, else
    start), or a checkpoint path; refused when it was written for other settings. Without resume an existing
    checkpoint in the folder is an error unless the run context says ``overwrite``.
    max_minutes: budget of optimisation time (summed over resumes; per-epoch validation and checkpointing not
    counted); the run stops at the epoch boundary before the first epoch that would end past it.
    tensorboard: also log to TensorBoard (if installed).
    tests: evaluation(s) of the final model on the test split, written to ``test_<attack>.json/.md``.
    step_hook(epoch, step): called after every optimiser step (for tests and custom monitoring).
    """

    device: str = "auto"
    resume: bool | str | os.PathLike | None = None
    max_minutes: float | None = None
    tensorboard: bool = False
    tests: Sequence[TestSettings] = ()
    step_hook: Callable[[int, int], None] | None = None


def run_training(config: TrainConfig, ctx: RunContext | str | os.PathLike, *, model: nn.Module | None = None,
                 data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 options: TrainOptions | None = None) -> dict:
    """Train (or resume) the run ``config`` into the run context's folder; returns the summary also written to
    run.json. ``ctx``: a :class:`nrpm.runs.RunContext` (folder, overwrite, progress, log), or just the folder.

    model / data / test_data: a ready model (plain, or reprogrammed with learnable lam) and the training split
    (x, y) / test split, instead of the registry model and dataset named by ``config``. ``options``: see
    :class:`TrainOptions`. Under torchrun every rank calls this; only rank 0 prints and writes. Paradigms 2 and 3
    warn (UserWarning) when ``config.lam`` is exactly 0 or 1, which the learnable lam (a logit) cannot
    represent: it starts just inside (0, 1) instead.
    """
    options = options or TrainOptions()
    if not isinstance(ctx, RunContext):
        ctx = RunContext(Path(ctx), "reprogram" if config.paradigm else "train")
    per_rank = dist.per_rank_batch_size(config.batch_size, dist.env_world_size())  # before joining any group
    info = dist.init_from_env(options.device)
    ctx = ctx.joined()
    max_minutes = None if options.max_minutes is None else check_positive(options.max_minutes, "max minutes")
    tests = [options.tests] if isinstance(options.tests, TestSettings) else list(options.tests)
    check_writable(ctx.out)
    with run_folder(ctx), sustained_work():  # many steps: the kernels compile at every batch size
        saved, resume_path = _checkpoint_to_resume(config, ctx.out / CHECKPOINT_NAME, options.resume, ctx.overwrite)
        run = _Run(config, ctx.out, info, per_rank, ctx.log, progress=ctx.progress, step_hook=options.step_hook)
        run.build(model, data, starting=saved is None)
        run.check_test_data(tests, test_data)
        if saved is not None:
            run.restore(saved, resume_path)
        else:
            seed_rank(config.seed, info.rank)
        run.wrap_for_processes()
        run.open_logs(options.tensorboard)
        run.announce()
        stopped = run.train(max_minutes)
        run.close_logs()
        summary = run.summary(stopped, max_minutes)
        run.test(tests, test_data, summary)
        if ctx.writes:
            write_run_json(ctx.out, summary)
        dist.barrier()
        return summary


def _is_cifar(config: TrainConfig, model: nn.Module, data) -> bool:
    """Whether the training data is CIFAR-10 / -100, which augmentation (random crop + flip) is on for by default."""
    if data is None:
        dataset = D.parse_data_spec(training_spec(config, model)).dataset
    else:  # the caller's own samples: only a ready model's dataset attribute says what they are
        dataset = getattr(inner_model(model), "dataset", None)
    return dataset in ("cifar10", "cifar100")


def _checkpoint_to_resume(config: TrainConfig, ckpt_path: Path, resume, overwrite: bool):
    """(saved checkpoint, its path) to continue from, or (None, None) to start; refuses a checkpoint of other
    settings, and starting over an existing run without ``overwrite``."""
    if resume == "auto" and not ckpt_path.exists():
        resume = None  # "auto": continue the run in out_dir if there is one, else start it
    if not resume:
        if ckpt_path.exists() and not overwrite:
            raise ValueError(f"{ckpt_path} exists: pass resume (--resume) to continue that run, or overwrite "
                             f"(--overwrite) to start again")
        return None, None
    resume_path = ckpt_path if resume is True or resume == "auto" else Path(resume)
    if not resume_path.is_file():
        raise FileNotFoundError(f"nothing to resume: {resume_path} does not exist")
    saved = read_checkpoint(resume_path)
    diff = differences(_relevant(saved["identity"], config), config.identity())
    if diff == [f"epochs: {saved['identity'].get('epochs')!r} on file, {config.epochs!r} now"]:
        raise ValueError(f"{resume_path} is a run planned for {saved['identity'].get('epochs')} epochs with a "
                         f"cosine schedule, whose learning rate depends on the number of epochs, so it cannot be "
                         f"continued to {config.epochs} exactly: start again (overwrite) with {config.epochs} epochs, "
                         f"or train with a constant or step schedule, which a resume extends")
    if diff:
        raise ValueError(f"resume file {resume_path} was written for other settings (model or config): "
                         + "; ".join(diff))
    return saved, resume_path


def _relevant(identity: dict, config: TrainConfig) -> dict:
    """A checkpoint's identity without the fields that do not apply to ``config`` (checkpoints of plain training
    runs written before paradigm 0 left the reprogramming's fields out of its identity still hold them)."""
    if config.paradigm != 0:
        return identity
    return {k: v for k, v in identity.items() if k not in REPROGRAMMING_FIELDS}


class _Run:
    """One training run in this process: the model (``raw``, and ``model``, its DDP wrapper under torchrun),
    optimiser, data and progress (``epoch``, ``history``, optimisation and wall seconds)."""

    def __init__(self, config: TrainConfig, out: Path, info: dist.DistInfo, per_rank: int, say, *,
                 progress: bool, step_hook):
        self.config, self.out, self.info, self.per_rank, self.say = config, out, info, per_rank, say
        self.progress, self.step_hook = progress, step_hook
        self.history: list[dict] = []
        self.epoch, self.train_seconds, self.wall_seconds = 0, 0.0, 0.0
        self.writer = None

    # ---------------------------------------------------------------------------------------- setup
    def build(self, model: nn.Module | None, data, *, starting: bool) -> None:
        config = self.config
        torch.manual_seed(config.seed)  # model init (checkpoint 'none') is the same on every rank
        built = build_model(config, model, starting=starting)
        model, self.model_info, self.model_description = built.model, built.checkpoint_info, built.model_info
        self.x_train, self.y_train, self.x_val, self.y_val = load_train_data(config, model, data)
        self.augment = config.augment if config.augment is not None else _is_cifar(config, model, data)
        self.bn_eval = config.bn_eval()
        self.raw = self.model = model.to(self.info.device)
        self.optimizer = make_optimizer(config, self.raw)
        self.scheduler = make_scheduler(config, self.optimizer)
        self.generator = torch.Generator().manual_seed(config.seed)

    def restore(self, saved: dict, source: Path) -> None:
        """Continue from a checkpoint: model, optimiser, schedule, data generator, progress and every RNG."""
        try:
            self.raw.load_state_dict(saved["model_state"])
        except RuntimeError as error:
            raise ValueError(f"resume file does not fit the model: {error}") from None
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        self.history = list(saved["history"])
        self.epoch = saved["epoch"]
        self.train_seconds, self.wall_seconds = saved["train_seconds"], saved["wall_seconds"]
        ranks = saved["rng"]
        if len(ranks) == self.info.world_size:
            set_rng_state(ranks[self.info.rank], self.info.device)
        else:
            seed_rank(self.config.seed, self.info.rank, self.epoch)
            self.say(f"note: the checkpoint holds RNG states of {len(ranks)} processes, this run has "
                     f"{self.info.world_size}: per-process RNGs (dropout) are reseeded")
        self.say(f"resuming from {source} at epoch {self.epoch}/{self.config.epochs}")

    def wrap_for_processes(self) -> None:
        """Under torchrun: DistributedDataParallel (gradient averaging), SyncBatchNorm on CUDA."""
        info = self.info
        has_train_bn = any(is_batchnorm(m) for m in self.raw.modules()) and not self.bn_eval
        if not info.distributed:
            return
        if has_train_bn and info.device.type == "cuda":
            self.raw = nn.SyncBatchNorm.convert_sync_batchnorm(self.raw)
        elif has_train_bn:
            self.say("note: BatchNorm in train mode uses per-process batch statistics on CPU (SyncBatchNorm needs "
                     "CUDA), so results differ slightly from a single process")
        ddp_kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
        self.model = nn.parallel.DistributedDataParallel(self.raw, **ddp_kwargs)

    def open_logs(self, tensorboard: bool) -> None:
        main = self.info.is_main
        self.writer = open_tensorboard(self.out, tensorboard and main, self.say) if main else None
        self.val_attack = validation_attack(self.config)
        self.val_batch = max(self.config.batch_size, 250)

    def close_logs(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def announce(self) -> None:
        if not self.info.is_main:
            return
        config, raw = self.config, self.raw
        n_trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
        what = "train" if config.paradigm == 0 else f"reprogram paradigm {config.paradigm}"
        attack = (f" eps={config.attack_eps:g} steps={config.attack_steps} alpha={config.attack_alpha:g}"
                  if config.attack != "none" else "")
        has_bn = any(is_batchnorm(m) for m in raw.modules())
        frozen_bn = ", BatchNorm frozen (eval mode)" if self.bn_eval and has_bn else ""
        per_epoch = (f"{len(self.x_train)} training images" if config.train_subset is None else
                     f"a fresh random {min(config.train_subset, len(self.x_train))} of {len(self.x_train)} training "
                     f"images per epoch")
        self.say(f"nrpm {what}: {config.model}, {n_trainable} trainable parameters, {per_epoch} / "
                 f"{len(self.x_val)} held-out images, {self.info.world_size} process(es) on {self.info.device}, "
                 f"attack {config.attack}{attack}{frozen_bn}")
        if robust_layers(raw):
            self.say("lam " + " ".join(f"{n}={v:.3f}" for n, v in lam_values(raw).items()))

    # ---------------------------------------------------------------------------------------- training
    def train(self, max_minutes: float | None) -> str:
        """Train the remaining epochs; returns why it stopped ("completed" or "time budget")."""
        while self.epoch < self.config.epochs:
            if self._out_of_time(max_minutes):
                return "time budget"
            self._train_epoch()
            dist.barrier()
        return "completed"

    def _out_of_time(self, max_minutes: float | None) -> bool:
        # decided on every rank together (max of the flags), so no rank starts an epoch the others skip
        mean_epoch = self.train_seconds / max(1, len(self.history)) if self.history else 0.0
        over = max_minutes is not None and self.history and self.train_seconds + mean_epoch > max_minutes * 60
        if dist.all_reduce_max(1.0 if over else 0.0) > 0:
            self.say(f"stopping before epoch {self.epoch + 1}: {self.train_seconds / 60:.2f} of {max_minutes:g} "
                     f"minutes of optimisation used, an epoch takes about {mean_epoch / 60:.2f}")
            return True
        return False

    def _train_epoch(self) -> None:
        from tqdm.auto import tqdm

        config = self.config
        wall_start = time.perf_counter()
        order = torch.randperm(len(self.x_train), generator=self.generator)
        if config.train_subset is not None:
            order = order[:config.train_subset]
        n_steps = len(order) // config.batch_size  # the last incomplete batch is dropped
        lr_now = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(total=n_steps, disable=not (self.progress and self.info.is_main),
                   desc=f"epoch {self.epoch + 1}/{config.epochs}", unit="step", leave=False)
        totals = torch.zeros(3, dtype=torch.float64)  # summed loss, correct, samples
        step_start = time.perf_counter()
        for step in range(n_steps):
            loss, counts = self._step(order[step * config.batch_size:(step + 1) * config.batch_size])
            totals += counts
            self._show_progress(bar, loss)
            if self.step_hook is not None:
                self.step_hook(self.epoch, step)
        bar.close()
        step_seconds = dist.all_reduce_max(time.perf_counter() - step_start)
        totals = dist.all_reduce_sum(totals)
        self.train_seconds += step_seconds
        self.scheduler.step()
        self._end_epoch(lr_now, totals, step_seconds, wall_start)

    def _local_batch(self, idx: torch.Tensor):
        """This rank's share of the global batch ``idx``: (x, y, random-start noise or None), on its device.

        Augmentation and noise are drawn for the whole global batch, so they do not depend on the world size."""
        config, info = self.config, self.info
        xb, yb = self.x_train[idx], self.y_train[idx]
        if self.augment:
            xb = D.random_crop_flip(xb, 4, generator=self.generator)
        noise = None
        if config.attack != "none" and config.random_start:
            noise = (2 * torch.rand(xb.shape, generator=self.generator, dtype=xb.dtype) - 1) * config.attack_eps
        lo, hi = info.rank * self.per_rank, (info.rank + 1) * self.per_rank
        return xb[lo:hi].to(info.device), yb[lo:hi].to(info.device), None if noise is None else noise[lo:hi]

    def _step(self, idx: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One optimiser step on the global batch ``idx``; returns (loss, [summed loss, correct, samples])."""
        config = self.config
        x_clean, y, noise = self._local_batch(idx)
        x = x_clean
        if config.attack != "none":
            x = adversarial_examples(self.raw, x_clean, y, attack=config.attack, eps=config.attack_eps,
                                     steps=config.attack_steps, alpha=config.attack_alpha, noise=noise)
        set_train_modes(self.raw, self.bn_eval)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if config.clean_weight > 0:
            w = config.clean_weight
            loss = w * F.cross_entropy(self.model(x_clean), y) + (1 - w) * loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        counts = torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)],
                              dtype=torch.float64)
        return loss.item(), counts

    def _show_progress(self, bar, loss: float) -> None:
        if self.info.is_main and self.progress:
            post = {"loss": f"{loss:.3f}"}
            if robust_layers(self.raw):
                lams = list(lam_values(self.raw).values())
                post["lam"] = f"{min(lams):.3f}..{max(lams):.3f}" if len(lams) > 1 else f"{lams[0]:.3f}"
            bar.set_postfix(post)
        bar.update(1)

    def _end_epoch(self, lr: float, totals: torch.Tensor, step_seconds: float, wall_start: float) -> None:
        """Validate, record the epoch's row and (rank 0) save the checkpoint, artifacts and logs."""
        val_clean = val_robust = None
        if len(self.x_val):
            val_clean, val_robust = evaluate_split(self.raw, self.x_val, self.y_val, self.val_attack, self.val_batch)
        self.epoch += 1
        samples = max(totals[2].item(), 1)
        row = {"epoch": self.epoch, "lr": lr, "train_loss": totals[0].item() / samples,
               "train_acc": totals[1].item() / samples, "val_clean": val_clean,
               "val_robust": val_robust, "lam": lam_values(self.raw), "samples": int(totals[2].item()),
               "step_seconds": round(step_seconds, 3)}
        rng = dist.all_gather_object(rng_state(self.info.device))  # every rank's RNG states, saved by rank 0
        epoch_wall = dist.all_reduce_max(time.perf_counter() - wall_start)
        self.wall_seconds += epoch_wall
        row.update(epoch_seconds=round(epoch_wall, 3), train_seconds=round(self.train_seconds, 3),
                   wall_seconds=round(self.wall_seconds, 3))
        self.history.append(row)
        if self.info.is_main:
            self._save(row, rng)

    def _save(self, row: dict, rng: list) -> None:
        write_checkpoint(self.out / CHECKPOINT_NAME, self.config, self.raw, epoch=self.epoch,
                         optimizer=self.optimizer, scheduler=self.scheduler, generator=self.generator, rng=rng,
                         history=self.history, train_seconds=self.train_seconds, wall_seconds=self.wall_seconds,
                         world_size=self.info.world_size)
        write_artifacts(self.out, self.config, self.raw, self.epoch)
        write_logs(self.out, self.history)
        if self.writer is not None:
            log_tensorboard(self.writer, row, self.epoch)
        self.say(epoch_line(self.config, row))

    # ---------------------------------------------------------------------------------------- results
    def summary(self, stopped: str, max_minutes: float | None) -> dict:
        config, info, raw = self.config, self.info, self.raw
        return {"format": RUN_FORMAT, "config": config.to_dict(), "epochs_done": self.epoch,
                "stopped": stopped, "train_seconds": round(self.train_seconds, 3),
                "wall_seconds": round(self.wall_seconds, 3), "max_minutes": max_minutes,
                "final": self.history[-1] if self.history else None,
                "lam": lam_values(raw) if robust_layers(raw) else None,
                "artifacts": [] if self.epoch == 0 else artifact_names(config),
                "checkpoint_info": {k: v for k, v in self.model_info.items() if isinstance(v, (str, int, float))},
                "model_info": self.model_description,
                "versions": versions(world_size=info.world_size, backend=info.backend, device=str(info.device)),
                "tests": {}}

    def check_test_data(self, tests: list[TestSettings], test_data) -> None:
        """Refuse a final test without data before training rather than after it."""
        if tests and test_data is None and test_spec(self.config, self.raw) is None:
            raise ValueError(f"model {self.config.model!r} names no dataset, so the final test (--test-attack) has "
                             f"no data: give --data (or test_data=(x, y))")

    def test(self, tests: list[TestSettings], test_data, summary: dict) -> None:
        """Run the final test evaluations into ``summary["tests"]`` (and their files)."""
        config = self.config
        if tests and test_data is None:
            test_data = load_test_data(config, self.raw, max(settings.n_samples for settings in tests))
        row_name = {0: f"{config.model} trained", 2: f"{config.model} paradigm 2",
                    3: f"{config.model} paradigm 3"}[config.paradigm]
        for settings in tests:
            res = run_test(self.raw, settings, test_data, config.seed, self.out, self.info.is_main, self.say,
                           {"row": row_name, "epochs_done": self.epoch})
            summary["tests"][settings.label()] = {"table": res["table"], "cells": res["cells"]}
