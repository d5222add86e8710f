"""Tests for nrpm.audit.cells: the audit's cache.json (resume down to the batch, the fingerprint that keys a run,
refusal of damaged or foreign caches, the cell keys read back) and the script that brings older caches up to date."""

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import nrpm
from nrpm import audit as AU
from nrpm.audit import run_audit
from nrpm.runs import RunContext

from audit_helpers import QUICK, make_data, reprogrammed, trained_linear, writing_to

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models (conftest.py)


@pytest.fixture(scope="module")
def samples():
    return make_data(100, 7)


def test_a_damaged_cache_is_refused_naming_the_file(samples, tmp_path):
    model = reprogrammed(trained_linear())
    x, y = samples[0][:20], samples[1][:20]
    cache = tmp_path / "cache.json"
    kwargs = dict(budgets=[0.2], steps=1, **QUICK)
    run_audit(model, x, y, AU.AuditConfig(**kwargs), writing_to(tmp_path))
    good = json.loads(cache.read_text())
    key = next(iter(good["cells"]))
    damaged = ["{not json", "", "[]", "null", json.dumps({**good, "cells": []}),
               json.dumps({**good, "cells": {**good["cells"], key: {"seconds": 0.1}}}),        # no mask
               json.dumps({**good, "cells": {**good["cells"], key: {"mask": "01", "seconds": 0.1}}})]  # too short
    for text in damaged:
        cache.write_text(text)
        with pytest.raises(ValueError, match=re.escape(str(cache)) + ".*--overwrite"):
            run_audit(model, x, y, AU.AuditConfig(**kwargs), writing_to(tmp_path))
    cache.write_text(json.dumps(good))
    assert run_audit(model, x, y, AU.AuditConfig(**kwargs), writing_to(tmp_path)).cells  # the intact cache resumes


_OLD_KEYS = ("pgd", "fgsm", "apgd-ce", "apgd-dlr", "square", "noise", "transfer", "bpda", "detached",
             "pgd-x4-steps", "pgd-x5-restarts", "pgd-half-step", "pgd-unbounded")


def test_older_caches_resume_and_only_the_new_attacks_run(samples, tmp_path, monkeypatch):
    """The cells of an audit from before C&W, SPSA and smoothed IRLS joined keep their cache keys: a full run on
    such a cache recomputes only the new cells (``survivors_only=False``: every cell on every sample, as then)."""
    model = reprogrammed(trained_linear())
    x, y = samples[0][:20], samples[1][:20]
    kwargs = dict(budgets=[0.2], compare_plain=False, autoattack=False, steps=2, apgd_steps=2, square_queries=5,
                  spsa_steps=2, spsa_samples=4, seed=0, survivors_only=False)
    config, ctx = AU.AuditConfig(**kwargs), writing_to(tmp_path)
    old = run_audit(model, x, y, config, ctx, skip_attacks=AU.OPTIONAL_ATTACKS)
    assert [c["attack"] for c in old.cells] == list(_OLD_KEYS)
    cached = json.loads((tmp_path / "cache.json").read_text())["cells"]
    assert "nrpm|square|q=5,seed=0|0.2" in cached  # the key format of older caches
    # attacks seeded per sample (their results changed with it) say so, so that older cells are not reused
    assert "nrpm|pgd|steps=2,alpha=default,restarts=1,seed=0|0.2|rng=sample" in cached
    assert "nrpm|noise|seed=0|0.2|rng=sample" in cached

    computed = []
    run_cell = AU.cells.CellRunner.attack_candidates
    monkeypatch.setattr(AU.cells.CellRunner, "attack_candidates",
                        lambda self, model, spec, *a, **kw: computed.append(spec.key)
                        or run_cell(self, model, spec, *a, **kw))
    full = run_audit(model, x, y, config, ctx)
    assert computed == ["cw", "spsa", "smoothed-eps10", "smoothed-eps100", "smoothed-k1"]
    assert [c["attack"] for c in full.cells][:9] == list(_OLD_KEYS[:9])
    assert all(full.accuracy(key, 0.2) == old.accuracy(key, 0.2) for key in _OLD_KEYS)


def test_the_cache_fingerprint_reads_lam_as_the_float32_the_layer_computes_with():
    """A fixed lam (a Python float, 0.8) and the same lam stored in float32 (0.80000001, as in caches written
    before lam had a Python copy) must fingerprint alike, or a re-audit refuses its own cache."""
    from nrpm.audit.runner import layer_info

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.8, K=1))
    assert layer_info(model)["0"]["lam"] == round(float(torch.tensor(0.8, dtype=torch.float32)), 8) == 0.80000001


def test_survivors_cells_of_an_older_cache_are_recomputed_not_reused(samples, tmp_path, monkeypatch):
    """A cell that now runs on its reference's survivors holds another number than the same attack on every sample:
    an older cache's cell of it is not reused ('|on=survivors-of-X' in the key); the white-box cells are."""
    model = reprogrammed(trained_linear())
    x, y = samples[0][:20], samples[1][:20]
    kwargs = dict(budgets=[0.2], compare_plain=False, autoattack=False, steps=2, apgd_steps=2, square_queries=5,
                  seed=0, skip_attacks=AU.OPTIONAL_ATTACKS)
    ctx = writing_to(tmp_path)
    run_audit(model, x, y, AU.AuditConfig(**kwargs, survivors_only=False), ctx)
    computed = []
    run_cell = AU.cells.CellRunner.attack_candidates
    monkeypatch.setattr(AU.cells.CellRunner, "attack_candidates",
                        lambda self, model, spec, *a, **kw: computed.append(spec.key)
                        or run_cell(self, model, spec, *a, **kw))
    new = run_audit(model, x, y, AU.AuditConfig(**kwargs), ctx)
    assert computed == ["square", "transfer", "bpda", "detached"]
    ran_on = {c["attack"]: c["ran_on"] for c in new.cells}
    assert ran_on["pgd"] == ran_on["noise"] == "clean-correct" and ran_on["bpda"] == "survivors of pgd"
    assert ran_on["square"].startswith("survivors of ")
    cached = json.loads((tmp_path / "cache.json").read_text())["cells"]
    assert any(k.startswith("nrpm|bpda|") and k.endswith("|on=survivors-of-pgd") for k in cached)


def test_an_interrupted_cell_goes_on_at_its_next_batch_with_the_same_mask(samples, tmp_path, monkeypatch):
    """cache.json keeps each finished batch of a cell in progress ('partial'): a rerun after an interruption
    attacks only the batches left, and every cell's mask is the uninterrupted run's."""
    model = reprogrammed(trained_linear())
    x, y = samples[0][:30], samples[1][:30]
    config = AU.AuditConfig(budgets=[0.2], steps=2, batch_size=7, **QUICK)
    whole = json.loads((_audited(model, x, y, config, tmp_path / "whole") / "cache.json").read_text())["cells"]

    survivors, calls = AU.cells.CellRunner._survivors, []

    def interrupted_on_third_batch(self, model, attack, index):
        calls.append(index.tolist())
        if len(calls) == 3:
            raise KeyboardInterrupt
        return survivors(self, model, attack, index)

    monkeypatch.setattr(AU.cells.CellRunner, "_survivors", interrupted_on_third_batch)
    messages = []
    with pytest.raises(KeyboardInterrupt):
        run_audit(model, x, y, config, RunContext(out=tmp_path / "cut", command="audit", progress=False,
                                                  log=messages.append))
    saved = json.loads((tmp_path / "cut" / "cache.json").read_text())
    (key, part), = saved["partial"].items()
    assert part["results"].count("-") == 30 - 14 and not saved["cells"]  # two batches of 7 kept
    n_batches = -(-part["candidates"].count("1") // 7)
    assert [m.split(" (")[0] for m in messages if "batch" in m] == \
        [f"nrpm {key.split('|')[1]} at 0.2: batch {i} of {n_batches} saved" for i in (1, 2)]

    calls.clear()
    def recorded(self, model, attack, index):
        calls.append(index.tolist())
        return survivors(self, model, attack, index)

    monkeypatch.setattr(AU.cells.CellRunner, "_survivors", recorded)
    cells = json.loads((_audited(model, x, y, config, tmp_path / "cut") / "cache.json").read_text())
    assert calls[0] == _batch(part, 2, 7)  # went on at the third batch
    assert "partial" not in cells and {k: c["mask"] for k, c in cells["cells"].items()} == \
        {k: c["mask"] for k, c in whole.items()}


def _audited(model, x, y, config, folder):
    run_audit(model, x, y, config, writing_to(folder))
    return folder


def _batch(part, number, size):
    """The indices of batch ``number`` of a cell's candidates."""
    index = [i for i, c in enumerate(part["candidates"]) if c == "1"]
    return index[number * size:(number + 1) * size]


def test_a_damaged_partial_cell_is_refused_naming_the_file(samples, tmp_path):
    model = reprogrammed(trained_linear())
    x, y = samples[0][:20], samples[1][:20]
    config = AU.AuditConfig(budgets=[0.2], steps=1, **QUICK)
    cache = _audited(model, x, y, config, tmp_path) / "cache.json"
    good = json.loads(cache.read_text())
    for partial in ([], {"k": {"candidates": "1" * 20, "results": "x" * 20, "seconds": 1}},
                    {"k": {"candidates": "1" * 19, "results": "-" * 20, "seconds": 1}}):
        cache.write_text(json.dumps({**good, "partial": partial}))
        with pytest.raises(ValueError, match=re.escape(str(cache)) + ".*'partial'.*--overwrite"):
            run_audit(model, x, y, config, writing_to(tmp_path))


def test_an_l1_cache_is_not_resumed_for_another_estimator_and_the_label_names_it(samples, tmp_path):
    """Same weights, lam and data, another estimator: other numbers, so the L1 audit's cache is refused (before,
    its fingerprint held no estimator and an MCP audit into that folder reused the L1 cells). An L1 audit's
    fingerprint has no estimator entry, so L1 caches written before keep resuming."""
    x, y = samples[0][:20], samples[1][:20]
    kwargs = dict(budgets=[0.2], steps=1, **QUICK)
    l1 = reprogrammed(trained_linear())
    run_audit(l1, x, y, AU.AuditConfig(**kwargs), writing_to(tmp_path))
    assert "estimators" not in json.loads((tmp_path / "cache.json").read_text())["fingerprint"]
    mcp = nrpm.reprogram(trained_linear(), nrpm.ReprogramConfig(lam=0.8, K=1, norm="mcp", gamma=2.0,
                                                                  scale="relative"))
    with pytest.raises(ValueError, match="estimators"):
        run_audit(mcp, x, y, AU.AuditConfig(**kwargs), writing_to(tmp_path))
    report = run_audit(mcp, x, y, AU.AuditConfig(**kwargs))
    assert report.settings["model_labels"]["nrpm"] == "NRPM MCP gamma=2 relative lam=0.8 K=1"


def test_parse_cache_key_reads_back_every_part_of_a_cell_key():
    from nrpm.audit.cells import parse_cache_key
    key = "nrpm|bpda|steps=20,alpha=0.00784314,restarts=1,seed=0|0.03137254902|rng=sample|on=survivors-of-pgd"
    assert parse_cache_key(key) == ("nrpm", "bpda", "steps=20,alpha=0.00784314,restarts=1,seed=0", "0.03137254902",
                                    "pgd")
    plain = parse_cache_key("plain|autoattack|seed=0|0.1254901961")
    assert (plain.tag, plain.attack, float(plain.budget), plain.on) == ("plain", "autoattack", 0.1254901961, None)
    with pytest.raises(ValueError, match="not an audit cell key"):
        parse_cache_key("nrpm|pgd")


def test_the_worst_case_counts_a_sample_only_if_no_attack_at_that_budget_broke_it():
    from nrpm.audit.cells import cached_masks, worst_case_masks
    cells = {"nrpm|pgd|s=20|0.1|rng=sample": {"mask": "1101", "seconds": 1.0},
             "nrpm|square|q=1000|0.1|on=survivors-of-pgd": {"mask": "0101", "seconds": 2.0},
             "nrpm|pgd|s=20|0.2|rng=sample": {"mask": "1000", "seconds": 1.0},
             "plain|pgd|s=20|0.1|rng=sample": {"mask": "0011", "seconds": 1.0}}
    worst = {k: "".join("1" if v else "0" for v in m.tolist())
             for k, m in worst_case_masks(cached_masks(cells)).items()}
    assert worst == {("nrpm", "0.1"): "0101", ("nrpm", "0.2"): "1000", ("plain", "0.1"): "0011"}
    live = {("nrpm", "pgd", 0.1): torch.tensor([True, False]), ("nrpm", "fgsm", 0.1): torch.tensor([True, True])}
    before = {k: m.clone() for k, m in live.items()}
    assert worst_case_masks(live)[("nrpm", 0.1)].tolist() == [True, False]
    assert all(torch.equal(live[k], before[k]) for k in live)  # the cells' own masks are left as they were


def test_the_fingerprint_migration_gives_what_todays_audit_writes(samples):
    """scripts/migrate_cache_fingerprint.py turns an older cache's fingerprint (lam as a Python float, no
    estimators) into the one a fresh audit of the same MCP model computes."""
    import importlib.util

    from nrpm.audit.cells import fingerprint
    from nrpm.audit.runner import estimator_info, layer_info
    spec = importlib.util.spec_from_file_location("migrate", Path(__file__).parents[1] / "scripts"
                                                  / "migrate_cache_fingerprint.py")
    migrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migrate)
    x, y = samples
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 10))
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.8, K=1, norm="mcp", gamma=2.0, scale="relative"))
    today = fingerprint(model, None, None, x, y, layer_info(model), "Linf", estimator_info(model))
    older = json.loads(json.dumps({k: v for k, v in today.items() if k != "estimators"}))
    for info in older["lam"].values():
        info["lam"] = 0.8
    changes = migrate.migrate(older, {"norm": "mcp", "gamma": 2.0, "delta": migrate.DEFAULT_DELTA,
                                      "scale": "relative"})
    assert older == today and len(changes) == 2
    assert migrate.migrate(older, None) == []  # already current: nothing changes
