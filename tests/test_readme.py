"""Every code block of the README runs as written: the Python tour is executed, every nrpm command line of the
shell blocks is parsed by nrpm's own parser (and, under torchrun, by torchrun's)."""

import os
import re
import shlex
from pathlib import Path

import pytest

import nrpm.functional as RF
from nrpm.cli.main import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def command_lines():
    """Each shell command of the README's bash blocks, continuations joined and comments dropped."""
    for block in blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("  #")[0].strip()
            for part in command.split("&&"):
                if "nrpm" in part:
                    yield part.strip()


def nrpm_argv(command):
    words = shlex.split(command)
    if words[0] == "torchrun":
        return words[words.index("nrpm.cli") + 1:]
    return words[next(i for i, w in enumerate(words) if w.endswith("bin/nrpm")) + 1:]


MY_NET = """
from torch import nn


def build(width=16, num_classes=10):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(width * 32 * 32, num_classes))
"""


def test_the_readme_has_its_blocks():
    assert len(blocks("python")) >= 1 and len(list(command_lines())) >= 10


@pytest.mark.parametrize("command", [c for c in command_lines() if "pip install" not in c] +
                         [c.split("&&")[-1] for c in blocks("bash")[0].splitlines() if "nrpm" in c.split("&&")[-1]])
def test_every_readme_command_parses(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_net.py").write_text(MY_NET)  # the README's bring-your-own example names this file
    args = build_parser().parse_args(nrpm_argv(command))
    assert callable(args.func)
    if command.startswith("torchrun"):
        run = pytest.importorskip("torch.distributed.run")
        parsed = run.get_args_parser().parse_args(shlex.split(command)[1:])
        assert parsed.training_script_args == nrpm_argv(command)


def tour(samples: int | None = None, steps: int | None = None) -> str:
    code = blocks("python")[0]
    if samples is not None:  # the same code on fewer images and steps, fast enough for every test run
        code = code.replace("x[:100], y[:100]", f"x[:{samples}], y[:{samples}]").replace("steps=20", f"steps={steps}")
    return code


def run_tour(code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the tour saves lenet_lam.pt into the working folder
    backend = RF.get_backend()
    RF.set_backend("eager")
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        RF.set_backend(backend)
    size = os.path.getsize(tmp_path / "lenet_lam.pt")
    assert 1500 <= size <= 2500  # "about 2 kB"
    return capsys.readouterr().out


def test_the_api_tour_runs(tmp_path, monkeypatch, capsys, shared_dir):
    out = run_tour(tour(samples=6, steps=2), tmp_path, monkeypatch, capsys)
    assert "trainable params: 0 || all params: 21,840" in out


@pytest.mark.slow
def test_the_api_tour_runs_as_written(tmp_path, monkeypatch, capsys, shared_dir):
    plain, clean, robust = map(float, run_tour(tour(), tmp_path, monkeypatch, capsys).splitlines()[-1].split())
    assert robust <= clean and plain > 0.9
