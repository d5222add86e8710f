"""Data-parallel helpers on ``torch.distributed``: one process or many, same code.

Launch any nrpm command under ``torchrun --nproc_per_node=N``; :func:`init_from_env` reads the variables
torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process
group (gloo on CPU, nccl on CUDA). Without them everything here is a no-op for a single process: rank 0 of 1,
``all_reduce_sum(x) == x``, ``shard_indices(n)`` is every index.

Evaluation sharding (``sharded_correct``): each rank measures a contiguous block of the samples and the correct
counts are summed, so the accuracy is the one of a single process over all samples. Blocks are contiguous (not
strided) so that when ``n / world_size`` is a multiple of the batch size every attack batch holds the same
samples as on one process, and attacks with a seeded random start give the same result too.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

__all__ = [
    "batch_shards",
    "DistInfo",
    "init_from_env",
    "env_world_size",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "is_main",
    "barrier",
    "shard_range",
    "shard_indices",
    "all_reduce_sum",
    "all_reduce_max",
    "all_gather_object",
    "broadcast_object",
    "sharded_correct",
    "per_rank_batch_size",
    "cleanup",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``local_rank`` on the node, the backend
    (None for a single process) and the device it should compute on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def env_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when not launched by it), without joining any group."""
    if is_initialized():
        return dist.get_world_size()
    return max(1, _env_int("WORLD_SIZE", 1))


def _resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        dev = torch.device("cuda", local_rank)
    return dev


def init_from_env(device: str | torch.device = "auto", backend: str | None = None,
                  timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group described by torchrun's environment (if any) and pick this rank's device.

    ``device``: "auto" (CUDA when available, one GPU per local rank, else CPU), "cpu", "cuda", "cuda:1", ...
    ``backend``: None picks nccl for CUDA and gloo for CPU. Safe to call twice (the second call only reports).
    """
    world_size = env_world_size()
    rank = dist.get_rank() if is_initialized() else _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank if world_size > 1 else 0)
    if world_size > 1 and not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    dev = _resolve_device(device, local_rank)
    if world_size == 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not is_initialized():
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        _import_group_pinning_modules()
        chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
        kwargs = {"backend": chosen, "timeout": datetime.timedelta(minutes=timeout_minutes)}
        if dev.type == "cuda" and chosen == "nccl":
            kwargs["device_id"] = dev
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # older torch without device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    backend=dist.get_backend(), device=dev)


def _import_group_pinning_modules() -> None:
    """Import, before the process group exists, the torch modules that would otherwise pin it for good.

    ``torch.distributed.nn.functional`` declares ``group=group.WORLD`` as default arguments, evaluated once when
    it is first imported; DistributedDataParallel's constructor imports it (through ``torch._dynamo``). Imported
    after ``init_process_group``, those defaults hold the live default group forever: ``destroy_process_group``
    then only forgets it and its gloo worker threads keep running into interpreter shutdown. There a worker
    that frees a finished barrier (and the all-reduce before it, whose tensors own Python objects) needs the
    GIL, which a finalising interpreter answers by ending the thread (a forced unwind) inside a noexcept
    destructor: std::terminate, "terminate called without an active exception", after all work is done.
    Imported first, the defaults are None ("the default group" at call time), ``destroy_process_group`` frees
    the group and joins its threads while the interpreter is still whole.
    """
    try:
        import torch.distributed.nn  # noqa: F401
    except ImportError:  # a build without it has nothing that could pin the group
        pass


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes files."""
    return get_rank() == 0


def barrier() -> None:
    if is_initialized() and get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, after a barrier so no rank tears down its connections while another still talks
    to it. Idempotent: a no-op when there is no group (never joined, or already left)."""
    if not is_initialized():
        return
    if get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Tensors handed to collectives must live here (nccl: the current GPU; gloo: CPU)."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------------------------------------ sharding
def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous block of ``n`` items; block sizes differ by at most one and the
    blocks of ranks 0..world_size-1 tile range(n) in order (a block may be empty when n < world_size)."""
    rank = get_rank() if rank is None else int(rank)
    world_size = get_world_size() if world_size is None else int(world_size)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None) -> torch.Tensor:
    """This rank's indices of ``n`` items (a LongTensor; see :func:`shard_range`)."""
    start, stop = shard_range(n, rank, world_size)
    return torch.arange(start, stop, dtype=torch.long)


def batch_shards(n: int, batch_size: int, rank: int | None = None, world_size: int | None = None
                 ) -> list[tuple[int, int]]:
    """This rank's batches (start, stop) of ``n`` samples cut into ``batch_size`` batches, dealt round the ranks.

    The batches are the ones one process would form, so anything seeded per batch (pyautoattack's attacks) sees
    the same batches on any number of ranks."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)][rank::world_size]


def per_rank_batch_size(batch_size: int, world_size: int | None = None) -> int:
    """``batch_size / world_size``; a ValueError unless the global batch splits into equal non-empty parts
    (equal parts make the DDP gradient average equal to the single-process batch mean)."""
    world_size = get_world_size() if world_size is None else int(world_size)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not split evenly over {world_size} processes; use a "
                         f"multiple of {world_size} (the batch size is the global one, summed over processes)")
    return batch_size // world_size


# ------------------------------------------------------------------------------------------------ collectives
def all_reduce_sum(value):
    """Sum of ``value`` over all ranks: an int, a float or a tensor (a new tensor on the input's device)."""
    if not isinstance(value, torch.Tensor) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"all_reduce_sum takes an int, a float or a tensor, got {type(value).__name__}")
    if not (is_initialized() and get_world_size() > 1):
        return value.clone() if isinstance(value, torch.Tensor) else value
    if isinstance(value, torch.Tensor):
        t = value.detach().to(_comm_device(), copy=True)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(value.device)
    dtype = torch.int64 if isinstance(value, int) else torch.float64
    t = torch.tensor(value, dtype=dtype, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item()) if isinstance(value, int) else float(t.item())


def all_reduce_max(value: float) -> float:
    """Maximum of a number over all ranks (e.g. a stop flag: any rank asking to stop stops them all)."""
    if not (is_initialized() and get_world_size() > 1):
        return value
    t = torch.tensor(float(value), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_gather_object(obj: Any) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not (is_initialized() and get_world_size() > 1):
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not (is_initialized() and get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sharded_correct(accuracy_fn: Callable[[torch.Tensor, torch.Tensor], float], x: torch.Tensor,
                    y: torch.Tensor) -> int:
    """Number of samples of (x, y) counted correct, measured in shards over the ranks.

    ``accuracy_fn(x_shard, y_shard)`` returns an accuracy in [0, 1] (e.g. ``nrpm.attacks.clean_accuracy`` or
    ``robust_accuracy`` with the model bound); each rank runs it on its block (an empty block counts 0 and
    is not run) and the counts are summed over the ranks. On one process it is ``round(acc * len(x))``.
    Every rank must call it (it is a collective).
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    start, stop = shard_range(len(x))
    correct = 0
    if stop > start:
        correct = int(round(accuracy_fn(x[start:stop], y[start:stop]) * (stop - start)))
    return all_reduce_sum(correct)
