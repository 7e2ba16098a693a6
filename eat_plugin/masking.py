"""Inverse block masking (EAT's multi-mask strategy) and the gather/restore bookkeeping.

``compute_block_mask_2d`` reproduces the official function (data2vec 2.0 / EAT ``utils/data_utils.py``)
call for call, so with the same torch RNG state it returns the same masks: block centres drawn with
``torch.randint``, expanded to ``mask_length x mask_length`` squares clamped at the grid edge, each row
then fixed to exactly ``int(L * keep)`` ones with ``torch.multinomial``, then inverted. With
``inverse_mask=True`` the blocks are the VISIBLE patches: for 1024 frames (64 x 8 patches) at
``mask_prob=0.8`` every row keeps exactly ``int(512 * 0.2) = 102`` patches.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor


def compute_block_mask_2d(
    shape: Tuple[int, int],
    mask_prob: float,
    mask_length: int,
    mask_prob_adjust: float = 0.0,
    inverse_mask: bool = False,
    require_same_masks: bool = True,
    img_shape: Optional[Tuple[int, int]] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Block masks over a ``img_shape = (H, W)`` patch grid, flattened row-major (time-major for audio).

    Args:
        shape: ``(B, L)`` with ``L = H * W``.
        mask_prob: fraction masked (with ``inverse_mask``, ``1 - mask_prob`` is the fraction kept).
        mask_length: block side (5 in EAT).
        mask_prob_adjust: extra block centres to make up for overlaps (0.07 in EAT-base).
        inverse_mask: the blocks become the visible patches.
        require_same_masks: make every row hold exactly the target count.
        img_shape: the grid; a square ``sqrt(L) x sqrt(L)`` grid when omitted.
        generator: torch RNG; the global one when omitted (as the official code).

    Returns:
        float mask ``(B, L)``, 1 = masked.
    """
    if mask_length < 2:
        raise ValueError(f"block masking needs mask_length >= 2, got {mask_length}")
    batch, length = shape
    height, width = img_shape if img_shape is not None else (int(length**0.5),) * 2
    if height * width != length:
        raise ValueError(f"mask grid {height}x{width} does not have {length} patches")
    if inverse_mask:
        mask_prob = 1 - mask_prob

    mask = torch.zeros((batch, height, width))  # (B, H, W)
    num_centres = int(length * ((mask_prob + mask_prob_adjust) / mask_length**2))
    centres_flat = torch.randint(0, length, size=(batch, num_centres), generator=generator)  # (B, K)
    mask.view(batch, -1).scatter_(1, centres_flat, 1)
    centres = mask.nonzero(as_tuple=True)  # duplicates collapse, as in the official code
    # every centre's mask_length x mask_length block, clamped at the grid's edges, in one indexed write
    # (the index tensors broadcast to (K', m, m); setting 1 twice is harmless, so the order is irrelevant)
    offsets = torch.arange(mask_length) - mask_length // 2  # (m,)
    rows = centres[0][:, None, None]  # (K', 1, 1)
    ys = (centres[1][:, None, None] + offsets[None, :, None]).clamp_(0, height - 1)  # (K', m, 1)
    xs = (centres[2][:, None, None] + offsets[None, None, :]).clamp_(0, width - 1)  # (K', 1, m)
    mask[rows, ys, xs] = 1
    mask = mask.reshape(batch, -1)  # (B, L)

    if require_same_masks:
        target = int(length * mask_prob)
        counts = mask.sum(-1)
        for row in range(batch):
            n = int(counts[row])
            if n > target:
                drop = torch.multinomial(mask[row], n - target, replacement=False, generator=generator)
                mask[row, drop] = 0
            elif n < target:
                add = torch.multinomial(1 - mask[row], target - n, replacement=False, generator=generator)
                mask[row, add] = 1
    if inverse_mask:
        mask = 1 - mask
    return mask


def num_visible_patches(num_patches: int, mask_prob: float, inverse_mask: bool) -> int:
    """Patches each masked row keeps, as ``compute_block_mask_2d(require_same_masks=True)`` guarantees."""
    if inverse_mask:
        return int(num_patches * (1 - mask_prob))
    return num_patches - int(num_patches * mask_prob)


class MaskInfo(NamedTuple):
    """Which patches each (cloned) row keeps.

    ``ids_keep`` / ``ids_masked`` list positions in ascending order, so gathering with ``ids_masked``
    row by row gives the official boolean-mask order (row-major, then patch index).
    """

    mask: Tensor  # (R, N) bool, True = masked
    ids_keep: Tensor  # (R, N_keep) long
    ids_masked: Tensor  # (R, N - N_keep) long

    @property
    def num_patches(self) -> int:
        return self.mask.size(1)

    @property
    def num_visible(self) -> int:
        return self.ids_keep.size(1)


def make_mask_info(mask: Tensor, num_visible: int) -> MaskInfo:
    """Index lists for a ``(R, N)`` mask (1/True = masked) whose rows each keep ``num_visible`` patches.

    The count is passed in (it follows from the masking config) rather than read from the mask, so
    nothing waits for the device; the mask is checked against it (asynchronously on accelerators).
    """
    mask = mask.bool()
    visible_per_row = (~mask).sum(dim=1)  # (R,)
    if mask.device.type == "cpu":
        if not bool((visible_per_row == num_visible).all()):
            raise ValueError(
                f"every mask row must keep exactly {num_visible} of {mask.size(1)} patches (the masking config's "
                f"count); got rows keeping {sorted(set(visible_per_row.tolist()))}"
            )
    else:
        torch._assert_async((visible_per_row == num_visible).all())
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # (R, N): visible first, each ascending
    return MaskInfo(mask, order[:, :num_visible], order[:, num_visible:])
