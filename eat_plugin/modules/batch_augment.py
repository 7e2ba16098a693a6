"""Fine-tuning batch augmentations, in the official order: mixup / cutmix, then SpecAugment.

Both run inside the model on ``(B, 1, T, F)`` fbank batches (reference §4.3). Random draws use torch's
RNG, which fairseq reseeds every update (the same on every rank), so runs are reproducible; SpecAugment
also takes per-clip draws, which the fine-tuning model keys by clip so that they do not depend on how a
batch is split over ranks. Nothing waits for the device.
"""

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

MIXUP_PAIRS = ("flip", "adjacent")
SPEC_AUGMENT_DRAWS = 4  # per clip: frequency width, frequency start, time width, time start


class BatchMixup:
    """timm-style ``batch`` mixup/cutmix that mixes a batch with its flipped copy.

    With probability ``prob`` a λ is drawn (Beta(mixup_alpha, mixup_alpha), or Beta(cutmix_alpha, ...)
    for cutmix, chosen with ``switch_prob`` when both are on); inputs become ``λ·x + (1-λ)·flip(x)``
    (cutmix: a random time-frequency box pasted from ``flip(x)``, λ corrected to the box area) and the
    label vectors are mixed with the same λ: ``λ·y + (1-λ)·flip(y)``, so each row's label mass is kept.
    Odd batch sizes work: the middle row is mixed with itself.

    Args:
        mixup_alpha, cutmix_alpha: Beta parameters (0 disables that kind).
        prob: probability that a batch is mixed at all.
        switch_prob: probability of cutmix when both are enabled.
        mode: only ``"batch"`` (the official recipes' mode).
        pairs: ``"flip"`` (official: row i with row B-1-i) or ``"adjacent"`` (rows 2k and 2k+1; with an
            even batch on every rank, the pairs do not depend on how an update's clips are split over
            ranks, because fairseq gives each rank a contiguous slice of the update).
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float = 0.0, prob: float = 1.0, switch_prob: float = 0.0,
                 mode: str = "batch", pairs: str = "flip"):
        if pairs not in MIXUP_PAIRS:
            raise ValueError(f"model.mixup_pairs={pairs!r}: expected one of {', '.join(MIXUP_PAIRS)}")
        self.pairs = pairs
        if mode != "batch":
            raise ValueError(f"model.mixup_mode={mode!r}: only 'batch' mixup is implemented (the official recipes' mode)")
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("mixup needs model.mixup > 0 or model.cutmix > 0")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob

    def _draw(self) -> Tuple[float, bool]:
        if float(torch.rand(())) >= self.prob:
            return 1.0, False
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or float(torch.rand(())) < self.switch_prob)
        alpha = torch.tensor(self.cutmix_alpha if use_cutmix else self.mixup_alpha)
        return float(torch.distributions.Beta(alpha, alpha).sample()), use_cutmix

    def __call__(self, x: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        """``x`` ``(B, 1, T, F)``, ``target`` ``(B, C)`` label vectors -> mixed ``(x, target)``."""
        lam, use_cutmix = self._draw()
        if lam == 1.0:
            return x, target
        flipped = self.partners(x)
        if use_cutmix:
            (t0, t1, f0, f1), lam = _cutmix_box(x.shape[-2:], lam)
            x = x.clone()
            x[..., t0:t1, f0:f1] = flipped[..., t0:t1, f0:f1]
        else:
            x = x * lam + flipped * (1.0 - lam)  # (B, 1, T, F)
        return x, target * lam + self.partners(target) * (1.0 - lam)  # (B, C)

    def partners(self, x: Tensor) -> Tensor:
        """Each row's mixing partner, ``(B, ...)``: the flipped batch, or adjacent rows swapped (a last odd
        row is its own partner)."""
        if self.pairs == "flip":
            return x.flip(0)
        even = x.size(0) - x.size(0) % 2
        swapped = x[:even].unflatten(0, (even // 2, 2)).flip(1).flatten(0, 1)  # (even, ...)
        return torch.cat([swapped, x[even:]])  # (B, ...)


def _cutmix_box(shape, lam: float):
    """timm's ``rand_bbox`` with the λ correction: a box of area ~(1-λ) and the λ it really gives."""
    height, width = int(shape[0]), int(shape[1])
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
    t0, t1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    f0, f1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return (t0, t1, f0, f1), 1.0 - (t1 - t0) * (f1 - f0) / float(height * width)


def spec_augment(fbank: Tensor, freqm: float, timem: float, draws: Optional[Tensor] = None) -> Tensor:
    """SpecAugment as the official model: one frequency and one time mask per example (fill 0).

    Mask widths are ``U[0, freqm)`` mel bins and ``U[0, timem)`` frames, placed as torchaudio's iid masks
    (``start = u * (size - width)``, band ``[start, start + width)`` both floored).

    Args:
        fbank: ``(B, 1, T, F)``.
        draws: optional ``(B, 4)`` U[0, 1) draws per example (frequency width, frequency start, time
            width, time start); without them they come from the global RNG.

    Returns:
        ``(B, 1, T, F)``.
    """
    batch, _, frames, bins = fbank.shape
    if draws is None:
        draws = torch.rand(batch, SPEC_AUGMENT_DRAWS)  # (B, 4)
    draws = draws.to(fbank.device, non_blocking=True)
    masked = torch.zeros(batch, 1, frames, bins, dtype=torch.bool, device=fbank.device)  # (B, 1, T, F)
    if freqm >= 1:
        masked |= _band(draws[:, 0], draws[:, 1], freqm, bins).view(batch, 1, 1, bins)
    if timem >= 1:
        masked |= _band(draws[:, 2], draws[:, 3], timem, frames).view(batch, 1, frames, 1)
    return fbank.masked_fill(masked, 0.0)  # (B, 1, T, F)


def _band(width_draw: Tensor, start_draw: Tensor, max_width: float, size: int) -> Tensor:
    """``(B, size)`` True inside each row's band of width ``u * max_width`` (torchaudio's iid mask rule)."""
    width = width_draw * max_width  # (B,)
    start = (start_draw * (size - width)).long()  # (B,)
    end = start + width.long()  # (B,)
    position = torch.arange(size, device=width.device)  # (size,)
    return (position >= start.unsqueeze(1)) & (position < end.unsqueeze(1))  # (B, size)
