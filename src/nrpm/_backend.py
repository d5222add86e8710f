"""Which backend runs the NRPM kernels of :mod:`nrpm._kernels`, and the state behind that choice.

All of it lives in one :class:`BackendState` object, :data:`STATE`: the backend setting ('auto', 'compiled',
'eager'; env ``NRPM_BACKEND``), the working memory of the eager kernels (env ``NRPM_MEMORY_MB``), the cache of
compiled kernels, the record of a failed compilation and whether the caller declared sustained work
(:func:`sustained_work`). One object rather than module globals so that what the
backend remembers is in one place (tests replace its attributes with ``monkeypatch``), and the kernels' math
never holds state. :func:`set_backend`, :func:`get_backend`, :func:`set_memory_budget` and
:func:`get_memory_budget` and :func:`sustained_work` are the public interface (re-exported by
:mod:`nrpm.functional`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import types
import warnings
from typing import Callable, Iterator

import torch

__all__ = ["BACKENDS", "AUTO_MIN_VOTE_STEPS", "STATE", "BackendState", "CompiledKernels", "CompileFailed",
           "set_backend", "get_backend", "set_memory_budget", "get_memory_budget", "sustained_work"]

BACKENDS = ("auto", "compiled", "eager")

# "auto" compiles only problems with at least this many vote-steps (votes x K): below it eager is already fast
# (< ~10 ms) and the first call's compilation (seconds) would never pay back; this also keeps tiny problems such
# as unit tests from compiling anything.
AUTO_MIN_VOTE_STEPS = 1 << 22
# ... unless the caller says the same layers will be called many times (sustained_work: an attack, an audit,
# certification, training). Then every problem compiles: each kernel geometry compiles once (sizes are dynamic)
# and the eager kernels cost 5-10x the compiled ones on small batches (LeNet K 1 forward + input gradient on one
# thread: 150 vs 14 ms at batch 8, 178 vs 108 ms at batch 100; narrow ResNet-18: 697 vs 74 ms at batch 4), which
# is what an audit's cells on a few surviving samples and Square's thousands of queries run at.
SUSTAINED_MIN_VOTE_STEPS = 0

# Inductor materialises a fused expression that reads many buffers or has many ops; here that expression is a
# vote-sized tensor, the very thing the kernels exist to avoid, so those limits are lifted for these kernels only.
# realize_reads_threshold too: the clamped estimators read their raw weight, and the relative ones the votes, more
# than Inductor's default 4 times, which made it materialise a vote-sized buffer (measured 10-25x slower).
INDUCTOR_OPTIONS = {"realize_acc_reads_threshold": 1_000_000, "realize_opcount_threshold": 10_000,
                    "realize_reads_threshold": 1_000_000}

# out-of-memory is not a compilation failure: never hidden by the fallback (torch.OutOfMemoryError is torch >= 2.5)
OUT_OF_MEMORY = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


# a first call still running after this long is compiling, not served from torch's on-disk cache: say so
ANNOUNCE_AFTER_S = 15.0  # a warm first call (tracing, disk cache) took 8-11 s here, a cold compile 27-35 s

class CompileFailed(Exception):
    """The compiled kernels failed and are now disabled: the caller reruns on the eager ones."""


class CompiledKernels:
    """torch.compile'd kernels, one per static configuration, and the record of a failed compilation."""

    def __init__(self):
        self.fns: dict[tuple, Callable] = {}
        self.announced: set = set()
        self.failure: str | None = None

    def run(self, kernel: Callable, key: tuple, args: tuple) -> torch.Tensor:
        """The compiled ``kernel`` for ``key`` on ``args``; a first call that is still compiling after
        ANNOUNCE_AFTER_S seconds is announced (one line, printed through tqdm so a progress bar stays whole)."""
        first = key not in self.fns
        fn = self.get(kernel, key)
        if not first:
            return fn(*args)
        timer = threading.Timer(ANNOUNCE_AFTER_S, self.announce, (key,))
        timer.daemon = True
        timer.start()
        try:
            return fn(*args)
        finally:
            timer.cancel()  # served from torch's on-disk cache, or compiled quickly: nothing to say

    def get(self, kernel: Callable, key: tuple) -> Callable:
        fn = self.fns.get(key)
        if fn is None:
            # A private copy of the code object gives each configuration its own Dynamo cache, so configurations
            # never count against each other's recompile limit nor add guards to each other's calls.
            code = kernel.__code__.replace()
            copy = types.FunctionType(code, kernel.__globals__, kernel.__name__, kernel.__defaults__)
            fn = self.fns[key] = torch.compile(copy, fullgraph=True, options=INDUCTOR_OPTIONS)
        return fn

    def announce(self, key: tuple) -> None:
        """Say on stderr that a kernel geometry (``key[1]``) compiles, once per geometry."""
        # the first compilation of a kernel geometry takes 15-50 s on a CPU; say so instead of hanging silently
        from tqdm import tqdm

        geom = key[1]
        if geom not in self.announced:
            self.announced.add(geom)
            tqdm.write(f"nrpm: compiling the NRPM kernels for kernel geometry {geom} (the first call takes up to a "
                       f"minute; later runs reuse torch's on-disk cache)", file=sys.stderr)

    def disable(self, error: BaseException) -> None:
        self.failure = f"{type(error).__name__}: {error}"
        warnings.warn(f"nrpm: compiling the NRPM kernels failed ({self.failure.splitlines()[0][:300]}); falling back "
                      "to the eager kernels (slower, same results). Set NRPM_BACKEND=eager to silence this.",
                      RuntimeWarning, stacklevel=4)


def is_compiling() -> bool:
    """Whether this runs inside a torch.compile trace (then the plain kernels are traced into the caller's graph)."""
    check = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    return check()


class BackendState:
    """The backend setting, the eager kernels' memory budget and the compiled kernels (one instance: STATE)."""

    def __init__(self, backend: str = "auto", memory_budget_bytes: int = 256 * 2**20):
        self.backend = backend
        self.memory_budget_bytes = memory_budget_bytes
        self.auto_min_vote_steps = AUTO_MIN_VOTE_STEPS
        self.sustained_min_vote_steps = SUSTAINED_MIN_VOTE_STEPS
        self.sustained_depth = 0  # > 0 inside sustained_work()
        self.compiled = CompiledKernels()

    def will_compile(self, device: torch.device, vote_steps: int) -> bool:
        """Whether a problem of this size on this device runs on the compiled kernels (under the current backend)."""
        if self.backend == "eager" or is_compiling():
            return False  # inside a user's torch.compile the plain kernels are traced into their graph instead
        if self.backend == "compiled":
            return True
        usable = self.compiled.failure is None and device.type in ("cpu", "cuda")
        least = self.sustained_min_vote_steps if self.sustained_depth else self.auto_min_vote_steps
        return usable and vote_steps >= least

    def call_compiled(self, kernel: Callable, key: tuple, args: tuple, dynamic) -> torch.Tensor:
        """Run a compiled kernel; in 'auto' mode a failure warns once, disables them and raises CompileFailed.

        ``dynamic``: pairs (tensors, dims) of the dimensions compiled as dynamic sizes."""
        try:
            for tensors, dims in dynamic:
                for t in tensors:
                    for d in dims:
                        torch._dynamo.maybe_mark_dynamic(t, d)
            return self.compiled.run(kernel, key, args)
        except OUT_OF_MEMORY:
            raise
        except Exception as error:  # noqa: BLE001 - any compiler/toolchain failure: fall back, do not crash
            if self.backend == "compiled":
                raise
            self.compiled.disable(error)
            raise CompileFailed from error


def _from_environment() -> BackendState:
    backend = os.environ.get("NRPM_BACKEND", "auto").strip().lower() or "auto"
    if backend not in BACKENDS:
        warnings.warn(f"NRPM_BACKEND={backend!r} is not one of {BACKENDS}; using 'auto'", stacklevel=2)
        backend = "auto"
    state = BackendState(backend, int(float(os.environ.get("NRPM_MEMORY_MB", "256")) * 2**20))
    # NRPM_SUSTAINED=0: 'auto' keeps its size rule inside sustained_work too (the test suite sets it: its tiny
    # models and many settings would compile dozens of kernels, each taking seconds)
    if os.environ.get("NRPM_SUSTAINED", "1").strip() == "0":
        state.sustained_min_vote_steps = state.auto_min_vote_steps
    return state


STATE = _from_environment()


def set_backend(name: str) -> None:
    """Choose how the NRPM core runs: 'auto' (compile large problems, eager otherwise), 'compiled', 'eager'."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    STATE.backend = name


def get_backend() -> str:
    """The current backend setting ('auto', 'compiled' or 'eager'; env NRPM_BACKEND)."""
    return STATE.backend


def set_memory_budget(megabytes: float) -> None:
    """Set the working memory (MiB) one chunk of the eager robust core may use (default 256, env NRPM_MEMORY_MB)."""
    if not megabytes > 0:
        raise ValueError(f"memory budget must be > 0 MiB, got {megabytes}")
    STATE.memory_budget_bytes = int(megabytes * 2**20)


@contextlib.contextmanager
def sustained_work() -> Iterator[None]:
    """Declare that the code inside calls the same robust layers many times (attacks, audits, certification,
    training): the 'auto' backend then compiles problems of every size, not only large ones, since the
    compilation (seconds, once per kernel geometry) pays back over the repeated calls. Nests; no effect on the
    'eager' and 'compiled' settings. The commands of the CLI run their attacks, certification and training inside
    it; the backend chosen no longer depends on the batch size there. Env ``NRPM_SUSTAINED=0`` turns this off."""
    STATE.sustained_depth += 1
    try:
        yield
    finally:
        STATE.sustained_depth -= 1


def get_memory_budget() -> float:
    """The current working-memory budget of the robust core, in MiB."""
    return STATE.memory_budget_bytes / 2**20
