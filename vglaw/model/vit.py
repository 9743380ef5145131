"""ViTDet plain ViT backbone (Li et al. 2022) with a language-adaptive qkv projection.

Parameter names follow detectron2 ``modeling/backbone/vit.py`` (``patch_embed.proj``,
``pos_embed``, ``blocks.N.attn.qkv``, ``blocks.N.attn.rel_pos_h``, ...), so ViTDet checkpoints
load with strict checking. ``ViT.forward(x)`` is exactly ViTDet; ``ViT.forward(x, law)``
applies the per-sample, per-block LAW factors produced by the weight generator.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import StochasticDepth

from .law import LawFactors, adaptive_qkv
from .vit_utils import (decomposed_rel_pos_terms, fold_rel_pos, get_abs_pos, sincos_pos_embed, window_partition,
                        window_unpartition)

ATTENTION_PATHS = ("bias", "fold")


class Attention(nn.Module):
    """Multi-head attention with decomposed relative position and a language-adaptive qkv."""

    def __init__(self, *, dim: int, num_heads: int = 8, qkv_bias: bool = True,
                 use_rel_pos: bool = True, input_size: tuple[int, int] | None = None,
                 attention: str = "bias") -> None:
        """
        Args:
            dim: channels C; num_heads: attention heads; qkv_bias: bias in the qkv projection.
            use_rel_pos: add decomposed relative position; input_size: (H, W) of the attended
                map (the window, or the whole grid for global blocks), sizing the rel-pos tables.
            attention: how relative position enters: ``"bias"``, an additive bias (ViTDet's
                formula, the reference), or ``"fold"``, extra query and key channels that give
                the same logits with no bias, so a fused attention kernel can run.
        """
        super().__init__()
        if attention not in ATTENTION_PATHS:
            raise ValueError(f"attention must be one of {ATTENTION_PATHS}, got {attention!r}")
        self.attention = attention
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos is True")
            head_dim = dim // num_heads
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor, window_size: int = 0, law: LawFactors | None = None) -> torch.Tensor:
        """Args: x (B, H, W, C); window_size 0 for global attention; law the block's factors.
        Returns: (B, H, W, C)."""
        B, H, W, C = x.shape
        if window_size > 0:
            # pad the input (not qkv) so padded tokens project to the bias, exactly as ViTDet
            x, pad_hw = window_partition(x, window_size)
            x = x.view(B, -1, C)  # all windows of one sample together
            qh = qw = window_size
        else:
            qh, qw = H, W
        # qkv on each sample's full token set, so the sample's factors reach every window
        qkv = adaptive_qkv(x.reshape(B, -1, C), self.qkv.weight, self.qkv.bias, law)  # (B, N, 3C)
        nh, hd = self.num_heads, C // self.num_heads
        # (B, N, 3C) -> (3, B*nW, heads, ws*ws, hd) where N = nW*qh*qw
        qkv = qkv.view(-1, qh * qw, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias, scale = None, hd ** -0.5
        if self.use_rel_pos:
            Bw = q.shape[0]
            rel_h, rel_w = decomposed_rel_pos_terms(q.reshape(Bw * nh, qh * qw, hd), self.rel_pos_h,
                                                    self.rel_pos_w, (qh, qw), (qh, qw))
            # (Bw*heads, qh*qw, k) -> (Bw, heads, qh*qw, k)
            rel_h, rel_w = rel_h.view(Bw, nh, qh * qw, qh), rel_w.view(Bw, nh, qh * qw, qw)
            if self.attention == "fold":
                q, k = fold_rel_pos(q, k, rel_h, rel_w, (qh, qw), scale)
            else:
                # (Bw, heads, qh*qw, qh, 1) + (..., 1, qw) -> (Bw, heads, qh*qw, qh*qw)
                bias = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)  # (Bw, heads, qh*qw, hd)
        out = out.transpose(1, 2).reshape(-1, qh, qw, C)  # (Bw, qh, qw, C)
        if window_size > 0:
            out = window_unpartition(out, window_size, pad_hw, (H, W))
        return self.proj(out)


class Mlp(nn.Module):
    """Transformer MLP: fc1 -> GELU -> fc2 (timm ``Mlp`` names)."""

    def __init__(self, *, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with window or global attention (detectron2 ``Block``)."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, ln_eps: float = 1e-6, use_rel_pos: bool = True,
                 window_size: int = 0, input_size: tuple[int, int] | None = None, attention: str = "bias") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos,
                              input_size=input_size if window_size == 0 else (window_size, window_size),
                              attention=attention)
        self.drop_path = StochasticDepth(drop_path, "row")
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor, law: LawFactors | None = None) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x), self.window_size, law))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, *, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, C, h, w) -> (B, h, w, C)


class ViT(nn.Module):
    """ViTDet plain ViT backbone returning the last feature map (no neck)."""

    def __init__(self, *, img_size: int = 448, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.1, ln_eps: float = 1e-6,
                 use_abs_pos: bool = True, use_rel_pos: bool = True, pretrain_img_size: int = 224,
                 pretrain_use_cls_token: bool = True, pos_resize: str = "bicubic",
                 window_size: int = 14, global_blocks: tuple[int, ...] = (2, 5, 8, 11),
                 pos_init: str = "trunc_normal", attention: str = "bias") -> None:
        """
        Args:
            img_size: input canvas size; patch_size: patch (and stride) of the patch embedding.
            embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer's shape.
            drop_path_rate: stochastic depth rate of the last block (linear over depth).
            ln_eps: LayerNorm eps (1e-6 in ViTDet; 1e-5 in the authors' MindSpore code).
            use_abs_pos: add absolute position embeddings, stored on the pretraining grid
                ``pretrain_img_size / patch_size`` (with a cls slot when
                ``pretrain_use_cls_token``) and resized with ``pos_resize``
                ("bicubic" as detectron2, or "tf_bicubic" as the authors' MindSpore code).
            use_rel_pos: decomposed relative position in every block.
            window_size: window of the window-attention blocks; global_blocks: indexes of the
                blocks with global attention.
            pos_init: "trunc_normal" (detectron2) or "sincos" (MAE's 2D sin-cos table, for a
                backbone trained from scratch).
            attention: "bias" or "fold", how relative position enters attention (see
                :class:`Attention`; the same numbers either way).
        """
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.pos_resize = pos_resize
        if use_abs_pos:
            num_patches = (pretrain_img_size // patch_size) ** 2
            num_positions = num_patches + 1 if pretrain_use_cls_token else num_patches
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        else:
            self.pos_embed = None
        grid = img_size // patch_size
        self.blocks = nn.ModuleList(
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                  drop_path=drop_path_rate * i / max(depth - 1, 1), ln_eps=ln_eps, use_rel_pos=use_rel_pos,
                  window_size=0 if i in global_blocks else window_size, input_size=(grid, grid),
                  attention=attention)
            for i in range(depth))
        self.embed_dim = embed_dim
        self.reset_parameters(pos_init)

    def reset_parameters(self, pos_init: str = "trunc_normal") -> None:
        """detectron2's init: truncated normal (std 0.02) Linear weights and position table,
        zero biases, unit LayerNorms, zero relative position tables."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.pos_embed is None:
            return
        if pos_init == "trunc_normal":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        elif pos_init == "sincos":
            grid = int(round((self.pos_embed.shape[1] - self.pretrain_use_cls_token) ** 0.5))
            with torch.no_grad():
                self.pos_embed.copy_(sincos_pos_embed(self.embed_dim, grid, self.pretrain_use_cls_token))
        else:
            raise ValueError(f"unknown pos_init {pos_init!r}; expected 'trunc_normal' or 'sincos'")

    def forward(self, x: torch.Tensor, law: list[LawFactors] | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, 3, H, W) normalised images.
            law: one LawFactors per block (from the weight generator), or None for plain ViTDet.
        Returns:
            (B, C, H/p, W/p) feature map of the last block.
        """
        if law is not None and len(law) != len(self.blocks):
            raise ValueError(f"got {len(law)} LAW factor sets for {len(self.blocks)} blocks")
        x = self.patch_embed(x)  # (B, h, w, C)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, x.shape[1:3], self.pos_resize)
        for i, block in enumerate(self.blocks):
            x = block(x, None if law is None else law[i])
        return x.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
