"""A small Vision Transformer for CIFAR-10 (patch embedding, class token, pre-norm blocks).

The attention is torch's ``nn.MultiheadAttention`` on purpose: it is the module users' transformers hold, and the
one nrpm's reprogramming replaces (robust projections and robust attention). The patch embedding is a strided
``nn.Conv2d``, the MLP two ``nn.Linear`` layers, so every weight-bearing unit is one nrpm can reprogram.
Inputs are [0, 1] images; the CIFAR-10 normalisation is a layer in front, so attacks work in input units.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Normalize
from .registry import bundled_file, register_model

__all__ = ["VisionTransformer", "vit_tiny_cifar"]

# CIFAR-10 channel statistics (training split)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT: conv patch embedding, learned position embedding, class token, pre-norm blocks, linear head."""

    input_shape = (3, 32, 32)
    dataset = "cifar10"

    def __init__(self, image_size: int = 32, patch_size: int = 4, dim: int = 96, depth: int = 6, heads: int = 3,
                 mlp_dim: int = 192, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0,
                 normalize: bool = True):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        self.normalize = Normalize(CIFAR10_MEAN, CIFAR10_STD) if normalize else nn.Identity()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        n_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(self.normalize(x)).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


# trained here by scripts/train_vit.sh (all 50 epochs; logs in results/transformers/vit_train/), released by
# scripts/release_vit.py
@register_model("vit_tiny_cifar", dataset="cifar10", input_shape=(3, 32, 32), pretrained=bundled_file(
    "vit_tiny_cifar.pt", "2e2dd0df773a011c3420e5ad6dd1c2c8282614d517c94a7b532e3c7ad14aa8af",
    "scripts/train_vit.sh (epoch 50 of 50), released by scripts/release_vit.py"))
def vit_tiny_cifar(num_classes: int = 10, **kwargs) -> VisionTransformer:
    """ViT with 4x4 patches, width 96, 6 blocks of 3 heads, MLP 192 (~0.45 M parameters)."""
    return VisionTransformer(num_classes=num_classes, **kwargs)
