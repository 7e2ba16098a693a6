"""Train-time input augmentations: the official data pipeline's (reference §5.2 steps 7-8), and the six
waveform transformations of the machine-sound transform task.

Randomness is injected: each function takes a ``numpy.random.Generator``, which the dataset derives
from ``(seed, epoch, index)`` so a clip's augmentation is reproducible and independent of worker count.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from eat_plugin.semantic_tasks import NUM_TRANSFORMS, SEMANTIC_TRANSFORMS


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


# ---------------------------------------------------------------------------------------------------
# The transform task of the machine-sound semantic heads (design note 003): each training clip gets one
# of six waveform transformations, and the model predicts which. The five non-identity ones change the
# clip in ways a spectrogram shows, whatever the machine: reversed time, shifted pitch, a lower level, a
# late start, a noise floor.

_PITCH_RATIOS = ((5, 4), (4, 5))  # resampling ratios: +3.9 or -3.9 semitones (small integers: a short kernel)


def draw_transform(rng: np.random.Generator) -> int:
    """A transformation id in ``0..5``, uniform."""
    return int(rng.integers(0, NUM_TRANSFORMS))


def apply_transform(wave: torch.Tensor, transform_id: int, rng: np.random.Generator) -> torch.Tensor:
    """Transformation ``transform_id`` of ``SEMANTIC_TRANSFORMS`` with parameters drawn from ``rng``:

    * ``time_reversal``: ``wave[::-1]``;
    * ``pitch_shift``: resampled by 5/4 or 4/5 (±3.9 semitones, the tempo with it), cropped / zero-padded
      back to the clip's length;
    * ``gain``: an attenuation of U(10, 20) dB;
    * ``time_shift``: delayed by U(20 %, 50 %) of its length, zeros in front (not circular, so it shows);
    * ``added_noise``: white Gaussian noise at U(5, 15) dB SNR to the clip's power.

    Args:
        wave: ``(S,)`` 16 kHz waveform.

    Returns:
        ``(S,)`` transformed waveform.
    """
    name = SEMANTIC_TRANSFORMS[transform_id]
    length = wave.numel()
    if name == "identity":
        return wave
    if name == "time_reversal":
        return wave.flip(0)  # (S,)
    if name == "pitch_shift":
        up, down = _PITCH_RATIOS[int(rng.integers(0, len(_PITCH_RATIOS)))]
        shifted = torchaudio.functional.resample(wave, orig_freq=up, new_freq=down)  # (S * down / up,)
        return F.pad(shifted, (0, max(0, length - shifted.numel())))[:length]  # (S,)
    if name == "gain":
        return wave * float(10.0 ** (-rng.uniform(10.0, 20.0) / 20.0))  # (S,)
    if name == "time_shift":
        delay = int(length * rng.uniform(0.2, 0.5))
        return F.pad(wave, (delay, 0))[:length]  # (S,)
    power = float(wave.pow(2).mean()) or 1e-10
    noise_power = power / 10.0 ** (rng.uniform(5.0, 15.0) / 10.0)
    noise = torch.from_numpy(rng.standard_normal(length).astype(np.float32)) * noise_power ** 0.5  # (S,)
    return wave + noise.to(wave.dtype)  # (S,)
