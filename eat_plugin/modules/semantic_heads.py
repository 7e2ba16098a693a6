"""The machine-sound semantic heads of design note 003: machine id and transformation, on patch latents.

Each head is ``Linear(D, 128) -> SiLU -> Dropout(p) -> Linear(128, K)`` on a clip vector, the mean of
the clip's patch latents (note §1); the transform head can also classify every patch on its own
(``per_patch``: the clip's label repeated over its patches). ``head_loss`` is the one rule for a head's
loss and logs, shared by the pre-training model and the fine-tuning model.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from eat_plugin.losses import cross_entropy, focal_loss

HIDDEN = 128  # the note's head width


class SemanticHead(nn.Sequential):
    """``(..., D)`` -> ``(..., K)`` logits."""

    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__(nn.Linear(dim, HIDDEN), nn.SiLU(), nn.Dropout(dropout), nn.Linear(HIDDEN, num_classes))


class SemanticHeads(nn.Module):
    """The machine-id head (``num_machine_ids`` outputs, 0: none) and the transform head (``num_transforms``
    outputs, 0: none) of one encoder of width ``dim``."""

    def __init__(self, dim: int, num_machine_ids: int, num_transforms: int, dropout: float):
        super().__init__()
        self.machine_id: Optional[SemanticHead] = SemanticHead(dim, num_machine_ids, dropout) if num_machine_ids else None
        self.transform: Optional[SemanticHead] = SemanticHead(dim, num_transforms, dropout) if num_transforms else None

    def machine_logits(self, patches: Tensor) -> Tensor:
        """``(B, N, D)`` patch latents of each clip -> ``(B, num_machine_ids)``."""
        return self.machine_id(patches.mean(dim=1))  # (B, K)

    def transform_logits(self, patches: Tensor, per_patch: bool) -> Tensor:
        """``(B, N, D)`` -> ``(B, 6)``, or ``(B * N, 6)`` with ``per_patch`` (clip b's patches in rows b*N..)."""
        if per_patch:
            return self.transform(patches.reshape(-1, patches.size(-1)))  # (B * N, 6)
        return self.transform(patches.mean(dim=1))  # (B, 6)


def head_loss(name: str, logits: Tensor, labels: Tensor, label_smoothing: float = 0.0,
              focal_gamma: float = 0.0) -> Tuple[Tensor, Dict[str, Tensor]]:
    """One head's per-prediction loss and its logs.

    ``logits`` ``(P, K)`` for ``P`` predictions (``B``, or ``B * N`` per patch: the clip labels ``(B,)`` are
    repeated over each clip's ``N`` rows). Loss: cross-entropy with ``label_smoothing``, or the focal loss
    with ``focal_gamma > 0`` (note 002). Logs: ``{name}_ce`` (the plain CE, mean: no smoothing, no focusing,
    so training and validation curves and the chance value ``ln K`` compare), ``_{name}_correct`` and
    ``_{name}_count`` (the criteria turn them into ``{name}_accuracy``).

    Returns ``(loss (P,), logs)``.
    """
    labels = labels.repeat_interleave(logits.size(0) // labels.size(0))  # (P,)
    if focal_gamma > 0:
        loss = focal_loss(logits, labels, focal_gamma, None, label_smoothing)  # (P,)
    else:
        loss = cross_entropy(logits, labels, label_smoothing)  # (P,)
    with torch.no_grad():
        plain = loss if focal_gamma == 0 and label_smoothing == 0 else cross_entropy(logits, labels)  # (P,)
        logs = {f"{name}_ce": plain.mean(), f"_{name}_correct": (logits.argmax(-1) == labels).sum(),
                f"_{name}_count": labels.numel()}
    return loss, logs
