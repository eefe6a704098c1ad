"""Vision Transformer (Dosovitskiy et al. 2021) in the style of lucidrains' vit-pytorch, all projections nn.Linear.

Defaults are GSE's CIFAR ViT ("vit-tiny"): dim 512, depth 4, 6 heads, MLP 256, dropout 0.1. 512 is not a
multiple of 6, so heads do not split ``dim``: each head has ``dim_head`` = 64 features and attention works in
an inner space of heads·dim_head = 384, projected back to ``dim`` (vit-pytorch's convention).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .common import image_shape, scaled


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, -1)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ViT(nn.Module):
    """Patches (flattened, LayerNorm, Linear, LayerNorm) + class token + learned positions → pre-norm
    transformer → LayerNorm → linear head on the class token."""

    def __init__(self, *, image_size: tuple[int, int], channels: int, patch_size: int, num_classes: int, dim: int,
                 depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float, emb_dropout: float):
        super().__init__()
        h, w = image_size
        self.patch_size = patch_size
        patch_dim = channels * patch_size * patch_size
        num_patches = (h // patch_size) * (w // patch_size)
        self.patch_embed = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.emb_drop = nn.Dropout(emb_dropout)
        self.blocks = nn.ModuleList(nn.ModuleList([Attention(dim, heads, dim_head, dropout),
                                                   FeedForward(dim, mlp_dim, dropout)]) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, patches, p·p·C), patches row-major, each flattened as (p1, p2, c)."""
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(self.patches(x))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.emb_drop(tokens + self.pos_embedding)
        for attention, feed_forward in self.blocks:
            tokens = tokens + attention(tokens)
            tokens = tokens + feed_forward(tokens)
        return self.head(self.norm(tokens[:, 0]))


def build_vit(*, num_classes: int, input_shape: Sequence[int], width: float = 1.0, patch_size: int | None = None,
              dim: int = 512, depth: int = 4, heads: int = 6, dim_head: int = 64, mlp_dim: int = 256,
              dropout: float = 0.1, emb_dropout: float = 0.1) -> ViT:
    """``patch_size`` None picks 4 for inputs up to 64×64 and 16 above (224 → 14×14 patches).
    ``width`` scales ``dim``, ``dim_head`` and ``mlp_dim``; ``heads`` and ``depth`` stay."""
    channels, h, w = image_shape(input_shape, "vit")
    if patch_size is None:
        patch_size = 4 if max(h, w) <= 64 else 16
    for field, value in (("patch_size", patch_size), ("dim", dim), ("depth", depth), ("heads", heads),
                         ("dim_head", dim_head), ("mlp_dim", mlp_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"vit option {field} must be a positive int, got {value!r}")
    if h % patch_size or w % patch_size:
        raise ConfigError(f"vit patch_size={patch_size} must divide the image size {(h, w)}")
    return ViT(image_size=(h, w), channels=channels, patch_size=patch_size, num_classes=num_classes,
               dim=scaled(dim, width), depth=depth, heads=heads, dim_head=scaled(dim_head, width),
               mlp_dim=scaled(mlp_dim, width), dropout=float(dropout), emb_dropout=float(emb_dropout))
