"""Random streams keyed by what a draw belongs to, never by where it runs.

A draw made from ``keyed_generator(seed, epoch_or_update, clip_id, stream)`` is the same whichever
DataLoader worker, rank or batch the clip lands in, so 2 processes x b clips draw exactly what
1 process x 2b clips draws, and a resumed run draws what an unbroken one would have. This module
imports nothing from the plugin: the data and model layers both use it.
"""

from typing import Union

import numpy as np
import torch

MASK_STREAM = 0x6D61736B  # "mask": the dataset's student masks
NOISE_STREAM = 0x6E6F6973  # "nois": the model's mask-token noise
AUGMENT_STREAM = 0x61756720  # "aug ": the fine-tuning model's SpecAugment masks and stochastic depth
TRANSFORM_STREAM = 0x7466726D  # "tfrm": the dataset's transform-task transformation of a clip


def keyed_generator(*key: int, device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from the non-negative integers ``key`` alone."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)
    return torch.Generator(device=device).manual_seed(int(state[0]))
