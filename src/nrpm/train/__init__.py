"""Training: base models (standard or adversarial) and reprogramming paradigms 2 and 3.

    from nrpm.train import TrainConfig, run_training
    cfg = TrainConfig(model="mlp3", paradigm=2, checkpoint="pretrained", lam=0.5, attack="fgsm", attack_eps=0.3,
                      epochs=10, optimizer="adam", lr=0.01)
    summary = run_training(cfg, "runs/mlp3_p2")

Paradigms: 0 = a plain model, no reprogramming (``nrpm train``); 2 = only the per-layer lam logits train, every
weight and BatchNorm statistic stays as in the base checkpoint (the artifact is the small reprogramming state);
3 = weights and lam train together (the artifact is a full checkpoint plus the reprogramming state).

What a run writes to its output folder (only rank 0 writes):

* ``checkpoint.pt`` after every epoch (atomically: temp file + rename): model, optimizer, scheduler, the data
  generator and every rank's RNG states, epoch, history and time. ``resume=True`` continues exactly: the same
  lam and weights as an uninterrupted run at the same epoch. A run killed mid-epoch loses only that epoch.
* the artifact, refreshed every epoch: ``reprogramming.pt`` (paradigms 2 and 3: config + per-layer lam, apply it
  with ``nrpm.load_reprogramming`` on the base model) and ``model.pt`` (paradigms 0 and 3: ``{'state_dict':
  plain weights, ...}``, loadable by ``nrpm.models.load_checkpoint`` / ``nrpm eval --checkpoint``).
  :func:`load_trained` rebuilds the trained model from a run folder.
* ``log.jsonl`` / ``log.csv`` (one row per epoch: loss, train accuracy, clean and robust accuracy on the held-out
  set, per-layer lam, learning rate, time), rewritten with the checkpoint so they never disagree with it;
  TensorBoard scalars under ``tb/`` when asked for and installed; ``run.json`` (settings, versions, summary);
  ``test_<attack>.json/.md`` when a test evaluation is asked for.

Model and data: ``model`` is a model spec, a registry name or a user's own (``FILE.py:FACTORY``, ...; with
``model_args`` and an input ``normalize`` put in front, see :mod:`nrpm.models.external`), ``data`` / ``train_data``
data specs (see :mod:`nrpm.train.sources`); the artifacts record them, so :func:`load_trained` rebuilds the model.

Data: the held-out (validation) set is the last ``val_size`` images of the *training* split, never the test set;
training uses the rest, in a fresh seeded order each epoch (``train_subset`` = a random subset of that size per
epoch). The last incomplete batch of an epoch is dropped (so every step has the full global batch, which keeps
a multi-process run equal to a single-process one).

Adversarial examples (FGSM = one step of size ``attack_alpha`` (default eps) from x; PGD-k = k signed-gradient
steps with projection, from a uniform random start, returning the last iterate as in Madry et al.) are computed
on the current model in eval mode with its parameters frozen; the random starts come from the run's seeded
generator, drawn for the whole global batch, so they do not depend on the number of processes.

Multi-process (``torchrun --nproc_per_node=N``): see :mod:`nrpm.distributed`. The global batch (``batch_size``)
is drawn identically on every rank and split into equal contiguous parts, one per rank; DistributedDataParallel
averages the gradients, so a step equals the single-process step on the whole batch up to floating-point
reduction order. (This is DistributedSampler's contract, disjoint per-rank shards of one seeded shuffle,
applied per batch instead of per epoch: a per-epoch DistributedSampler makes rank r's i-th batch a different set
of images than one process's i-th batch.) Exceptions: dropout masks come from per-rank RNGs, and BatchNorm in
train mode uses per-rank batch statistics on CPU (on CUDA it is converted to SyncBatchNorm, which is exact).

CPU threads: on a busy machine give each process one thread (``--threads 1`` or ``OMP_NUM_THREADS=1``; torchrun
sets the latter); two OpenMP threads competing with other jobs for two cores were measured 5-10x slower.
"""

from .adversarial import adversarial_examples
from .artifacts import CHECKPOINT_FORMAT, MODEL_FORMAT, load_trained, read_checkpoint
from .config import TestSettings, TrainConfig
from .loop import TrainOptions, run_training

# Package layout: config (TrainConfig, TestSettings), sources (model and data specs, whole data splits),
# setup (model, data, optimiser, RNG states),
# adversarial (training attacks), loop (run_training), evaluate (held-out and test accuracy),
# artifacts (everything read from or written to the output folder).

__all__ = ["TrainConfig", "TestSettings", "run_training", "TrainOptions", "adversarial_examples", "load_trained",
           "read_checkpoint", "CHECKPOINT_FORMAT", "MODEL_FORMAT"]
