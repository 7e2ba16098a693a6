"""The spectrogram front of the model: patch embedding, fixed 2-D sin-cos positions, CLS, context norm.

Official name: the "IMAGE" modality encoder (data2vec 2.0's ``ImageEncoder``). Parameter paths are the
official ones (``local_encoder.proj``, ``fixed_positional_encoder.positions``, ``extra_tokens``,
``context_encoder.norm``, ``decoder``) so released checkpoints load unchanged.

Shapes: B clips, R = B * clone_batch masked rows, T frames, F = 128 mel bins, N = (T/16)*(F/16) patches
(time-major: index = t * 8 + f), E extra (CLS) tokens, D width.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.modules import GradMultiply
from torch import Tensor, nn

from eat_plugin.layout import NUM_MEL_BINS
from eat_plugin.modules.block import PostLNBlock



def sincos_pos_table(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """MAE-style fixed 2-D sin-cos positions for a ``grid_h x grid_w`` grid, rows flattened row-major.

    The first ``dim/2`` channels encode the column (frequency) index, the last ``dim/2`` the row (time)
    index; each half is ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (dim/4))``.

    Returns:
        ``(grid_h * grid_w, dim)`` float32.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos positions need embed_dim divisible by 4, got {dim}")
    omega = np.arange(dim // 4, dtype=np.float32)  # float32 throughout, as the official table
    omega = 1.0 / 10000 ** (omega / np.float32(dim / 4.0))  # (D/4,)
    cols, rows = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))  # (H, W)

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = np.einsum("m,d->md", pos.reshape(-1), omega)  # (H*W, D/4)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # (H*W, D/2)

    return torch.from_numpy(np.concatenate([encode(cols), encode(rows)], axis=1)).float()  # (H*W, D)


def to_patches(x: Tensor, patch_size: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, N, C * p * p)``: the non-overlapping p x p patches, time-major (row by row of
    the patch grid), each flattened channel, row, column as a ``Conv2d`` kernel is; rows / columns past the
    last whole patch are dropped, as by the strided convolution."""
    p = patch_size
    batch, channels, height, width = x.shape
    rows, cols = height // p, width // p
    x = x[:, :, : rows * p, : cols * p]  # (B, C, rows * p, cols * p): whole patches only
    x = x.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, p, p)
    return x.reshape(batch, rows * cols, channels * p * p)  # (B, N, C * p * p)


class PatchEmbed(nn.Module):
    """16x16 non-overlapping patches of ``(B, 1, T, 128)`` -> ``(B, N, D)`` tokens, time-major.

    The weights are the official ``Conv2d`` (``proj.weight`` ``(D, C, 16, 16)``, ``proj.bias``); the forward
    computes that convolution as what it is for non-overlapping patches, one matrix product of the
    ``(B, N, C * 256)`` patches with the ``(D, C * 256)`` kernel: the same values (bit for bit on the CPU
    kernels measured) in half the time of the CPU convolution (forward + backward at EAT-base, 12 clips:
    27 instead of 39 ms), since a 1-channel convolution with a 16x16 stride is a poor case for its kernels.
    Rows / columns past the last whole patch are dropped, as by the convolution.
    """

    def __init__(self, embed_dim: int, patch_size: int = 16, in_chans: int = 1):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        weight = self.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))

    def forward(self, x: Tensor) -> Tensor:
        patches = to_patches(x, self.patch_size)  # (B, N, C * p * p)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)  # (D, C * p * p)
        return F.linear(patches, weight, self.proj.bias)  # (B, N, D)


class FixedPositionalEncoder(nn.Module):
    """Holds the frozen table ``positions`` ``(1, max_length * 8, D)``; sliced to the input length."""

    def __init__(self, table: Tensor):
        super().__init__()
        self.positions = nn.Parameter(table.unsqueeze(0), requires_grad=False)

    def forward(self, num_tokens: int) -> Tensor:
        if num_tokens > self.positions.size(1):
            raise ValueError(
                f"input has {num_tokens} patches but the positions table has {self.positions.size(1)} rows; "
                f"raise model.modalities.image.max_length (time patches) or shorten target_length"
            )
        return self.positions[:, :num_tokens]  # (1, N, D)


class ContextEncoder(nn.Module):
    """LayerNorm over ``[CLS; patches]`` before the (usually empty, ``prenet_depth=0``) prenet blocks."""

    def __init__(self, blocks: List[PostLNBlock], dim: int, norm_eps: float, norm_affine: bool, dropout: float,
                 layerdrop: float):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_affine)
        self.dropout = nn.Dropout(dropout)
        self.layerdrop = layerdrop

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.norm(x))  # (R, E + N', D)
        for block in self.blocks:
            if not self.training or self.layerdrop == 0 or float(torch.rand(())) > self.layerdrop:
                x, _ = block(x)
        return x


class AudioEncoder(nn.Module):
    """Patch embedding + positions + extra tokens + context encoder (+ the CNN decoder, student only).

    Args:
        embed_dim: D.
        target_length: frames T of the training input (sets the decoder's patch grid).
        max_length: time patches covered by the positions table (768 -> 12,288 frames).
        num_extra_tokens: E (1: the CLS token).
        init_extra_token_zero: zero-init the extra tokens instead of N(0, 1).
        context_blocks: prenet blocks (empty in EAT).
        local_grad_mult: gradient scale into the patch conv (1.0: plain; 0: frozen under no_grad).
        decoder: the CNN decoder, or None (teacher, fine-tuning).
    """

    def __init__(
        self,
        embed_dim: int,
        target_length: int,
        max_length: int,
        patch_size: int = 16,
        num_extra_tokens: int = 1,
        init_extra_token_zero: bool = False,
        context_blocks: Optional[List[PostLNBlock]] = None,
        norm_eps: float = 1e-6,
        norm_affine: bool = True,
        prenet_dropout: float = 0.0,
        prenet_layerdrop: float = 0.0,
        local_grad_mult: float = 1.0,
        decoder: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.grid_w = NUM_MEL_BINS // patch_size
        self.grid_h = target_length // patch_size
        self.num_extra_tokens = num_extra_tokens
        self.local_grad_mult = local_grad_mult
        self.local_encoder = PatchEmbed(embed_dim, patch_size)
        self.fixed_positional_encoder = FixedPositionalEncoder(sincos_pos_table(embed_dim, max_length, self.grid_w))
        self.extra_tokens = nn.Parameter(torch.zeros(1, num_extra_tokens, embed_dim)) if num_extra_tokens else None
        if self.extra_tokens is not None and not init_extra_token_zero:
            nn.init.normal_(self.extra_tokens)
        self.context_encoder = ContextEncoder(context_blocks or [], embed_dim, norm_eps, norm_affine, prenet_dropout,
                                              prenet_layerdrop)
        self.decoder = decoder

    def reset_parameters(self) -> None:
        if self.decoder is not None:
            self.decoder.reset_parameters()

    def embed(self, source: Tensor) -> Tensor:
        """``(B, 1, T, 128)`` -> patch tokens with positions ``(B, N, D)``."""
        if source.dim() != 4 or source.size(1) != 1 or source.size(3) != NUM_MEL_BINS:
            raise ValueError(f"expected fbank input of shape (B, 1, T, {NUM_MEL_BINS}), got {tuple(source.shape)}")
        if self.local_grad_mult == 0:
            with torch.no_grad():
                x = self.local_encoder(source)  # (B, N, D)
        else:
            x = self.local_encoder(source)  # (B, N, D)
            if self.local_grad_mult != 1.0:
                x = GradMultiply.apply(x, self.local_grad_mult)
        return x + self.fixed_positional_encoder(x.size(1))  # (B, N, D)

    def contextualize(self, tokens: Tensor) -> Tensor:
        """Prepend the extra tokens (no position) and run the context encoder: ``(R, N', D) -> (R, E + N', D)``."""
        if self.extra_tokens is not None:
            tokens = torch.cat([self.extra_tokens.expand(tokens.size(0), -1, -1), tokens], dim=1)  # (R, E + N', D)
        return self.context_encoder(tokens)

    def patchify(self, source: Tensor) -> Tensor:
        """``(B, 1, T, 128)`` -> pixels per patch ``(B, N, 256)``, time-major, rows of each patch first: the
        patches the embedding sees (for one channel the same order as MAE's ``nchpwq->nhwpqc``)."""
        return to_patches(source, self.patch_size)  # (B, N, p * p)
