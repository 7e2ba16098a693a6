"""The input layout EAT is built on: 16 kHz audio, 128 mel bins, a grid of 16 x 16 patches.

The one home of these numbers and of the target-length rule, for the data side (front end, datasets),
the model side (encoder, models) and the conversions. Imports nothing from the plugin.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000  # Hz: every clip is resampled to this
NUM_MEL_BINS = 128  # fbank frequency bins = the spectrogram's width
PATCH_FRAMES = 16  # the patch side, in frames and in mel bins: the grid is 16 x 16
FREQ_PATCHES = NUM_MEL_BINS // PATCH_FRAMES  # 8 patches across the frequency axis


def check_target_length(target_length: int, field: str = "target_length") -> int:
    """Raise a clear error unless ``target_length`` is a positive multiple of 16 frames."""
    if isinstance(target_length, bool) or not isinstance(target_length, (int, np.integer)):
        raise ValueError(f"{field} must be an integer number of fbank frames, got {target_length!r}")
    if target_length <= 0 or target_length % PATCH_FRAMES != 0:
        raise ValueError(
            f"{field}={target_length} is not a positive multiple of {PATCH_FRAMES}: the model cuts the "
            f"spectrogram into {PATCH_FRAMES}x{PATCH_FRAMES} patches (e.g. 1024 for 10 s, 512 for 5 s, "
            f"128 for 1 s)"
        )
    return int(target_length)
