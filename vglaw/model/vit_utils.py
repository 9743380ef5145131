"""Pure tensor helpers of the ViTDet backbone: windows, relative and absolute positions.

Ported from detectron2 ``modeling/backbone/utils.py`` (window_partition, get_rel_pos,
add_decomposed_rel_pos, get_abs_pos) and MAE ``util/pos_embed.py`` (sin-cos table), with the
relative position returned as an additive attention bias so that fused attention can use it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a (B, H, W, C) map into non-overlapping windows, zero-padding H and W up to a
    multiple of ``window_size``. Returns (B * nW, ws, ws, C) and the padded size (Hp, Wp)."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    # (B, nh, ws, nw, ws, C) -> (B, nh, nw, ws, ws, C) -> (B*nh*nw, ws, ws, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int],
                       hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C), padding removed."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    # (B*nh*nw, ws, ws, C) -> (B, nh, nw, ws, ws, C) -> (B, nh, ws, nw, ws, C) -> (B, Hp, Wp, C)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W, :].contiguous() if (Hp > H or Wp > W) else x


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a (L, C) relative position table to (length, C), as detectron2 does."""
    if rel_pos.shape[0] == length:
        return rel_pos
    # (L, C) -> (1, C, L) -> (1, C, length) -> (length, C)
    resized = F.interpolate(rel_pos.t()[None], size=length, mode="linear")
    return resized[0].t()


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative positional embeddings for every (query, key) pair along one axis.

    Args:
        q_size, k_size: query and key sizes along the axis.
        rel_pos: (L, C) table; resized linearly when L != 2 * max(q_size, k_size) - 1.
    Returns:
        (q_size, k_size, C) embeddings.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    rel_pos = resize_rel_pos(rel_pos, max_rel_dist)
    # scale the coords with the short length if q and k sizes differ (detectron2)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def decomposed_rel_pos_terms(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                             q_hw: tuple[int, int], k_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of decomposed relative position (MViTv2 / detectron2
    ``add_decomposed_rel_pos``): the logit of query (y, x) for key (i, j) gains
    ``rel_h[y, x, i] + rel_w[y, x, j]``.

    Args:
        q: (N, q_h * q_w, C) unscaled queries (N = batch x heads).
        rel_pos_h, rel_pos_w: (L, C) tables along height and width.
    Returns:
        rel_h (N, q_h * q_w, k_h) and rel_w (N, q_h * q_w, k_w).
    """
    q_h, q_w = q_hw
    k_h, k_w = k_hw
    Rh = get_rel_pos(q_h, k_h, rel_pos_h)  # (q_h, k_h, C)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w)  # (q_w, k_w, C)
    N, _, C = q.shape
    r_q = q.reshape(N, q_h, q_w, C)
    rel_h = torch.einsum("nhwc,hkc->nhwk", r_q, Rh)  # (N, q_h, q_w, k_h)
    rel_w = torch.einsum("nhwc,wkc->nhwk", r_q, Rw)  # (N, q_h, q_w, k_w)
    return rel_h.reshape(N, q_h * q_w, k_h), rel_w.reshape(N, q_h * q_w, k_w)


def fold_rel_pos(q: torch.Tensor, k: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                 k_hw: tuple[int, int], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys with the decomposed relative position folded in as extra channels, so
    that attention needs no bias (and a fused kernel applies): q' = [q, rel_h / scale,
    rel_w / scale], k' = [k, onehot(row), onehot(column)], hence
    scale * q'.k' = scale * q.k + rel_h[row] + rel_w[column], the biased logit exactly.

    Args:
        q, k: (..., Nq, C) and (..., k_h * k_w, C); rel_h (..., Nq, k_h), rel_w (..., Nq, k_w).
    Returns:
        (..., Nq, C + k_h + k_w) queries and (..., k_h * k_w, C + k_h + k_w) keys.
    """
    k_h, k_w = k_hw
    key = torch.arange(k_h * k_w, device=k.device)  # key n sits at row n // k_w, column n % k_w
    onehots = torch.cat([F.one_hot(key // k_w, k_h), F.one_hot(key % k_w, k_w)], dim=-1).to(k.dtype)  # (Nk, kh+kw)
    q = torch.cat([q, rel_h / scale, rel_w / scale], dim=-1)
    k = torch.cat([k, onehots.expand(*k.shape[:-2], -1, -1)], dim=-1)
    return q, k


def keys_cubic_matrix(n_in: int, n_out: int, a: float = -0.5) -> torch.Tensor:
    """(n_out, n_in) matrix of TF/MindSpore ``ResizeBicubic(half_pixel_centers=True)``: Keys cubic
    with ``a``; taps outside [0, n_in) are dropped and the remaining weights renormalised."""
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5
    first = torch.floor(src)
    taps = first[:, None] + torch.arange(-1, 3, dtype=torch.float64)[None, :]  # (n_out, 4)
    t = (taps - src[:, None]).abs()
    w = torch.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    torch.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, torch.zeros_like(t)))
    inside = (taps >= 0) & (taps < n_in)
    w = torch.where(inside, w, torch.zeros_like(w))
    w = w / w.sum(dim=1, keepdim=True)
    M = torch.zeros(n_out, n_in, dtype=torch.float64)
    M.scatter_add_(1, taps.clamp(0, n_in - 1).long(), w)
    return M


def get_abs_pos(abs_pos: torch.Tensor, has_cls_token: bool, hw: tuple[int, int],
                mode: str = "bicubic") -> torch.Tensor:
    """Absolute positional embeddings resized to the feature grid (detectron2 ``get_abs_pos``).

    Args:
        abs_pos: (1, num_position, C) table, with a leading cls slot when ``has_cls_token``.
        hw: the feature grid (H, W).
        mode: ``"bicubic"`` (torch ``F.interpolate``, as detectron2) or ``"tf_bicubic"``
            (Keys a=-0.5, taps outside the grid dropped: what the authors' MindSpore code runs).
    Returns:
        (1, H, W, C) embeddings.
    """
    h, w = hw
    if has_cls_token:
        abs_pos = abs_pos[:, 1:]
    size = int(math.sqrt(abs_pos.shape[1]))
    if size * size != abs_pos.shape[1]:
        raise ValueError(f"pos_embed has {abs_pos.shape[1]} positions, not a square grid")
    grid = abs_pos.reshape(1, size, size, -1)
    if (size, size) == (h, w):
        return grid
    if mode == "bicubic":
        # (1, S, S, C) -> (1, C, S, S) -> (1, C, h, w) -> (1, h, w, C)
        resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                                align_corners=False)
        return resized.permute(0, 2, 3, 1)
    if mode == "tf_bicubic":
        Mh = keys_cubic_matrix(size, h).to(grid)
        Mw = keys_cubic_matrix(size, w).to(grid)
        # (h, S) x (S, S, C) x (w, S) -> (h, w, C)
        return torch.einsum("oi,ijc,pj->opc", Mh, grid[0], Mw)[None]
    raise ValueError(f"unknown pos_resize mode {mode!r}; expected 'bicubic' or 'tf_bicubic'")


def sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """2D sin-cos position table as MAE initialises it: (1, [1 +] grid_size**2, embed_dim)."""
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim % 4 == 0, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # w varies fastest

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))
        out = pos.reshape(-1)[:, None] * omega[None]  # (M, D/4)
        return torch.cat([out.sin(), out.cos()], dim=1)  # (M, D/2)

    table = torch.cat([one_axis(grid_w), one_axis(grid_h)], dim=1)  # (M, D)
    if cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), table], dim=0)
    return table[None].float()
