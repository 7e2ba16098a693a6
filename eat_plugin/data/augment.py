"""Train-time input augmentations of the official data pipeline (reference §5.2 steps 7-8).

Randomness is injected: each function takes a ``numpy.random.Generator``, which the dataset derives
from ``(seed, epoch, index)`` so a clip's augmentation is reproducible and independent of worker count.
"""

from __future__ import annotations

import numpy as np
import torch


def roll_and_gain(wave: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Official ``roll_aug``: circularly shift by a random offset in [0, S) and scale by Beta(10, 10) + 0.5.

    Args:
        wave: ``(S,)`` waveform.

    Returns:
        ``(S,)`` augmented waveform.
    """
    shift = int(rng.integers(0, wave.numel()))
    gain = float(rng.beta(10.0, 10.0) + 0.5)
    return torch.roll(wave, shifts=shift) * gain  # (S,)


def noise_and_time_roll(fbank: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Official ``noise``: add U(0, 1) noise scaled by U(0, 0.1), then roll in time by a shift in [-10, 9].

    Args:
        fbank: ``(1, T, F)`` normalised fbank.

    Returns:
        ``(1, T, F)`` augmented fbank.
    """
    _, frames, bins = fbank.shape
    noise = torch.from_numpy(rng.random((frames, bins), dtype=np.float32))  # (T, F)
    fbank = fbank + noise * float(rng.random()) / 10.0  # (1, T, F)
    return torch.roll(fbank, shifts=int(rng.integers(-10, 10)), dims=1)  # (1, T, F)
