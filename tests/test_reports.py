"""nrpm.reports and nrpm.formats: reading nrpm's tagged files back, with one-line errors naming file and fix."""

import pytest
import torch

from nrpm import formats, reports


def test_read_tagged_json_returns_the_object_and_a_missing_file_is_named(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(FileNotFoundError, match="results.json"):
        formats.read_tagged(path, "fmt/1", "a results file", "fix it")
    reports.write_json(path, {"format": "fmt/1", "cells": []})
    assert formats.read_tagged(path, "fmt/1", "a results file", "fix it") == {"format": "fmt/1", "cells": []}


@pytest.mark.parametrize("text, message", [("{not json", "is not valid JSON"),
                                           ('{"format": "other/1"}', "is not a results file (format 'fmt/1'"),
                                           ("[1, 2]", "is not a results file")])
def test_read_tagged_names_the_file_and_the_fix_for_a_foreign_file(tmp_path, text, message):
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        formats.read_tagged(path, "fmt/1", "a results file", "use another --out")
    assert str(path) in str(error.value) and message in str(error.value) and "use another --out" in str(error.value)


def test_write_tagged_round_trips_and_names_a_known_other_format(tmp_path):
    path = tmp_path / "model.pt"
    formats.write_tagged(path, {"format": formats.MODEL_FORMAT, "state_dict": {"w": torch.ones(2)}})
    assert torch.equal(formats.read_tagged(path, formats.MODEL_FORMAT, "a model file")["state_dict"]["w"],
                       torch.ones(2))
    with pytest.raises(ValueError, match="it is a trained model file"):
        formats.read_tagged(path, formats.CHECKPOINT_FORMAT, "an nrpm training checkpoint")
    with pytest.raises(ValueError, match="'format' tag"):
        formats.write_tagged(tmp_path / "x.pt", {"w": torch.ones(1)})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind


def test_a_whole_pickled_model_is_named_as_such_not_as_corrupt(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)
    with pytest.raises(ValueError) as error:
        formats.read_torch_file(path, "checkpoint")
    message = str(error.value)
    assert message.startswith(f"checkpoint {path} holds a whole pickled model")
    assert "model.state_dict()" in message and "corrupt" not in message
    assert "\x1b" not in message and "\n" not in message
