"""Language Adaptive Weights (LAW): the weight generator and the adaptive qkv projection.

The generator turns the expression into per-sample, per-block factors; the backbone takes
them as an explicit argument and applies them with :func:`adaptive_qkv`. Every ``law_type``
starts as the identity (the static backbone) because the last layer of each per-block MLP
is initialised to produce "no change".

law types (C = visual width, K = ``rank``):
    svd   qkv = W0 x + b + S Phi_i D x       Phi_i (B, K, K); S (3C, K), D (K, C) shared by blocks
    la    qkv = W0 (s_i * x) + b             s_i (B, G, C) input-channel scales, G = ``groups``
    od1   qkv = o_i * (W0 (s_i * x)) + b     one input scale for q, k and v
    od2   same, input scales split (q, k) | v
    od3   same, input scales split q | k | v
    none  no generator: the static ViTDet backbone
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

LAW_TYPES = ("svd", "la", "od1", "od2", "od3", "none")
_OD_GROUPS = {"od1": 1, "od2": 2, "od3": 3}


@dataclass
class LawFactors:
    """Language-adaptive factors for one block's qkv projection (all optional).

    Attributes:
        S: (3C, K) and D: (K, C) static low-rank bases; Phi: (B, K, K) per-sample core.
        in_scale: (B, G, C) scales of the qkv input, G in {1, 2, 3} row groups of the weight
            (all of qkv | (q, k) and v | q, k and v).
        out_scale: (B, 3C) scales of the qkv output (before the bias).
    """

    S: torch.Tensor | None = None
    Phi: torch.Tensor | None = None
    D: torch.Tensor | None = None
    in_scale: torch.Tensor | None = None
    out_scale: torch.Tensor | None = None


def _group_rows(out_features: int, groups: int) -> list[int]:
    """Row counts of the weight's input-scale groups: 3C split as [3C], [2C, C] or [C, C, C]."""
    c = out_features // 3
    return {1: [3 * c], 2: [2 * c, c], 3: [c, c, c]}[groups]


def adaptive_qkv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 law: LawFactors | None) -> torch.Tensor:
    """The qkv projection with per-sample language-adaptive weights.

    Args:
        x: (B, N, C) tokens; each sample's factors apply to all of its N tokens.
        weight: (3C, C) static weight W0; bias: (3C,) static bias b.
        law: the block's factors, or None for the static projection.
    Returns:
        (B, N, 3C), equal to x @ W_b.T + b with W_b the sample's effective weight.
    """
    if law is None:
        return F.linear(x, weight, bias)
    if law.in_scale is None and law.out_scale is None:
        out, bias = F.linear(x, weight, bias), None  # the bias is fused into the GEMM
    elif law.in_scale is None:
        out = F.linear(x, weight)
    else:
        rows = _group_rows(weight.shape[0], law.in_scale.shape[1])
        parts = [F.linear(x * law.in_scale[:, g, None, :], w)  # (B, N, C) * (B, 1, C)
                 for g, w in enumerate(weight.split(rows, dim=0))]
        out = torch.cat(parts, dim=-1)
    if law.out_scale is not None:
        out = out * law.out_scale[:, None, :]  # (B, N, 3C) * (B, 1, 3C)
    if law.Phi is not None:
        # S Phi D x for every token, (B, N, C) @ (C, K) @ (B, K, K)^T @ (K, 3C), accumulated into
        # ``out`` by a second GEMM (beta = 1): no extra pass over the (B, N, 3C) output
        with record_function("law.low_rank"):  # a profiler label for LAW's own work (benchmarks/bench.py)
            low = torch.bmm(F.linear(x, law.D), law.Phi.transpose(1, 2))  # (B, N, K)
            # addmm_ is not autocast-aware: under bf16/fp16 autocast ``out`` and ``low`` are half, S is not
            out.view(-1, out.shape[-1]).addmm_(low.flatten(0, 1).to(out.dtype), law.S.t().to(out.dtype))
    return out if bias is None else out + bias


class WeightGenerator(nn.Module):
    """Generates the LAW factors of every backbone block from the text features.

    One learnable embedding per block queries the text tokens through a multi-head attention
    pooling without q/k/v/out projections; a per-block MLP
    ``Linear(Dt, Dt/r) -> LayerNorm -> GELU -> Linear(Dt/r, out)`` maps the pooled feature to
    the block's factors. The last Linear starts at "no change" (zero, or one for scales).
    """

    def __init__(self, *, law_type: str = "svd", depth: int = 12, text_dim: int = 768,
                 embed_dim: int = 768, rank: int = 32, groups: int = 1, num_heads: int = 12,
                 reduction: int = 16, ln_eps: float = 1e-5) -> None:
        """
        Args:
            law_type: one of "svd", "la", "od1", "od2", "od3" (see the module docstring).
            depth: number of backbone blocks (one factor set each).
            text_dim: Dt, width of the text features; embed_dim: C, width of the backbone.
            rank: K of the svd factors; groups: input-scale groups of "la" (1, 2 or 3).
            num_heads: heads of the attention pooling (must divide text_dim).
            reduction: hidden width of the per-block MLP is text_dim // reduction.
            ln_eps: eps of the MLP's LayerNorm (the authors' MindSpore code uses 1e-7).
        """
        super().__init__()
        if law_type not in LAW_TYPES or law_type == "none":
            raise ValueError(f"WeightGenerator law_type must be one of {LAW_TYPES[:-1]}, got {law_type!r}")
        if text_dim % num_heads:
            raise ValueError(f"text_dim {text_dim} is not divisible by num_heads {num_heads}")
        self.law_type, self.depth, self.num_heads = law_type, depth, num_heads
        self.embed_dim, self.rank = embed_dim, rank
        self.groups = _OD_GROUPS.get(law_type, groups)
        if self.groups not in (1, 2, 3):
            raise ValueError(f"groups must be 1, 2 or 3, got {groups}")
        if law_type == "svd":
            out_dim = rank * rank
            self.S = nn.Parameter(torch.empty(3 * embed_dim, rank))
            self.D = nn.Parameter(torch.empty(rank, embed_dim))
        elif law_type == "la":
            out_dim = self.groups * embed_dim
        else:
            out_dim = self.groups * embed_dim + 3 * embed_dim
        self.layer_embed = nn.Parameter(torch.empty(depth, text_dim))
        hidden = max(text_dim // reduction, 1)
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(text_dim, hidden), nn.LayerNorm(hidden, eps=ln_eps), nn.GELU(),
                          nn.Linear(hidden, out_dim))
            for _ in range(depth))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # kaiming-uniform for the learnable bases and queries; the last layers start at "no change"
        nn.init.kaiming_uniform_(self.layer_embed, a=math.sqrt(5))
        if self.law_type == "svd":
            nn.init.kaiming_uniform_(self.S, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.D, a=math.sqrt(5))
        for mlp in self.mlps:
            nn.init.zeros_(mlp[3].weight)
            nn.init.constant_(mlp[3].bias, 0.0 if self.law_type == "svd" else 1.0)

    def pool(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Per-block text features: (B, L, Dt) tokens, (B, L) mask (1 = token) -> (depth, B, Dt)."""
        B, L, Dt = text.shape
        h, hd = self.num_heads, Dt // self.num_heads
        # queries (depth, Dt) -> (1, h, depth, hd); keys = values (B, L, Dt) -> (B, h, L, hd)
        q = self.layer_embed.view(1, self.depth, h, hd).transpose(1, 2).expand(B, -1, -1, -1)
        kv = text.view(B, L, h, hd).transpose(1, 2)
        keep = text_mask.bool()[:, None, None, :]  # (B, 1, 1, L), True = attend
        pooled = F.scaled_dot_product_attention(q, kv, kv, attn_mask=keep)  # (B, h, depth, hd)
        return pooled.permute(2, 0, 1, 3).reshape(self.depth, B, Dt)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> list[LawFactors]:
        """Args: text (B, L, Dt) token features; text_mask (B, L), 1 for tokens, 0 for padding.
        Returns: one :class:`LawFactors` per block."""
        pooled = self.pool(text, text_mask)  # (depth, B, Dt)
        B, C = text.shape[0], self.embed_dim
        factors = []
        for i, mlp in enumerate(self.mlps):
            out = mlp(pooled[i])  # (B, out_dim)
            if self.law_type == "svd":
                factors.append(LawFactors(S=self.S, Phi=out.view(B, self.rank, self.rank), D=self.D))
            elif self.law_type == "la":
                factors.append(LawFactors(in_scale=out.view(B, self.groups, C)))
            else:
                in_scale, out_scale = out.split([self.groups * C, 3 * C], dim=1)
                factors.append(LawFactors(in_scale=in_scale.view(B, self.groups, C), out_scale=out_scale))
        return factors
