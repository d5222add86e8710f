"""Scale-out: every documented flag passes through torchrun, and certify / eval on 2 gloo processes give the
results of one process, also when a run killed on 2 ranks is resumed on 1."""

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nrpm.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]

FACTORY = textwrap.dedent('''
    """A tiny model for the scale-out tests; with KILL_RANK set, that rank SIGKILLs itself after KILL_AFTER
    forward passes (a rank dying mid-run, as an out-of-memory kill would)."""
    import os
    import signal

    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if os.environ.get("KILL_RANK") == os.environ.get("RANK", "0") and \\
                    self.calls > int(os.environ.get("KILL_AFTER", "0")):
                os.kill(os.getpid(), signal.SIGKILL)
            return self.net(x)


    def tiny():
        return Tiny()
''')


def torchrun_parser():
    run = pytest.importorskip("torch.distributed.run")
    return run.get_args_parser()


def documented_flags():
    """(command, flag) for every long option of every nrpm command."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return [(name, opt) for name, sub in commands.items() for action in sub._actions
            for opt in action.option_strings if opt.startswith("--") and opt != "--help"]


# One-process short forms that torchrun would read as its own options; each has a long name that passes.
ONE_PROCESS_ONLY = {("certify", "--n")}


def test_every_documented_flag_passes_through_torchrun():
    refused = []
    for command, flag in documented_flags():
        if (command, flag) in ONE_PROCESS_ONLY:
            continue
        argv = [command, flag, "1"]
        try:
            parsed = torchrun_parser().parse_args(["--standalone", "--nproc_per_node=2", "-m", "nrpm.cli", *argv])
        except SystemExit:
            refused.append((command, flag))
            continue
        if parsed.training_script_args != argv:
            refused.append((command, flag))
    assert not refused, refused


def test_certify_names_its_noise_count_so_that_torchrun_passes_it():
    parsed = torchrun_parser().parse_args(["--nproc_per_node=2", "-m", "nrpm.cli", "certify", "--noise-samples", "9"])
    assert parsed.training_script_args == ["certify", "--noise-samples", "9"]
    args = build_parser().parse_args(["certify", "--model", "lenet", "--n", "9"])
    assert args.n == 9  # the short form still works in one process


# ------------------------------------------------------------------------------------------------ 2 processes
@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    """A factory file and a tensors file of 10 samples."""
    root = tmp_path_factory.mktemp("scaleout")
    (root / "tiny_factory.py").write_text(FACTORY)
    g = torch.Generator().manual_seed(3)
    torch.save({"x": torch.rand(10, 1, 4, 4, generator=g), "y": torch.randint(0, 3, (10,), generator=g)},
               root / "data.pt")
    return root


def nrpm_run(byo, command_argv, out, nproc=1, env=None):
    """Run nrpm in a subprocess (torchrun with ``nproc`` > 1); returns the CompletedProcess."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                "nrpm.cli"] if nproc > 1 else [sys.executable, "-m", "nrpm.cli"]
    model = ["--model", f"{byo / 'tiny_factory.py'}:tiny", "--checkpoint", "none", "--data",
             f"tensors:{byo / 'data.pt'}", "--threads", "1", "--no-progress", "--out", str(out)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **(env or {})}
    for name in ("KILL_RANK", "KILL_AFTER", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if env is None or name not in env:
            full_env.pop(name, None)
    return subprocess.run(launcher + command_argv + model, capture_output=True, text=True, env=full_env,
                          timeout=300)


CERTIFY = ["certify", "--lam", "1", "0.5", "--K", "1", "--sigma", "0.25", "--n0", "10", "--noise-samples", "60",
           "--n-samples", "10"]


def cells(out, name="results.json"):
    return json.loads((out / name).read_text())["cells"]


def test_certify_on_two_processes_equals_one_and_resumes_after_a_killed_rank(byo):
    one = nrpm_run(byo, CERTIFY, byo / "certify1")
    assert one.returncode == 0, one.stderr
    two = nrpm_run(byo, CERTIFY, byo / "certify2", nproc=2)
    assert two.returncode == 0, two.stderr
    assert cells(byo / "certify2") == cells(byo / "certify1")
    assert not (byo / "certify2" / ".nrpm.lock").exists()

    # rank 1 dies after a few samples: torchrun stops the run; what rank 0 saved is whole and resumes on 1 process
    killed = nrpm_run(byo, CERTIFY, byo / "killed", nproc=2, env={"KILL_RANK": "1", "KILL_AFTER": "8"})
    assert killed.returncode != 0
    partial = cells(byo / "killed")
    done = sum(len(c["samples"]) for c in partial.values())
    assert 0 < done < 20
    resumed = nrpm_run(byo, CERTIFY, byo / "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {done} of 20 samples" in resumed.stderr
    assert cells(byo / "killed") == cells(byo / "certify1")


EVAL = ["eval", "--lam", "1", "0.5", "--K", "1", "--attack", "fgsm", "--budgets", "0", "0.1", "--batch-size", "4",
        "--n-samples", "10"]


def test_eval_on_two_processes_equals_one(byo):
    one = nrpm_run(byo, EVAL, byo / "eval1")
    assert one.returncode == 0, one.stderr
    two = nrpm_run(byo, EVAL, byo / "eval2", nproc=2)
    assert two.returncode == 0, two.stderr
    strip = lambda cs: sorted((c["lam"], c["budget"], c["correct"], c["n"]) for c in cs)
    assert strip(cells(byo / "eval2")) == strip(cells(byo / "eval1"))


AUDIT = ["audit", "--lam", "0.5", "--K", "1", "--budgets", "0.05", "0.1", "--steps", "5", "--restarts", "1",
         "--apgd-steps", "5", "--square-queries", "20", "--spsa-steps", "3", "--spsa-samples", "8",
         "--n-samples", "10"]


def test_the_audit_on_two_processes_equals_one(byo):
    one = nrpm_run(byo, AUDIT, byo / "audit1")
    assert one.returncode in (0, 1), one.stderr
    two = nrpm_run(byo, AUDIT, byo / "audit2", nproc=2)
    assert two.returncode == one.returncode, two.stderr
    first, second = (json.loads((byo / name / "audit.json").read_text()) for name in ("audit1", "audit2"))
    for key in ("verdict", "worst_case", "checks"):
        assert first[key] == second[key], key
    strip = lambda cells: [{k: v for k, v in c.items() if k != "seconds"} for c in cells]
    assert strip(first["cells"]) == strip(second["cells"])
    masks = lambda name: {k: c["mask"] for k, c in json.loads((byo / name / "cache.json").read_text())["cells"].items()}
    assert masks("audit1") == masks("audit2")  # per-sample results, every cell


def test_eval_with_a_per_batch_seeded_attack_on_two_processes_equals_one(byo):
    # Square (pyautoattack) seeds per batch: whole batches go round the ranks, so it sees one process's batches
    argv = ["eval", "--lam", "1", "--attack", "square", "--attack-arg", "n_queries=15", "--budgets", "0.1",
            "--batch-size", "3", "--n-samples", "10"]
    one = nrpm_run(byo, argv, byo / "sq1")
    assert one.returncode == 0, one.stderr
    two = nrpm_run(byo, argv, byo / "sq2", nproc=2)
    assert two.returncode == 0, two.stderr
    assert [c["correct"] for c in cells(byo / "sq1")] == [c["correct"] for c in cells(byo / "sq2")]
