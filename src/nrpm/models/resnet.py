"""CIFAR ResNets (kuangliu/pytorch-cifar style) with a width knob.

Module names match the authors' ``tinyresnet18_cifar10_model.t7`` after stripping
``module.``: conv1/bn1 stem, layer1..layer4 of BasicBlocks (conv1, bn1, conv2, bn2, and a
``shortcut`` Sequential of 1x1 conv + BN when the shape changes), and ``linear``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import official_file, register_model

# The paper reprograms the 3x3 convolutions of the residual blocks (not the stem, shortcuts or classifier).
BLOCK_CONVS = ("layer*.*.conv1", "layer*.*.conv2")

__all__ = ["BasicBlock", "ResNet", "resnet"]


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with a residual connection (projection shortcut on shape change)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, 4 stages (stride 1,2,2,2, widths w,2w,4w,8w), avg-pool, linear.

    Takes 32x32 inputs in [0, 1] (no normalisation layer, as the released checkpoint).
    """

    input_shape = (3, 32, 32)
    dataset = "cifar10"

    def __init__(self, num_blocks: Sequence[int], width: int = 64, num_classes: int = 10):
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks needs 4 stages, got {list(num_blocks)}")
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(8 * width, num_blocks[3], stride=2)
        self.linear = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.linear(out)


def resnet(num_blocks: Sequence[int], width: int = 64, num_classes: int = 10) -> ResNet:
    """Generic builder: ``resnet([2,2,2,2], width=8)`` is the narrow ResNet-18."""
    return ResNet(num_blocks, width=width, num_classes=num_classes)


@register_model("resnet10", dataset="cifar10", input_shape=(3, 32, 32), default_targets=BLOCK_CONVS)
def resnet10(width: int = 64, num_classes: int = 10) -> ResNet:
    return resnet([1, 1, 1, 1], width, num_classes)


@register_model("resnet18", dataset="cifar10", input_shape=(3, 32, 32), default_targets=BLOCK_CONVS)
def resnet18(width: int = 64, num_classes: int = 10) -> ResNet:
    return resnet([2, 2, 2, 2], width, num_classes)


@register_model("resnet18_narrow", dataset="cifar10", input_shape=(3, 32, 32), default_targets=BLOCK_CONVS, pretrained=official_file(
    "tinyresnet18_cifar10_model.t7", "c376ba2670ee7c82a9f5794f9aadb61455902de638e790716dbe21ff7879c90a"))
def resnet18_narrow(width: int = 8, num_classes: int = 10) -> ResNet:
    """ResNet-18 with widths 8-16-32-64: the authors' PGD-trained CIFAR-10 checkpoint."""
    return resnet([2, 2, 2, 2], width, num_classes)


@register_model("resnet34", dataset="cifar10", input_shape=(3, 32, 32), default_targets=BLOCK_CONVS)
def resnet34(width: int = 64, num_classes: int = 10) -> ResNet:
    return resnet([3, 4, 6, 3], width, num_classes)
