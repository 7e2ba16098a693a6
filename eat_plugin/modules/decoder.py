"""EAT's light CNN decoder (official ``Decoder2d``): predicts teacher targets for every patch.

Each layer: grouped ``k x k`` conv -> (SamePad2d) -> LayerNorm over channels without affine -> GELU,
with a residual connection; then a Linear back to the model width. Parameter paths match the official
``decoder.blocks.{i}.0.{weight,bias}`` and ``decoder.proj.*``.

The feature maps live in channels-last memory (``(R, H, W, C)`` in memory, ``(R, C, H, W)`` to the conv):
the ``(R, N, D)`` tokens are already that layout, the convolutions run faster in it, and the channel
LayerNorm reads contiguous rows, so the decoder makes no layout copies (the official one makes four
per layer). ``checkpoint``: recompute each layer's activations in the backward instead of keeping them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from eat_plugin.modules.block import run_layer


class SamePad2d(nn.Module):
    """Drop the last row and column that an even kernel with ``padding=k//2`` adds (no-op for odd k)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : -self.remove, : -self.remove] if self.remove else x


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(R, C, H, W)``, no affine parameters (eps 1e-5)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # (R, H, W, C): contiguous for a channels-last input
        x = F.layer_norm(x, (self.channels,), eps=self.eps)
        return x.permute(0, 3, 1, 2)  # (R, C, H, W)


class CNNDecoder(nn.Module):
    """``(R, N, D)`` tokens on a ``grid_h x grid_w`` patch grid -> ``(R, N, D)`` predictions.

    Args:
        embed_dim: model width D (input and output).
        decoder_dim: conv channels.
        groups: conv groups (must divide ``decoder_dim`` and ``embed_dim``).
        kernel: conv kernel size.
        layers: number of conv layers.
        grid_h, grid_w: patch grid (time patches, frequency patches).
        residual: add each layer's input when the channel counts match.
        checkpoint: recompute each layer in the backward (activation checkpointing; training only).
    """

    def __init__(self, embed_dim: int, decoder_dim: int, groups: int, kernel: int, layers: int, grid_h: int,
                 grid_w: int, residual: bool = True, checkpoint: bool = False):
        super().__init__()
        self.checkpoint = checkpoint
        if decoder_dim % groups or embed_dim % groups:
            raise ValueError(f"decoder_groups={groups} must divide decoder_dim={decoder_dim} and embed_dim={embed_dim}")
        self.grid_h, self.grid_w = grid_h, grid_w
        self.residual = residual

        def layer(in_dim: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_dim, decoder_dim, kernel_size=kernel, padding=kernel // 2, groups=groups),
                SamePad2d(kernel),
                ChannelLayerNorm(decoder_dim),
                nn.GELU(),
            )

        self.blocks = nn.Sequential(*[layer(embed_dim if i == 0 else decoder_dim) for i in range(layers)])
        self.proj = nn.Linear(decoder_dim, embed_dim)

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        rows, tokens, dim = x.shape
        if tokens != self.grid_h * self.grid_w:
            raise ValueError(
                f"the decoder was built for a {self.grid_h}x{self.grid_w} patch grid ({self.grid_h * self.grid_w} "
                f"patches) but got {tokens}; pre-train with the model's target_length"
            )
        x = x.reshape(rows, self.grid_h, self.grid_w, dim).permute(0, 3, 1, 2)  # (R, D, H, W), channels-last
        for block in self.blocks:
            out = run_layer(block, x, self.checkpoint)  # (R, C, H, W)
            x = out + x if self.residual and out.size(1) == x.size(1) else out
        x = x.permute(0, 2, 3, 1).reshape(rows, tokens, -1)  # (R, N, C): a view of channels-last memory
        return self.proj(x)  # (R, N, D)
