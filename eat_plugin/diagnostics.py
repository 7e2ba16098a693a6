"""Training sanity checks (the loss guide's debugging tips), as pure functions the trainer can call.

* ``chance_loss`` / ``check_initial_loss``: at the first update a freshly initialised classification head
  predicts close to uniformly, so its cross-entropy is close to ``ln K``; far from it means the head, the
  labels or the loss reduction is wrong before any training has happened.
* ``parameters_without_grad``: after a backward, the trainable parameters that got no gradient (an unused
  branch, a detached path, a frozen-by-accident module).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn

DEFAULT_INITIAL_LOSS_TOLERANCE = 0.5  # relative distance from ln K that counts as "far" (see check_initial_loss)


def chance_loss(num_classes: int, base: float = math.e) -> float:
    """Cross-entropy of the uniform prediction, ``log_base K``, whatever the target distribution.

    ``-Σ_c q_c log(1/K) = log K`` for every target ``q`` that sums to 1, so one-hot, label-smoothed and
    mixup targets all give it. ``base=2`` for losses logged in bits (fairseq's ``cross_entropy`` criterion);
    this project's criteria log nats.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: chance loss needs at least 2 classes")
    return math.log(num_classes) / math.log(base)


def check_initial_loss(
    name: str,
    loss_value: float,
    num_classes: int,
    tolerance: float = DEFAULT_INITIAL_LOSS_TOLERANCE,
    base: float = math.e,
) -> Optional[str]:
    """A warning text when a first-update cross-entropy is far from chance, else None.

    "Far" is ``|L - log K| > tolerance · log K`` (default: more than 50% off), or a non-finite ``L``. Why
    that margin: with zero-mean logits of spread σ the expected cross-entropy is
    about ``log K + (K - 1) σ² / (2K)`` (second-order expansion of log-sum-exp). A head initialised with
    small weights (σ of a few hundredths up to ~0.6) stays within ~12% of ``log K`` for any K >= 2, and
    even unit-variance logits (σ = 1) within 8-30% (K = 527 down to 2); 50% takes a spread beyond
    ``sqrt(log K)`` (1.5 at K = 10), a large bias, or a mistake that scales the loss: summed instead of
    averaged, wrong class count or label format, a head loaded already trained (loss far below chance).
    Only meaningful for cross-entropy over K mutually exclusive classes (focal loss and per-class BCE
    start elsewhere).

    Args:
        name: what the loss is called in the logs (named in the warning).
        loss_value: the mean per-example loss at the first update, in units of ``base``.
        num_classes: K, the head's number of outputs.
    """
    chance = chance_loss(num_classes, base)
    unit = "nats" if base == math.e else f"log base {base:g}"
    if not math.isfinite(loss_value):
        return f"{name}: initial loss is {loss_value}; expected about log K = {chance:.3f} {unit} for K = {num_classes}"
    off = abs(loss_value - chance) / chance
    if off <= tolerance:
        return None
    return (
        f"{name}: initial loss {loss_value:.3f} {unit} is {100 * off:.0f}% off the chance level "
        f"log K = {chance:.3f} for K = {num_classes} classes (more than {100 * tolerance:.0f}%): check the head's "
        "initialisation (bias, scale), the labels (format, number of classes) and the loss reduction"
    )


def parameters_without_grad(module: nn.Module) -> List[str]:
    """Names of trainable parameters (``requires_grad=True``) whose ``.grad`` is None or all zero.

    Call it after ``backward()`` and before the optimiser zeroes the gradients (``zero_grad`` sets them
    to None, so every parameter would be reported). An exact zero can be legitimate (a dead ReLU unit,
    a zero-initialised gate), a None never is for a parameter the loss should reach.
    """
    names = []
    for name, param in module.named_parameters():
        if param.requires_grad and (param.grad is None or not torch.any(param.grad)):
            names.append(name)
    return names
