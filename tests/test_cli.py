"""nrpm.cli: the package layout, one exit-status convention, one-line errors, help texts.

Exit 0 on success, 1 only for an audit with a failing check, 2 for any bad input (one line
``nrpm CMD: error: ...`` naming the value or file, no traceback), 130 on Ctrl-C.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nrpm
import nrpm.attacks as A
from nrpm import cli

from cli_helpers import run, assert_usage_error

CLI_DIR = Path(cli.__file__).parent


# ------------------------------------------------------------------------------------------ package layout
def test_command_modules_import_only_args_so_there_is_no_cycle():
    for name in ("demo", "evaluate", "train", "audit"):
        tree = ast.parse((CLI_DIR / f"{name}.py").read_text())
        siblings = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert siblings <= {"args"}, (name, siblings)
        private = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 2
                   for a in node.names if a.name.startswith("_")]
        assert not private, (name, private)  # no other module's _names
    assert cli.main.__module__ == "nrpm.cli.main"  # the one entry point, re-exported by the package


def test_python_m_nrpm_cli_prints_the_version():
    proc = subprocess.run([sys.executable, "-m", "nrpm.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"nrpm {nrpm.__version__}" == "nrpm 0.1.0"


# ------------------------------------------------------------------------------------------ exit statuses
@pytest.mark.parametrize("argv,fragments", [
    (["audit", "--model", "mlp3", "--lam", "1.5"], ["lam values must lie in [0, 1]", "'1.5'"]),
    (["audit", "--model", "mlp3", "--lam", "nan"], ["lam values must lie in [0, 1]", "'nan'"]),
    (["audit", "--model", "mlp3", "--lam", "0.8", "0.7"], ["unrecognized arguments: 0.7"]),
    (["audit", "--model", "mlp3", "--batch-size", "0"], ["--batch-size: must be >= 1, got 0"]),
    (["audit", "--model", "mlp3", "--budgets", "nan"], ["budgets must be >= 0 and finite, got 'nan'"]),
    (["audit", "--model", "mlp3", "--budget-unit", "0"], ["--budget-unit: must be > 0"]),
    (["eval", "--model", "mlp3", "--budgets", "0", "nan"], ["budgets must be >= 0 and finite, got 'nan'"]),
    (["eval", "--model", "mlp3", "--budgets", "inf"], ["budgets must be >= 0 and finite, got 'inf'"]),
    (["eval", "--model", "mlp3", "--lam", "nan"], ["lam values must lie in [0, 1]"]),
    (["eval", "--model", "mlp3", "--n-samples", "0"], ["--n-samples: must be >= 1, got 0"]),
    (["eval", "--model", "mlp3", "--budget-unit", "nan"], ["--budget-unit: the value must be a finite number"]),
    (["eval", "--model", "mlp3", "--eps", "0"], ["--eps: must be > 0"]),
    (["demo", "--n-samples", "0"], ["--n-samples: must be >= 1, got 0"]),
    (["eval", "--model", "mlp3", "--device", "gpu"], ["unknown device 'gpu'", "auto, cpu, cuda or cuda:N"]),
])
def test_bad_input_exits_2_with_one_line_naming_it(argv, fragments, capsys):
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, argv[0], *fragments)


@pytest.mark.parametrize("argv,fragments", [
    (["eval", "--model", "mlp", "--checkpoint", "none"], ["unknown model 'mlp'", "did you mean", "mlp3"]),
    (["audit", "--model", "lenett", "--checkpoint", "some/file.pt"], ["unknown model 'lenett'", "lenet"]),
    (["train", "--model", "mlp33", "--checkpoint", "nowhere.pt"], ["unknown model 'mlp33'", "mlp3"]),
    (["eval", "--model", "nowhere/net.py:build", "--checkpoint", "none"], ["argument --model", "model file not found"]),
    (["audit", "--model", "models/net.txt:build"], ["argument --model", "neither a .py file nor a module name"]),
    (["eval", "--model", "mlp3", "--data", "imagenet"], ["argument --data", "unknown dataset 'imagenet'", "tensors:FILE"]),
    (["eval", "--model", "mlp3", "--model-arg", "width"], ["argument --model-arg", "wants KEY=VALUE"]),
    (["reprogram", "--model", "mlp3", "--paradigm", "1"], ["--paradigm", "paradigm 1 trains nothing"]),
    (["reprogram", "--model", "mlp3", "--paradigm", "4"], ["--paradigm", "unknown paradigm 4"]),
])
def test_a_misspelt_model_or_paradigm_is_refused_before_anything_is_written(argv, fragments, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(argv + ["--out", str(out)], capsys)
    assert_usage_error(code, err, argv[0], *fragments)
    assert not out.exists()  # refused while parsing, before a run folder or lock is made


def test_cuda_without_cuda_says_so_plainly(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(["eval", "--model", "mlp3", "--device", "cuda"], capsys)
    assert_usage_error(code, err, "eval", "CUDA is not available", "--device cpu")
    assert "LOCAL_RANK" not in err


def _write_bad_checkpoints(folder: Path) -> dict[str, Path]:
    torch.save({"w": torch.zeros(1000)}, folder / "good.pt")
    data = (folder / "good.pt").read_bytes()
    files = {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint at all", "empty": b""}
    for name, content in files.items():
        (folder / f"{name}.pt").write_bytes(content)
    return {name: folder / f"{name}.pt" for name in files}


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_an_unreadable_checkpoint_is_named_without_a_traceback(kind, tmp_path, capsys):
    path = _write_bad_checkpoints(tmp_path)[kind]
    for argv in (["eval", "--model", "mlp3", "--checkpoint", str(path)],
                 ["eval", "--model", "mlp3", "--checkpoint", "none", "--reprogramming", str(path)],
                 ["audit", "--model", "mlp3", "--checkpoint", "none", "--reprogramming", str(path)],
                 ["train", "--model", "mlp3", "--checkpoint", str(path), "--out", str(tmp_path / "run")]):
        code, _, err = run(argv + ["--no-progress"], capsys)
        assert_usage_error(code, err, argv[0], str(path))


def test_an_output_folder_that_cannot_be_written_is_named(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "results"  # a file in the way: mkdir fails the same for root, unlike a chmod
    for command in ("eval", "audit"):
        code, _, err = run([command, "--model", "mlp3", "--checkpoint", "none", "--out", str(out)], capsys)
        assert_usage_error(code, err, command, f"cannot write to the output folder {out}", "--out")


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_named(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        code, _, err = run(["eval", "--model", "mlp3", "--checkpoint", "none", "--out", str(out)], capsys)
    finally:
        out.chmod(0o700)
    assert_usage_error(code, err, "eval", f"cannot write to the output folder {out}")


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "is not valid JSON"),
    ("[]", "is not an nrpm eval results file"),
    ("null", "is not an nrpm eval results file"),
    (None, "has malformed cells"),  # a results file whose cell lost its accuracy
])
def test_a_broken_results_file_is_named_with_the_fix(content, fragment, shared_dir, tmp_path, capsys):
    argv = ["eval", "--model", "mlp3", "--K", "1", "--budgets", "0", "--n-samples", "8", "--no-progress",
            "--threads", "1", "--out", str(tmp_path)]
    results = tmp_path / "results.json"
    if content is None:
        assert run(argv, capsys)[0] == 0
        saved = json.loads(results.read_text())
        del saved["cells"][0]["accuracy"]
        content = json.dumps(saved)
    results.write_text(content)
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, "eval", str(results), fragment, "--overwrite")
    assert run(argv + ["--overwrite"], capsys)[0] == 0  # the fix it names works


def test_ctrl_c_exits_130_with_the_resume_hint(monkeypatch, tmp_path, capsys):
    import nrpm.evaluation as E

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "run_eval", interrupted)
    code, _, err = run(["eval", "--model", "mlp3", "--out", str(tmp_path)], capsys)
    assert code == 130 and err.startswith("nrpm eval: interrupted; finished cells are saved")
    code, _, err = run(["eval", "--model", "mlp3"], capsys)
    assert code == 130 and err == "nrpm eval: interrupted\n"  # nothing saved without --out: no resume hint


def test_a_closed_stdout_pipe_ends_quietly(tmp_path):
    running = tmp_path / "running"  # an unfinished audit: audit-table lists it, no audit needed
    running.mkdir()
    (running / "cache.json").write_text("{}")
    proc = subprocess.Popen([sys.executable, "-m", "nrpm.cli", "audit-table", str(running)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write, as with `| head` after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_broken_pipe_in_process_returns_0(monkeypatch, tmp_path, capsys):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    (tmp_path / "cache.json").write_text("{}")
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["audit-table", str(tmp_path)]) == 0
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ help
def _help(argv, capsys) -> str:
    code, out, _ = run(argv + ["--help"], capsys)
    assert code == 0
    return " ".join(out.split())


def test_help_shows_defaults_choices_and_one_audit_lam(capsys):
    text = _help(["eval"], capsys)
    assert "(default: 1000)" in text and "(default: fgsm)" in text and "(default: auto)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    audit = _help(["audit"], capsys)
    assert "--lam LAM one value: the lam audited" in audit and "(default: 5000)" in audit
    reprogram = _help(["reprogram"], capsys)
    assert "--paradigm {2,3}" in reprogram and "(default: 0.5)" in reprogram
    assert "(default: 1000)" in _help(["demo"], capsys)
    for command in ("eval", "audit"):  # bring your own model and data: every command that takes a model
        text = _help([command], capsys)
        assert "path/to/file.py:FACTORY" in text and "--model-arg KEY=VALUE" in text and "--normalize V" in text
        assert "tensors:FILE" in text and "imagefolder:PATH" in text and "--image-size" in text
    assert "--robustbench-json FILE" in _help(["audit"], capsys)


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out == "nrpm 0.1.0\n"


# ------------------------------------------------------------------------------------------ attacks
def test_attacks_are_torchattacks_style_objects():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    attack = A.PGD(eps=0.1)
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert 0 <= x_adv.min() and x_adv.max() <= 1


def test_eval_reprograms_with_the_chosen_estimator_and_records_it(shared_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["eval", "--model", "mlp3", "--lam", "0.5", "--K", "1", "--estimator", "huber", "--delta",
                        "0.5", "--scale", "relative", "--budgets", "0", "--n-samples", "20", "--no-progress",
                        "--out", str(out)], capsys)
    assert code == 0, err
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["estimator"] == {"norm": "huber", "gamma": 4.0, "delta": 0.5, "scale": "relative"}
    plain_l1 = tmp_path / "l1"
    run(["eval", "--model", "mlp3", "--lam", "0.5", "--K", "1", "--budgets", "0", "--n-samples", "20",
         "--no-progress", "--out", str(plain_l1)], capsys)
    assert json.loads((plain_l1 / "results.json").read_text())["settings"]["estimator"] is None


def test_bad_estimator_combinations_exit_2(capsys):
    code, _, err = run(["eval", "--model", "mlp3", "--estimator", "hm", "--gamma", "1", "--delta", "2"], capsys)
    assert_usage_error(code, err, "eval", "HM estimator needs gamma > delta")


def test_download_fetches_the_dataset_and_checkpoint_before_the_run(monkeypatch, tmp_path, capsys):
    import nrpm.data.download
    import nrpm.models.hub

    calls = []
    monkeypatch.setattr(nrpm.data.download, "ensure_dataset",
                        lambda name, root=None: calls.append(("data", name, root)) or tmp_path)
    monkeypatch.setattr(nrpm.models.hub, "ensure_pretrained", lambda name, path=None: calls.append(("ckpt", name)))
    code, _, err = run(["eval", "--model", "lenet", "--download", "--n-samples", "1", "--budgets", "0",
                        "--no-progress", "--data-root", str(tmp_path / "nowhere")], capsys)
    assert calls[:2] == [("data", "mnist", str(tmp_path / "nowhere")), ("ckpt", "lenet")]
    assert code == 2 and "nrpm eval: error:" in err  # the fake root holds no data: a clear error, not a traceback
