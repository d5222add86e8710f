"""Small ViTs in the style of timm and Hugging Face, for ``--model tests/cli/vit_factories.py:FACTORY``.

Their attention is the model's own code, as in those libraries, not torch's nn.MultiheadAttention, so nrpm can
reprogram their nn.Linear layers but not the softmax(q k^T) v aggregation, which the CLI must say:

* ``timm_vit``: timm's ``Attention`` (an nn.Linear ``qkv`` and ``proj``, the softmax written out);
* ``hf_vit``: a Hugging Face-like ``ViTSelfAttention`` holding its fused q/k/v weight as a bare parameter
  (a weight-bearing module nrpm does not reprogram at all).
"""

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """timm's Attention: fused qkv projection, manual softmax, output projection."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.project_qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))

    def project_qkv(self, x):
        return self.qkv(x)


class ViTSelfAttention(Attention):
    """Hugging Face-like: the q/k/v weights are a parameter of the attention module itself."""

    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        del self.qkv
        self.qkv_weight = nn.Parameter(torch.randn(3 * dim, dim) * dim ** -0.5)

    def project_qkv(self, x):
        return F.linear(x, self.qkv_weight)


class Block(nn.Module):
    def __init__(self, dim, heads, attention):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, attention, dim=32, depth=2, heads=2, patch=8, classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (32 // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, attention) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def timm_vit():
    torch.manual_seed(0)
    return TinyViT(Attention)


def hf_vit():
    torch.manual_seed(0)
    return TinyViT(ViTSelfAttention)
