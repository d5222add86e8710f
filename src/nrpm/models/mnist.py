"""MNIST models of the paper: linear, 2- and 3-layer MLPs, and the FGSM-tutorial LeNet.

Layers are nn.Module attributes named like the released checkpoints (fc1, conv1, ...) so that
a reprogramming tool can swap Linear/Conv2d modules in place by name.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import official_file, register_model

__all__ = ["LinearClassifier", "MLP2", "MLP3", "LeNet"]


class _MnistModel(nn.Module):
    input_shape = (1, 28, 28)
    dataset = "mnist"


@register_model("linear")
class LinearClassifier(_MnistModel):
    """Multinomial logistic regression: Flatten + Linear(784, num_classes)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(x))


@register_model("mlp2")
class MLP2(_MnistModel):
    """784-64-10 MLP with a ReLU hidden layer."""

    def __init__(self, num_classes: int = 10, hidden: int = 64):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


@register_model("mlp3", pretrained=official_file(
    "mlp3_mnist_model.pth", "a2c7bb57c3c65ec3d49e9944c914aeb580e2570ff3acfd32d783c1174b27aaa4"))
class MLP3(_MnistModel):
    """784-256-64-10 MLP with NO activations between layers, as in the paper's code.

    (So it is a linear classifier in disguise; the robust layers make it non-linear.)
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(28 * 28, 256)
        self.fc2 = nn.Linear(256, 64)
        self.fc3 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.fc2(self.fc1(self.flatten(x))))


@register_model("lenet", pretrained=official_file(
    "lenet_mnist_model.pth", "a3f7b2aa9f6800fdbf6cdbf952aee04ade4095dcb31071ee8eb609338dd227bb"))
class LeNet(_MnistModel):
    """The PyTorch FGSM-tutorial LeNet; returns log-probabilities (log_softmax).

    Cross-entropy on its output equals NLL on it, since log_softmax is idempotent.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.pool2 = nn.MaxPool2d(2)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(320, 50)
        self.relu3 = nn.ReLU()
        self.dropout = nn.Dropout()
        self.fc2 = nn.Linear(50, num_classes)
        self.log_softmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.pool1(self.conv1(x)))
        x = self.relu2(self.pool2(self.conv2_drop(self.conv2(x))))
        x = self.dropout(self.relu3(self.fc1(self.flatten(x))))
        return self.log_softmax(self.fc2(x))
