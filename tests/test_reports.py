"""nrpm.reports: the shared reader of resumable results files."""

import pytest

from nrpm import reports


def test_read_results_file_returns_none_without_a_file_and_the_object_with_one(tmp_path):
    path = tmp_path / "results.json"
    assert reports.read_results_file(path, "fmt/1", "a results file", "fix it") is None
    reports.write_json(path, {"format": "fmt/1", "cells": []})
    assert reports.read_results_file(path, "fmt/1", "a results file", "fix it") == {"format": "fmt/1", "cells": []}


@pytest.mark.parametrize("text, message", [("{not json", "is not valid JSON"),
                                           ('{"format": "other/1"}', "is not a results file (format 'fmt/1')"),
                                           ("[1, 2]", "is not a results file")])
def test_read_results_file_names_the_file_and_the_fix_for_a_foreign_file(tmp_path, text, message):
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        reports.read_results_file(path, "fmt/1", "a results file", "use another --out")
    assert str(path) in str(error.value) and message in str(error.value) and "use another --out" in str(error.value)
