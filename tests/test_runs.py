"""The run skeleton (nrpm.runs): folder claims, identities, results files, ranks, content digests."""

import json

import pytest

from nrpm.runs import (MARKER, ResultsFile, RunContext, RunRefused, claim_folder, differences, file_digest,
                       folder_owner, resumable, run_folder)


def ctx(tmp_path, command="eval", **kw):
    return RunContext(tmp_path, command, progress=False, log=lambda m: None, **kw)


def test_a_folder_is_claimed_for_its_command_and_refused_to_another(tmp_path):
    with run_folder(ctx(tmp_path, "audit")):
        pass
    assert json.loads((tmp_path / MARKER).read_text())["command"] == "audit"
    with pytest.raises(RunRefused, match=r"holds the results of nrpm audit, not of nrpm eval.*--out"):
        with run_folder(ctx(tmp_path, "eval")):
            pass
    with run_folder(ctx(tmp_path, "audit")):  # its own command may come back
        pass


def test_train_and_reprogram_share_a_folder_family(tmp_path):
    claim_folder(tmp_path, "train")
    claim_folder(tmp_path, "reprogram")  # the checkpoint's own identity decides whether it may continue


def test_folders_written_before_the_marker_are_recognised_by_their_files(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"format": "nrpm-certify/1"}))
    assert folder_owner(tmp_path) == "certify"
    with pytest.raises(RunRefused, match="nrpm certify, not of nrpm eval"):
        claim_folder(tmp_path, "eval")
    other = tmp_path / "train"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"format": "nrpm-train-run/1"}))
    with pytest.raises(RunRefused, match="nrpm train, not of nrpm audit"):
        claim_folder(other, "audit")


def test_a_results_file_of_other_settings_is_refused_naming_each_difference(tmp_path):
    with resumable(ctx(tmp_path), "results.json", fmt="nrpm-x/1", identity={"K": 1, "seed": 0}, what="x") as f:
        assert f.previous() is None
        f.write({"cells": [1, 2]})
    with resumable(ctx(tmp_path), "results.json", fmt="nrpm-x/1", identity={"K": 1, "seed": 0}, what="x") as f:
        assert f.previous()["cells"] == [1, 2]
    with pytest.raises(RunRefused, match=r"other settings \(K: 1 on file, 3 now\).*--overwrite"):
        with resumable(ctx(tmp_path), "results.json", fmt="nrpm-x/1", identity={"K": 3, "seed": 0}, what="x") as f:
            f.previous()
    with resumable(ctx(tmp_path, overwrite=True), "results.json", fmt="nrpm-x/1", identity={"K": 3}, what="x") as f:
        assert f.previous() is None  # overwrite: the earlier run is not read


def test_a_results_file_of_another_format_or_damaged_is_refused(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(RunRefused, match="not valid JSON"):
        ResultsFile(ctx(tmp_path), "results.json", fmt="nrpm-x/1", identity={}, what="x").previous()
    (tmp_path / "results.json").write_text(json.dumps({"format": "nrpm-y/1"}))
    with pytest.raises(RunRefused, match="is not an x file"):
        ResultsFile(ctx(tmp_path), "results.json", fmt="nrpm-x/1", identity={}, what="an x file").previous()


def test_only_the_main_rank_writes(tmp_path):
    worker = RunContext(tmp_path, "eval", rank=1, world_size=2)
    assert not worker.writes
    with run_folder(worker):
        ResultsFile(worker, "results.json", fmt="nrpm-x/1", identity={}, what="x").write({"cells": []})
    assert list(tmp_path.iterdir()) == []  # no lock, no claim, no results
    assert RunContext(None, "eval").writes is False


def test_file_digest_follows_the_contents_not_the_path(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"one")
    first = file_digest(path)
    path.write_bytes(b"two")
    assert file_digest(path) != first and file_digest(path).startswith("sha256:")
    copy = tmp_path / "copy.pt"
    copy.write_bytes(b"two")
    assert file_digest(copy) == file_digest(path)


def test_differences_name_each_setting():
    assert differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b: 2 on file, 3 now", "c: None on file, 4 now"]
    assert differences(None, {}) == []
