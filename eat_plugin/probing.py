"""Frozen-feature probes: an L2-regularised linear probe and a cosine k-nearest-neighbour classifier.

The standard ways to compare checkpoints and layers without fine-tuning (as in the SSL audio literature):

* ``fit_linear_probe``: multinomial logistic regression (single-label) or one logistic per class
  (multi-label) on standardised features, ``mean loss + l2 * ||W||^2 / 2`` (bias not penalised), solved to
  convergence with full-batch L-BFGS (strong Wolfe line search): the problem is convex, so the solution does
  not depend on the start or on a learning rate. ``select_l2`` picks the strength on a validation split.
* ``knn_scores``: cosine similarity to every training clip; the k nearest vote with their labels
  (multi-label: the mean label vector of the k nearest, as scores for mAP).

Features are ``(N, D)`` float tensors, labels ``(N,)`` class indices or ``(N, C)`` multi-hot. CPU or GPU,
deterministic. Imports nothing from the plugin (a foundation module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
K_GRID = (1, 5, 10, 20)


@dataclass
class LinearProbe:
    """``scores(x)``: logits ``(N, C)`` of standardised ``x``; ``mean`` / ``std``: the training statistics."""

    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)
    mean: Tensor  # (D,)
    std: Tensor  # (D,)
    l2: float
    multi_label: bool

    def scores(self, features: Tensor) -> Tensor:
        x = (features.to(self.weight) - self.mean) / self.std  # (N, D)
        return x @ self.weight.T + self.bias  # (N, C)


def standardise(features: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-dimension mean and std (std floored at 1e-6: constant dimensions stay finite)."""
    return features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)


def probe_loss(logits: Tensor, labels: Tensor, multi_label: bool) -> Tensor:
    """Mean cross-entropy (single-label) or mean per-class BCE summed over classes (multi-label)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits), reduction="sum") / logits.size(0)
    return F.cross_entropy(logits, labels.long())


def fit_linear_probe(features: Tensor, labels: Tensor, num_classes: int, l2: float, multi_label: bool = False,
                     max_iter: int = 500, tolerance: float = 1e-9) -> LinearProbe:
    """The regularised logistic regression on ``(N, D)`` features (see the module docstring)."""
    features = features.double()
    mean, std = standardise(features)
    x = (features - mean) / std  # (N, D)
    weight = torch.zeros(num_classes, x.size(1), dtype=x.dtype, device=x.device, requires_grad=True)  # (C, D)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)  # (C,)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance,
                                  tolerance_change=tolerance * 1e-3, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = probe_loss(x @ weight.T + bias, labels, multi_label) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, std, l2, multi_label)


def select_l2(train: Tuple[Tensor, Tensor], valid: Tuple[Tensor, Tensor], num_classes: int, multi_label: bool,
              metric, grid: Sequence[float] = L2_GRID) -> Tuple[LinearProbe, float, dict]:
    """Fit one probe per ``l2`` of ``grid`` on ``train``, keep the best by ``metric(scores, labels)`` on
    ``valid`` (the strongest regularisation on ties): ``(probe, its validation score, {l2: score})``."""
    results = {}
    best = None
    for l2 in sorted(grid, reverse=True):
        probe = fit_linear_probe(train[0], train[1], num_classes, l2, multi_label)
        results[l2] = metric(probe.scores(valid[0]), valid[1])
        if best is None or results[l2] > results[best[0]]:
            best = (l2, probe)
    return best[1], results[best[0]], results


def knn_scores(train_features: Tensor, train_labels: Tensor, query: Tensor, num_classes: int, k: int,
               multi_label: bool = False) -> Tensor:
    """``(Q, C)`` scores of the queries: single-label, the similarity-weighted votes of the ``k`` nearest
    training clips (cosine); multi-label, the mean label vector of the ``k`` nearest."""
    if not 1 <= k <= train_features.size(0):
        raise ValueError(f"k={k}: expected between 1 and the {train_features.size(0)} training clips")
    similarity = F.normalize(query.double(), dim=1) @ F.normalize(train_features.double(), dim=1).T  # (Q, N)
    top, index = similarity.topk(k, dim=1)  # (Q, k) each
    if multi_label:
        return train_labels.double()[index].mean(1)  # (Q, C)
    votes = torch.zeros(query.size(0), num_classes, dtype=torch.float64, device=query.device)  # (Q, C)
    return votes.scatter_add_(1, train_labels.long()[index], top.clamp_min(0) + 1e-9)  # (Q, C)


def select_k(train: Tuple[Tensor, Tensor], valid: Tuple[Tensor, Tensor], num_classes: int, multi_label: bool,
             metric, grid: Sequence[int] = K_GRID) -> Tuple[int, float, dict]:
    """The ``k`` of ``grid`` (at most the training size) with the best validation ``metric``."""
    results = {k: metric(knn_scores(*train, valid[0], num_classes, k, multi_label), valid[1])
               for k in grid if k <= train[0].size(0)}
    best = max(results, key=lambda k: (results[k], -k))
    return best, results[best], results


def accuracy_metric(scores: Tensor, labels: Tensor) -> float:
    return float((scores.argmax(1) == labels.long()).double().mean())


def weighted_layer_probe(layers: Tensor, labels: Tensor, num_classes: int, l2: float, multi_label: bool = False,
                         steps: int = 300, lr: float = 0.05, seed: int = 0) -> Tuple[Tensor, LinearProbe]:
    """A learned softmax-weighted sum of the layers + a linear probe, trained jointly (Adam, full batch):
    ``layers`` ``(N, L, D)``; returns the layer weights ``(L,)`` and the probe on the weighted sum. The sum
    is standardised with the training statistics of each layer, so the weights compare like with like."""
    generator = torch.Generator().manual_seed(seed)
    layers = layers.double()
    mean, std = layers.mean(0), layers.std(0, unbiased=False).clamp_min(1e-6)  # (L, D) each
    x = (layers - mean) / std  # (N, L, D)
    mix = torch.zeros(x.size(1), dtype=x.dtype, requires_grad=True)  # (L,)
    weight = (torch.randn(num_classes, x.size(2), generator=generator, dtype=x.dtype) * 0.01).requires_grad_()
    bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.Adam([mix, weight, bias], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        summed = torch.einsum("l,nld->nd", mix.softmax(0), x)  # (N, D)
        loss = probe_loss(summed @ weight.T + bias, labels, multi_label) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    weights = mix.detach().softmax(0)  # (L,)
    flat = torch.zeros(x.size(2), dtype=x.dtype)  # (D,): weighted_sum() standardises each layer itself
    probe = LinearProbe(weight.detach(), bias.detach(), flat, torch.ones_like(flat), l2, multi_label)
    return weights, probe


def weighted_sum(layers: Tensor, weights: Tensor, reference: Tensor) -> Tensor:
    """``(N, L, D)`` -> ``(N, D)``: each layer standardised with ``reference``'s (the training layers')
    statistics, then summed with ``weights`` (``weighted_layer_probe``'s)."""
    mean, std = reference.double().mean(0), reference.double().std(0, unbiased=False).clamp_min(1e-6)
    return torch.einsum("l,nld->nd", weights.double(), (layers.double() - mean) / std)  # (N, D)


