"""The EAT transformer block: post-LN (BERT / data2vec style), returning the FFN output as a target.

Parameter names follow the official ``AltBlock`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``) so released checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as recompute_in_backward

from eat_plugin.modules.attention import Attention


def run_layer(layer: nn.Module, x: Tensor, recompute: bool = False, **kwargs):
    """``layer(x, **kwargs)``; with ``recompute`` (activation checkpointing), while training with gradients,
    only ``x`` is kept and the layer runs again in the backward, replaying its dropout / drop-path draws."""
    if recompute and layer.training and torch.is_grad_enabled():
        return recompute_in_backward(layer, x, use_reentrant=False, **kwargs)
    return layer(x, **kwargs)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p`` (training only).

    ``uniform``: optional ``(B,)`` U[0, 1) draws, one per sample (a sample is kept where ``u < 1 - p``);
    without it the draws come from the global RNG.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor, uniform: Optional[Tensor] = None) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        if uniform is None:
            return x * x.new_empty(shape).bernoulli_(keep).div_(keep)
        return x * (uniform < keep).to(x.dtype).view(shape).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (timm ``Mlp``)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class PostLNBlock(nn.Module):
    """``x = norm1(x + attn(x)); t = mlp(x); x = norm2(x + t)``; returns ``(x, t)``.

    Args:
        dim: width D.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        drop: dropout after the attention projection (official ``encoder_dropout``).
        attn_drop: attention-weight dropout (``attention_dropout``).
        mlp_drop: dropout inside the MLP (``activation_dropout``).
        post_mlp_drop: dropout on the MLP output before the residual (``post_mlp_drop``).
        drop_path: stochastic depth rate of both residual branches.
        norm_eps, norm_affine: LayerNorm settings.
        ffn_targets: return the FFN output ``t`` (True in EAT) or the block output as the target.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        mlp_drop: float = 0.0,
        post_mlp_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        norm_affine: bool = True,
        ffn_targets: bool = True,
    ):
        super().__init__()
        self.attn = Attention(dim, num_heads, qkv_bias=True, attn_drop=attn_drop, proj_drop=drop)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_affine)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=mlp_drop)
        self.post_mlp_dropout = nn.Dropout(post_mlp_drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_affine)
        self.drop_path = DropPath(drop_path)
        self.ffn_targets = ffn_targets

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None,
                path_draws: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` ``(B, N, D)`` -> ``(x, target)``, both ``(B, N, D)``.

        ``path_draws``: optional ``(B, 2)`` U[0, 1) draws for the two branches' stochastic depth.
        """
        attn_draw, mlp_draw = path_draws.unbind(1) if path_draws is not None else (None, None)  # (B,) each
        x = self.norm1(x + self.drop_path(self.attn(x, padding_mask), attn_draw))  # (B, N, D)
        ffn = self.mlp(x)  # (B, N, D)
        x = self.norm2(x + self.drop_path(self.post_mlp_dropout(ffn), mlp_draw))  # (B, N, D)
        return x, (ffn if self.ffn_targets else x)
