"""What the audit tests share (tests/ is on pytest's pythonpath): a synthetic 5-class problem (inputs in
[0, 1]^36, viewable as 6 x 6 images for Square), a linear model trained on it, and small attack settings."""

from __future__ import annotations

import torch
from torch import nn

import nrpm
from nrpm.runs import RunContext

N_CLASSES, D = 5, 36


BUDGETS = [0.15, 0.25]


def writing_to(folder):
    """The run context of an audit writing into ``folder`` (cache.json, then the report), silently."""
    return RunContext(out=folder, command="audit", progress=False, log=lambda message: None)


def make_data(n, seed):
    prototypes = torch.rand(N_CLASSES, D, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    return (prototypes[y] + 0.25 * torch.randn(n, D, generator=g)).clamp(0, 1), y


def trained_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, N_CLASSES))
    x, y = make_data(2000, 1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def reprogrammed(model, lam=0.8):
    return nrpm.reprogram(model, nrpm.ReprogramConfig(lam=lam, K=1))


# small attacks: FAST where the verdicts matter, QUICK where only the cells and their cache do
FAST = dict(steps=40, apgd_steps=20, square_queries=200, seed=0)
QUICK = dict(compare_plain=False, autoattack=False, apgd_steps=2, square_queries=5, seed=0)
