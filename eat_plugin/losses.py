"""Pure loss and statistics functions of EAT pre-training (reference §3.6-3.8).

Shapes: M masked patches over all rows, R = B * clone_batch rows, D width, P = 256 pixels per patch.
All losses are returned unreduced; fairseq's criterion sums them and divides by ``sample_size``.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def teacher_targets(
    layer_results: List[Tensor],
    top_k: int,
    instance_norm_target_layer: bool = True,
    batch_norm_target_layer: bool = False,
    layer_norm_target_layer: bool = False,
    layer_norm_targets: bool = True,
    instance_norm_targets: bool = False,
) -> Tensor:
    """Average of the last ``top_k`` per-block FFN outputs, each normalised, then normalised again.

    Args:
        layer_results: per block ``(B, N, D)`` (extra tokens already dropped).

    Returns:
        ``(B, N, D)`` float32 targets.
    """
    if not 1 <= top_k <= len(layer_results):
        raise ValueError(f"average_top_k_layers={top_k} must be between 1 and the {len(layer_results)} blocks")
    layers = [y.float() for y in layer_results[-top_k:]]  # K x (B, N, D)
    if instance_norm_target_layer:  # each channel over the patches of each clip
        layers = [F.instance_norm(y.transpose(1, 2)).transpose(1, 2) for y in layers]
    if batch_norm_target_layer:
        layers = [F.batch_norm(y.transpose(1, 2), None, None, training=True).transpose(1, 2) for y in layers]
    if layer_norm_target_layer:
        layers = [F.layer_norm(y, y.shape[-1:]) for y in layers]
    target = sum(layers[1:], layers[0]) / len(layers)  # (B, N, D), summed in order as the official code
    if layer_norm_targets:
        target = F.layer_norm(target, target.shape[-1:])
    if instance_norm_targets:
        target = F.instance_norm(target.transpose(1, 2)).transpose(1, 2)
    return target


def regression_loss(pred: Tensor, target: Tensor, loss_beta: float = 0.0, loss_scale: Optional[float] = None) -> Tensor:
    """Element-wise MSE (``loss_beta == 0``) or smooth-L1, times ``loss_scale`` or ``1/sqrt(D)``.

    Args:
        pred, target: ``(..., D)``.

    Returns:
        ``(M, D)`` unreduced (the official ``d2v_loss``).
    """
    dim = pred.size(-1)
    pred = pred.reshape(-1, dim).float()  # (M, D)
    target = target.reshape(-1, dim).float()  # (M, D)
    if loss_beta == 0:
        loss = F.mse_loss(pred, target, reduction="none")
    else:
        loss = F.smooth_l1_loss(pred, target, reduction="none", beta=loss_beta)
    return loss * (loss_scale if loss_scale is not None else 1 / math.sqrt(dim))


def normalized_pixels(patches: Tensor) -> Tensor:
    """MAE's per-patch normalised pixels: ``(x - mean) / sqrt(var + 1e-6)`` over each patch's P values."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + 1.0e-6) ** 0.5


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, student_temp: float, teacher_temp: float) -> Tensor:
    """DINO cross-entropy between the centred, sharpened teacher and the student distributions.

    Args:
        student, teacher: ``(R, D)`` logits; ``center``: ``(1, D)``.

    Returns:
        scalar, averaged over rows.
    """
    teacher_probs = F.softmax((teacher.detach().float() - center) / teacher_temp, dim=-1)  # (R, D)
    student_logp = F.log_softmax(student.float() / student_temp, dim=-1)  # (R, D)
    return -(teacher_probs * student_logp).sum(dim=-1).mean()


def compute_var(y: Tensor) -> Tensor:
    """Mean over channels of the per-channel std over all rows (global across workers when distributed)."""
    y = y.reshape(-1, y.size(-1)).float()  # (M, D)
    if dist.is_available() and dist.is_initialized():
        count = torch.tensor(float(y.size(0)), device=y.device)
        total, total_sq = y.sum(dim=0), (y**2).sum(dim=0)  # (D,)
        for t in (count, total, total_sq):
            dist.all_reduce(t)
        var = total_sq / (count - 1) - total**2 / (count * (count - 1))
        return torch.sqrt(var + 1e-6).mean()
    return torch.sqrt(y.var(dim=0) + 1e-6).mean()


# ---------------------------------------------------------------------------------------------------
# Fine-tuning (reference §4.4). B clips, C classes; ``labels`` are class indices (B,) or vectors (B, C).


def label_vectors(labels: Tensor, num_classes: int) -> Tensor:
    """Class indices ``(B,)`` -> one-hot ``(B, C)``; label vectors pass through as float."""
    if labels.dim() == 1:
        return F.one_hot(labels.long(), num_classes).float()
    return labels.float()


def soft_target_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """``-y · log_softmax(x)`` element-wise: ``(B, C)`` (mixup targets)."""
    return -labels * F.log_softmax(logits.float(), dim=-1)


def cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy per clip ``(B,)``; labels as indices or probability vectors."""
    target = labels.long() if labels.dim() == 1 else labels.float()
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing, reduction="none")


def binary_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label BCE-with-logits, element-wise ``(B, C)``."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
