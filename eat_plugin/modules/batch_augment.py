"""Fine-tuning batch augmentations, in the official order: mixup / cutmix, then SpecAugment.

Both run inside the model on ``(B, 1, T, F)`` fbank batches (reference §4.3). Random draws use torch's
RNG, which fairseq reseeds every update, so runs are reproducible; nothing waits for the device.
"""

import math
from typing import Tuple

import torch
import torchaudio
from torch import Tensor


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
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float = 0.0, prob: float = 1.0, switch_prob: float = 0.0,
                 mode: str = "batch"):
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
        flipped = x.flip(0)
        if use_cutmix:
            (t0, t1, f0, f1), lam = _cutmix_box(x.shape[-2:], lam)
            x = x.clone()
            x[..., t0:t1, f0:f1] = flipped[..., t0:t1, f0:f1]
        else:
            x = x * lam + flipped * (1.0 - lam)  # (B, 1, T, F)
        return x, target * lam + target.flip(0) * (1.0 - lam)  # (B, C)


def _cutmix_box(shape, lam: float):
    """timm's ``rand_bbox`` with the λ correction: a box of area ~(1-λ) and the λ it really gives."""
    height, width = int(shape[0]), int(shape[1])
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
    t0, t1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    f0, f1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return (t0, t1, f0, f1), 1.0 - (t1 - t0) * (f1 - f0) / float(height * width)


def spec_augment(fbank: Tensor, freqm: float, timem: float) -> Tensor:
    """SpecAugment as the official model: one frequency and one time mask per example (fill 0).

    Mask widths are ``U[0, freqm)`` mel bins and ``U[0, timem)`` frames (torchaudio's iid masks).

    Args:
        fbank: ``(B, 1, T, F)``.

    Returns:
        ``(B, 1, T, F)``.
    """
    spec = fbank.transpose(-2, -1)  # (B, 1, F, T): torchaudio's layout
    if freqm > 0:
        spec = torchaudio.transforms.FrequencyMasking(freqm, iid_masks=True)(spec)
    if timem > 0:
        spec = torchaudio.transforms.TimeMasking(timem, iid_masks=True)(spec)
    return spec.transpose(-2, -1)  # (B, 1, T, F)
