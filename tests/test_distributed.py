"""nrpm.distributed: helpers on one process, and a real 2-process gloo run (torchrun) of training and
sharded evaluation compared with the same work done in one process."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nrpm import distributed as dist
from nrpm.train import read_checkpoint

WORKER = textwrap.dedent('''
    """Run by the test under torchrun (2 ranks) and imported by it for the single-process reference."""
    import json
    import sys
    from pathlib import Path

    import torch
    from torch import nn

    import nrpm.attacks as A
    from nrpm import distributed as dist
    from nrpm.runs import RunContext
    from nrpm.train import TrainConfig, TrainOptions, run_training


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(16, 12)
            self.fc2 = nn.Linear(12, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(self.flatten(x))))


    def data(n=120, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 1, 4, 4, generator=g)
        y = torch.randint(0, 3, (n,), generator=g)  # random labels: accuracies far from 0 and 1
        return x, y


    def config():
        return TrainConfig(model="tiny", paradigm=3, K=2, attack="pgd", attack_eps=0.1, attack_steps=2,
                           epochs=2, batch_size=16, optimizer="sgd", lr=0.1, lam_lr=1.0, val_size=20,
                           train_subset=64, augment=True)


    def train(out):
        torch.manual_seed(1)
        return run_training(config(), RunContext(Path(out), "train", progress=False,
                                                 log=lambda m: print(m, flush=True)),
                            model=Tiny(), data=data(), options=TrainOptions(device="cpu"))


    def eval_counts():
        torch.manual_seed(2)
        model = Tiny().eval()
        x, y = data(37, seed=3)
        clean = dist.sharded_correct(lambda xs, ys: A.clean_accuracy(model, xs, ys, batch_size=8), x, y)
        fgsm = dist.sharded_correct(lambda xs, ys: A.robust_accuracy(model, A.FGSM(0.1), xs, ys, batch_size=8),
                                    x, y)
        # 40 samples over 2 ranks = 20 each, a multiple of the batch: PGD batches match one process exactly
        x, y = data(40, seed=4)
        pgd = dist.sharded_correct(lambda xs, ys: A.robust_accuracy(model, A.PGD(0.1, steps=3, seed=0), xs, ys,
                                                                    batch_size=10), x, y)
        return {"clean": clean, "fgsm": fgsm, "pgd": pgd}


    def native_threads():
        """Names of this process's OS threads (Linux), e.g. gloo's 'pt_gloo_runloop'; None elsewhere."""
        tasks = Path("/proc/self/task")
        if not tasks.is_dir():
            return None
        names = []
        for task in tasks.iterdir():
            try:
                names.append((task / "comm").read_text().strip())
            except OSError:  # a thread that ended meanwhile
                pass
        return sorted(names)


    if __name__ == "__main__":
        out = Path(sys.argv[1])
        summary = train(out / "train")
        counts = eval_counts()
        shard = dist.shard_range(37)
        shards = dist.all_gather_object(list(shard))
        total = dist.all_reduce_sum(torch.tensor([float(shard[1] - shard[0])]))
        (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(
            {"rank": dist.get_rank(), "world": dist.get_world_size(), "counts": counts, "shards": shards,
             "total": total.item(), "epochs_done": summary["epochs_done"]}))
        rank = dist.get_rank()
        dist.cleanup()
        dist.cleanup()  # idempotent
        # the group is really gone (its gloo threads joined), not left for interpreter shutdown to destroy
        (out / f"exit{rank}.json").write_text(json.dumps({"threads": native_threads()}))
''')


def _load_worker(path):
    spec = importlib.util.spec_from_file_location("nrpm_dist_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ one process
def test_single_process_defaults(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = dist.init_from_env("cpu")
    assert (info.rank, info.world_size, info.backend, info.distributed) == (0, 1, None, False)
    assert dist.is_main() and dist.get_world_size() == 1
    assert dist.all_reduce_sum(3) == 3 and dist.all_reduce_sum(1.5) == 1.5
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_sum(t), t)
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}] and dist.broadcast_object(5) == 5
    assert torch.equal(dist.shard_indices(5), torch.arange(5))
    dist.barrier()
    dist.cleanup()  # no group: nothing to leave, as often as called
    dist.cleanup()
    with pytest.raises(TypeError):
        dist.all_reduce_sum("3")


@pytest.mark.parametrize("n,world", [(10, 3), (37, 2), (2, 4), (0, 2), (1000, 8)])
def test_shards_tile_the_samples_in_order(n, world):
    parts = [dist.shard_indices(n, r, world) for r in range(world)]
    assert torch.equal(torch.cat(parts), torch.arange(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_sharded_correct_on_one_process_is_the_plain_count():
    x, y = torch.rand(10, 3), torch.arange(10) % 2
    assert dist.sharded_correct(lambda xs, ys: 0.3, x, y) == 3


def test_per_rank_batch_size():
    assert dist.per_rank_batch_size(128, 4) == 32
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        dist.per_rank_batch_size(128, 3)
    with pytest.raises(ValueError, match=">= 1"):
        dist.per_rank_batch_size(0, 1)


def test_bad_rank():
    with pytest.raises(ValueError, match="outside"):
        dist.shard_range(10, rank=2, world_size=2)


# ------------------------------------------------------------------------------------------------ 2 processes
def test_two_gloo_processes_train_like_one_and_sum_eval_counts(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "dist"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out)], env=env, capture_output=True, text=True, timeout=300)
    # on failure show the head of stderr too (the workers' own messages come before torchrun's traceback) and
    # which ranks got as far as writing their summary / leaving the group (a crash at teardown vs. one mid-run)
    written = sorted(p.name for p in out.glob("*.json"))
    assert proc.returncode == 0, (f"files written: {written}\n" + proc.stdout[-2000:]
                                  + proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:])
    for r in range(2):
        threads = json.loads((out / f"exit{r}.json").read_text())["threads"]
        # a gloo thread alive after dist.cleanup() means something still holds the group, which interpreter
        # shutdown then destroys: the sporadic "terminate called without an active exception" at exit
        assert threads is None or not [t for t in threads if "gloo" in t], threads
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["shards"] == [[0, 19], [19, 37]]
    assert ranks[0]["total"] == 37 and ranks[0]["counts"] == ranks[1]["counts"]
    assert proc.stdout.count("epoch 2/2") == 1  # rank 0 alone logs
    assert len((out / "train" / "log.jsonl").read_text().splitlines()) == 2

    # the same work in this (single) process
    torch.set_num_threads(1)
    worker = _load_worker(script)
    single = tmp_path / "single"
    worker.train(single)
    assert ranks[0]["counts"] == worker.eval_counts()
    a, b = read_checkpoint(out / "train" / "checkpoint.pt"), read_checkpoint(single / "checkpoint.pt")
    assert a["world_size"] == 2 and b["world_size"] == 1
    for k, v in b["model_state"].items():
        assert torch.allclose(a["model_state"][k], v, atol=1e-6, rtol=1e-5), k
    for ra, rb in zip(a["history"], b["history"]):
        assert ra["samples"] == rb["samples"] == 64
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["val_clean"] == rb["val_clean"]
        assert ra["lam"] == pytest.approx(rb["lam"], abs=1e-5)
