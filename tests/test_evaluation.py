"""nrpm eval end to end on a tiny subset: outputs, resume, and clear errors."""

import csv
import json
import re

import pytest

import nrpm.attacks as A
from nrpm import cli
from nrpm.evaluation import EvalSettings, run_eval
from nrpm.runs import RunContext


def _run(settings, out, **kw):
    return run_eval(settings, RunContext(out, "eval", progress=False, **kw))


def _settings(**kw):
    base = dict(model="mlp3", lams=[1.0, 0.5], K=1, eps=1e-3, attack="fgsm", budgets=[0.0, 0.1], n_samples=40,
                batch_size=20)
    base.update(kw)
    return EvalSettings(**base)


def test_eval_writes_all_outputs_and_matches_direct_computation(shared_dir, tmp_path):
    result = _run(_settings(), tmp_path)
    for name in ("results.json", "results.csv", "table.md", "accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["cells"]) == 4 and saved["settings"]["model"] == "mlp3"
    assert saved["versions"]["torch"]
    cells = {(c["lam"], c["budget"]): c["accuracy"] for c in saved["cells"]}
    # the first 40 MNIST test images: plain mlp3 gets some wrong, FGSM 0.1 breaks most of the rest
    assert 0.8 <= cells[(1.0, 0.0)] <= 1.0
    assert cells[(1.0, 0.1)] < cells[(1.0, 0.0)]
    assert "| lam | clean | 0.1 |" in result["table"]
    assert (tmp_path / "table.md").read_text().startswith("# mlp3, attack fgsm")


def test_a_clean_only_table_names_no_attack(shared_dir, tmp_path):
    _run(_settings(budgets=[0.0], lams=[1.0]), tmp_path)
    assert (tmp_path / "table.md").read_text().startswith("# mlp3, clean accuracy\n")


def test_resume_skips_finished_cells(shared_dir, tmp_path, monkeypatch):
    _run(_settings(lams=[1.0]), tmp_path)
    calls = []
    real = A.robust_accuracy
    # where the counting helper (nrpm.attacks.accuracy.sharded_correct_count) looks it up
    monkeypatch.setattr(A.accuracy, "robust_accuracy", lambda model, attack, *a, **k: calls.append(id(attack)) or
                        real(model, attack, *a, **k))
    _run(_settings(lams=[1.0, 0.5]), tmp_path)
    assert len(set(calls)) == 1  # one attack, one cell: only (lam 0.5, budget 0.1) is new; (1.0, 0.1) was resumed
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {(c["lam"], c["budget"]) for c in saved["cells"]} == {(1.0, 0.0), (1.0, 0.1), (0.5, 0.0), (0.5, 0.1)}


def test_resume_with_other_settings_is_refused(shared_dir, tmp_path):
    _run(_settings(lams=[1.0], budgets=[0.0]), tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        _run(_settings(lams=[1.0], budgets=[0.0], K=2), tmp_path)


def test_cli_eval_prints_table(shared_dir, tmp_path, capsys):
    code = cli.main(["eval", "--model", "mlp3", "--lam", "1", "--K", "1", "--budgets", "0", "0.05",
                     "--n-samples", "20", "--out", str(tmp_path), "--no-progress", "--threads", "1"])
    assert code == 0
    assert "| lam | clean | 0.05 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["eval", "--model", "nosuchnet"], "unknown model 'nosuchnet'"),
    (["eval", "--model", "mlp3", "--budgets", "-0.1"], "budgets must be >= 0"),
    (["eval", "--model", "mlp3", "--lam", "1.5"], "lam values must lie in [0, 1]"),
    (["eval", "--model", "mlp3", "--attack", "nosuchattack"], "unknown attack"),
    (["eval", "--model", "mlp3", "--attack-arg", "stepz=3", "--attack", "pgd"], "stepz"),
    (["eval", "--model", "mlp2"], "no released checkpoint"),
    (["eval", "--model", "mlp3", "--threads", "0"], "--threads: must be >= 1"),
])
def test_cli_bad_input_gives_clear_error(argv, message, capsys):
    # exit 2 and one line 'nrpm eval: error: ...', whether argparse or the command finds the problem
    try:
        code = cli.main(argv + ["--no-progress", "--n-samples", "5"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("nrpm eval: error: ") and err.count("\n") == 1 and message in err


def test_cli_missing_data_names_the_path(shared_dir, tmp_path, capsys):
    code = cli.main(["eval", "--model", "mlp3", "--data-root", str(tmp_path / "nodata"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nodata" in err and "MNIST" in err


def test_results_file_keeps_cells_of_earlier_runs(shared_dir, tmp_path):
    _run(_settings(lams=[1.0], budgets=[0.0]), tmp_path)
    _run(_settings(lams=[0.5], budgets=[0.0]), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {(c["lam"], c["budget"]) for c in saved["cells"]} == {(1.0, 0.0), (0.5, 0.0)}


def test_eval_refuses_a_folder_another_run_is_writing(shared_dir, tmp_path):
    # two runs rewriting one results.json from their own cells would drop each other's: refused, file untouched
    from nrpm._io import output_dir_lock

    with output_dir_lock(tmp_path, "eval"):
        with pytest.raises(RuntimeError, match="in use by nrpm eval"):
            _run(_settings(lams=[1.0], budgets=[0.0]), tmp_path)
    assert not (tmp_path / "results.json").exists()
    _run(_settings(lams=[1.0], budgets=[0.0]), tmp_path)
    assert (tmp_path / "results.json").exists() and not (tmp_path / ".nrpm.lock").exists()


def test_cli_eval_names_the_run_that_holds_the_folder(shared_dir, tmp_path, capsys):
    from nrpm._io import output_dir_lock

    with output_dir_lock(tmp_path, "eval"):
        code = cli.main(["eval", "--model", "mlp3", "--lam", "1", "--budgets", "0", "--n-samples", "4",
                         "--out", str(tmp_path), "--no-progress", "--threads", "1"])
    assert code == 2
    assert "is in use by nrpm eval (pid" in capsys.readouterr().err


def test_every_output_holds_every_cell_on_file(shared_dir, tmp_path):
    # a partial rerun into the folder: csv, table.md and the plot show the earlier cells too, not only the new ones
    _run(_settings(lams=[1.0], budgets=[0.0]), tmp_path)
    _run(_settings(lams=[0.5], budgets=[0.0, 0.1]), tmp_path)
    with open(tmp_path / "results.csv", newline="") as f:
        rows = {(float(r["lam"]), float(r["budget"])) for r in csv.DictReader(f)}
    assert rows == {(1.0, 0.0), (0.5, 0.0), (0.5, 0.1)}
    table = (tmp_path / "table.md").read_text()
    assert "| lam | clean | 0.1 |" in table and "| 0.5 | " in table
    assert re.search(r"\| 1 \| [0-9.]+ \| … \|", table)  # (1, 0.1) was never evaluated


def test_an_interrupted_run_leaves_every_output_of_its_finished_cells(shared_dir, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(A.accuracy, "robust_accuracy", interrupted)  # the clean cell finishes, the attacked one is cut
    with pytest.raises(KeyboardInterrupt):
        _run(_settings(lams=[1.0], budgets=[0.0, 0.1]), tmp_path)
    for name in ("results.json", "results.csv", "table.md", "accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(json.loads((tmp_path / "results.json").read_text())["cells"]) == 1
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 2  # header + the finished cell
    assert re.search(r"\| 1 \| [0-9.]+ \|", (tmp_path / "table.md").read_text())


def _tensors_file(path, n=200):
    import torch

    torch.save({"x": torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
                "y": torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))}, path)
    return path


def test_a_changed_checkpoint_at_the_same_path_is_refused_naming_it(tmp_path, capsys):
    # the resume is keyed on what the checkpoint holds: new weights at the old path must not print old numbers
    import torch

    from nrpm.models import create_model

    checkpoint, data = tmp_path / "weights.pt", _tensors_file(tmp_path / "data.pt", 16)
    argv = ["eval", "--model", "mlp3", "--checkpoint", str(checkpoint), "--data", f"tensors:{data}",
            "--n-samples", "16", "--lam", "1", "--K", "1", "--budgets", "0", "--no-progress", "--threads", "1",
            "--out", str(tmp_path / "out")]
    torch.manual_seed(0)
    torch.save(create_model("mlp3").state_dict(), checkpoint)
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0  # the same file: resumed
    torch.manual_seed(1)
    torch.save(create_model("mlp3").state_dict(), checkpoint)  # re-initialised, same path
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nrpm eval: error: ") and err.count("\n") == 1
    assert "holds results of other settings (checkpoint_sha256: 'sha256:" in err and "--overwrite" in err


def test_a_tensors_file_without_n_samples_is_evaluated_whole_and_the_count_said(tmp_path, capsys):
    data = _tensors_file(tmp_path / "data.pt", 200)  # fewer than the 1000 a named dataset defaults to
    code = cli.main(["eval", "--model", "mlp3", "--checkpoint", "none", "--data", f"tensors:{data}", "--lam", "1",
                     "--K", "1", "--budgets", "0", "--no-progress", "--threads", "1", "--out", str(tmp_path / "out")])
    assert code == 0
    assert "all 200 samples of the file" in capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["cells"][0]["n"] == 200 and saved["cell_key"]["n_samples"] == 200


def test_a_whole_pickled_model_as_checkpoint_is_named_with_the_fix(tmp_path, capsys):
    import torch

    from nrpm.models import create_model

    torch.save(create_model("mlp3"), tmp_path / "whole.pt")
    code = cli.main(["eval", "--model", "mlp3", "--checkpoint", str(tmp_path / "whole.pt"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "\x1b" not in err
    assert "holds a whole pickled model" in err and "torch.save(model.state_dict(), PATH)" in err


def test_eval_never_writes_into_another_commands_folder(tmp_path, capsys):
    (tmp_path / "nrpm-run.json").write_text(json.dumps({"format": "nrpm-run/1", "command": "audit"}))
    data = _tensors_file(tmp_path / "data.pt", 8)
    code = cli.main(["eval", "--model", "mlp3", "--checkpoint", "none", "--data", f"tensors:{data}", "--lam", "1",
                     "--K", "1", "--budgets", "0", "--no-progress", "--threads", "1", "--out", str(tmp_path)])
    assert code == 2 and "holds the results of nrpm audit, not of nrpm eval" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_library_errors_name_arguments_and_the_cli_says_its_flags(capsys):
    from nrpm.cli.args import with_flags
    from nrpm.evaluation import prepare_model

    with pytest.raises(ValueError) as error:
        prepare_model(EvalSettings(model="mlp3", checkpoint="none", lams=["trained"]))
    assert "reprogramming=FILE" in str(error.value) and "--" not in str(error.value)
    assert "give --reprogramming FILE or a paradigm-3 model.pt as --checkpoint FILE" in with_flags(str(error.value))
    assert with_flags("/runs/model=3 and --model-arg width=2") == "/runs/model=3 and --model-arg width=2"
