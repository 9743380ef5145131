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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform weights for the ReLU layers of the MLP and a variance-keeping last layer,
        so that the box logits start O(1) and the box is not stuck at the canvas centre."""
        for i, layer in enumerate(self.mlp.layers):
            gain = 3.0 if i == len(self.mlp.layers) - 1 else 6.0
            bound = (gain / layer.in_features) ** 0.5
            nn.init.uniform_(layer.weight, -bound, bound)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor, text_cls: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (B, C, H, W) visual features; text_cls: (B, Dt) text [CLS] feature.
        Returns:
            (B, 4) box logits; ``sigmoid`` gives normalised (cx, cy, w, h) on the canvas.
        """
        return self.mlp(self.pool(features, text_cls))

    def pool(self, features: torch.Tensor, text_cls: torch.Tensor) -> torch.Tensor:
        """The language-guided pooled feature the MLP reads: (B, C, H, W), (B, Dt) -> (B, C)."""
        tokens = features.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C), index h*W + w
        q = self.q_proj(text_cls)[:, None, None, :]  # (B, 1, 1, A)
        k = self.k_proj(tokens)[:, None]  # (B, 1, HW, A)
        return F.scaled_dot_product_attention(q, k, tokens[:, None])[:, 0, 0]  # (B, 1, 1, C) -> (B, C)

    def attention(self, features: torch.Tensor, text_cls: torch.Tensor) -> torch.Tensor:
        """Where the pooling looks: its weights over the feature map, softmax(q.k / sqrt(A)),
        (B, C, H, W) and (B, Dt) -> (B, H, W), each map summing to 1."""
        B, _, H, W = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k = self.q_proj(text_cls), self.k_proj(tokens)  # (B, A), (B, HW, A)
        logits = (k @ q[:, :, None])[..., 0] / q.shape[-1] ** 0.5  # (B, HW, A) @ (B, A, 1) -> (B, HW)
        return logits.softmax(-1).view(B, H, W)


class ExistenceHead(nn.Module):
    """Whether the expression names anything in the image (not in the paper; off by default): an
    MLP on the box head's language-guided pooled feature and the text [CLS] feature, one logit."""

    def __init__(self, *, embed_dim: int = 768, text_dim: int = 768, hidden_dim: int = 256) -> None:
        super().__init__()
        self.mlp = MLP(in_dim=embed_dim + text_dim, hidden_dim=hidden_dim, out_dim=1, num_layers=2)

    def forward(self, pooled: torch.Tensor, text_cls: torch.Tensor) -> torch.Tensor:
        """(B, C) pooled feature and (B, Dt) text [CLS] -> (B,) logits; ``sigmoid`` gives ``exists``."""
        return self.mlp(torch.cat([pooled, text_cls], -1))[:, 0]


def conv_transpose_2x2(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """``conv`` (kernel 2, stride 2) on a channels-last map as one matmul:
    (B, H, W, Cin) -> (B, 2H, 2W, Cout). Equal to ``conv`` on (B, Cin, H, W), permuted."""
    B, H, W, _ = x.shape
    cout = conv.out_channels
    y = x @ conv.weight.flatten(1)  # (B, H, W, Cin) @ (Cin, Cout*2*2) -> (B, H, W, Cout*4)
    # (B, H, W, Cout, 2, 2) -> (B, H, 2, W, 2, Cout) -> (B, 2H, 2W, Cout)
    y = y.view(B, H, W, cout, 2, 2).permute(0, 1, 4, 2, 5, 3).reshape(B, 2 * H, 2 * W, cout)
    return y + conv.bias


class MaskHead(nn.Module):
    """Up-samples the features x4 into pixel embeddings of width Dt and scores each pixel by
    its dot product with the text [CLS] feature; bilinear (align_corners=True) to the canvas.

    ``upsample`` is ConvT(C->hidden, k2 s2) -> channel LayerNorm -> GELU -> ConvT(hidden->Dt, k2 s2).
    The forward folds the [CLS] dot product into the last ConvT (sum_c cls_c (W_c h + b_c) =
    (sum_c cls_c W_c) h + cls.b), so the (B, Dt, 4H, 4W) pixel embeddings are never built
    (``upsample(features)`` builds them, for inspection).
    """

    def __init__(self, *, embed_dim: int = 768, text_dim: int = 768, hidden_dim: int = 256,
                 ln_eps: float = 1e-6) -> None:
        super().__init__()
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, hidden_dim, kernel_size=2, stride=2),
            LayerNorm2d(hidden_dim, eps=ln_eps),
            nn.GELU(),
            nn.ConvTranspose2d(hidden_dim, text_dim, kernel_size=2, stride=2),
        )

    def _hidden(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 2H, 2W, hidden): the first ConvT, LayerNorm and GELU, channels-last."""
        conv, norm, act, _ = self.upsample
        x = conv_transpose_2x2(features.permute(0, 2, 3, 1), conv)
        return act(F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps))

    def forward(self, features: torch.Tensor, text_cls: torch.Tensor, size: int) -> torch.Tensor:
        """
        Args:
            features: (B, C, H, W); text_cls: (B, Dt); size: canvas side S.
        Returns:
            (B, 1, S, S) mask logits.
        """
        conv = self.upsample[3]
        x = self._hidden(features)  # (B, 2H, 2W, hid)
        B, H2, W2, hid = x.shape
        # the last ConvT contracted with the text: (hid, Dt, 2, 2) x (B, Dt) -> (B, hid, 2*2)
        w = torch.einsum("idkl,bd->bikl", conv.weight, text_cls).reshape(B, hid, 4)
        bias = text_cls @ conv.bias  # (B,)
        logits = torch.bmm(x.reshape(B, H2 * W2, hid), w)  # (B, H2*W2, hid) @ (B, hid, 4) -> (B, H2*W2, 4)
        # (B, H2, W2, 2, 2) -> (B, H2, 2, W2, 2) -> (B, 1, 2*H2, 2*W2)
        logits = logits.view(B, H2, W2, 2, 2).permute(0, 1, 3, 2, 4).reshape(B, 1, 2 * H2, 2 * W2)
        logits = logits + bias[:, None, None, None]
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)
