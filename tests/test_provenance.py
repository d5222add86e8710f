"""nrpm.provenance: the versions every results file records."""

import torch

import nrpm
from nrpm.provenance import versions


def test_versions_name_the_libraries_and_take_extras():
    v = versions(world_size=2)
    assert v["nrpm"] == nrpm.__version__ and v["torch"] == torch.__version__
    assert {"numpy", "pyautoattack", "python", "machine", "threads"} <= v.keys() and v["world_size"] == 2
