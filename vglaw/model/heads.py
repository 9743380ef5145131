"""The multi-task head of VG-LAW: language-adaptive pooling for the box, a dot product with
the text [CLS] feature for the mask. There is no cross-modal fusion module."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.convnext import LayerNorm2d


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's box MLP)."""

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class BoxHead(nn.Module):
    """Language-adaptive pooling: the text [CLS] feature queries the visual tokens (one head,
    no value or output projection), then an MLP regresses the box."""

    def __init__(self, *, embed_dim: int = 768, text_dim: int = 768, attn_dim: int = 64,
                 hidden_dim: int = 256) -> None:
        super().__init__()
        self.q_proj = nn.Linear(text_dim, attn_dim)
        self.k_proj = nn.Linear(embed_dim, attn_dim)
        self.mlp = MLP(in_dim=embed_dim, hidden_dim=hidden_dim, out_dim=4, num_layers=3)

    def forward(self, features: torch.Tensor, text_cls: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (B, C, H, W) visual features; text_cls: (B, Dt) text [CLS] feature.
        Returns:
            (B, 4) box logits; ``sigmoid`` gives normalised (cx, cy, w, h) on the canvas.
        """
        tokens = features.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C), index h*W + w
        q = self.q_proj(text_cls)[:, None, None, :]  # (B, 1, 1, A)
        k = self.k_proj(tokens)[:, None]  # (B, 1, HW, A)
        pooled = F.scaled_dot_product_attention(q, k, tokens[:, None])  # (B, 1, 1, C)
        return self.mlp(pooled[:, 0, 0])


class MaskHead(nn.Module):
    """Up-samples the features x4 into pixel embeddings of width Dt and scores each pixel by
    its dot product with the text [CLS] feature; bilinear (align_corners=True) to the canvas."""

    def __init__(self, *, embed_dim: int = 768, text_dim: int = 768, hidden_dim: int = 256,
                 ln_eps: float = 1e-6) -> None:
        super().__init__()
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, hidden_dim, kernel_size=2, stride=2),
            LayerNorm2d(hidden_dim, eps=ln_eps),
            nn.GELU(),
            nn.ConvTranspose2d(hidden_dim, text_dim, kernel_size=2, stride=2),
        )

    def forward(self, features: torch.Tensor, text_cls: torch.Tensor, size: int) -> torch.Tensor:
        """
        Args:
            features: (B, C, H, W); text_cls: (B, Dt); size: canvas side S.
        Returns:
            (B, 1, S, S) mask logits.
        """
        pixels = self.upsample(features)  # (B, Dt, 4H, 4W)
        logits = torch.einsum("bchw,bc->bhw", pixels, text_cls)[:, None]  # (B, 1, 4H, 4W)
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)
