"""nrpm.targets: PEFT-style module patterns, aliases and wrapper prefixes."""

import re

import pytest
from torch import nn

from nrpm.targets import canonical_name, matches, module_aliases, normalize_pattern


@pytest.mark.parametrize("name, pattern, hit", [
    ("head.fc2", "fc2", True), ("fc2", "fc2", True), ("head.xfc2", "fc2", False),
    ("layer1.0.conv1", "layer*.*.conv1", True), ("module.layer1.0.conv1", "layer*.*.conv1", True),
    ("conv1", "layer*.*.conv1", False), ("layer1.0.conv1", "re:layer\\d\\.0\\.conv1", True),
    ("module.layer1.0.conv1", "re:layer\\d\\.0\\.conv1", False), ("a.b", re.compile("a\\..*"), True),
])
def test_matches(name, pattern, hit):
    assert matches(name, [pattern]) is hit


def test_normalize_pattern():
    assert normalize_pattern(re.compile("x+")) == "re:x+"
    for bad in ("", 3, "re:(("):
        with pytest.raises(ValueError):
            normalize_pattern(bad)


def test_module_aliases_lists_every_name_of_a_shared_module():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert module_aliases(model)[id(shared)] == ["0", "2"]


@pytest.mark.parametrize("name, want", [("module.fc", "fc"), ("_orig_mod.module.fc", "fc"),
                                        ("body._orig_mod.fc", "body.fc"), ("fc.module", "fc.module")])
def test_canonical_name_drops_wrapper_prefixes(name, want):
    assert canonical_name(name) == want
