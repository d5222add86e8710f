"""Tiny models shared by the tests (tests/ is on pytest's pythonpath): 4x4 one-channel images, 3 classes."""

from __future__ import annotations

import torch
from torch import nn


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.flatten(x))))


class TinyConvBN(nn.Module):
    """Conv + BatchNorm + dropout: exercises frozen BN statistics and the global RNG (dropout)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(self.drop(self.flatten(torch.relu(self.bn(self.conv(x))))))
