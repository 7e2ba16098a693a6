"""Evaluation metrics of the fine-tuning recipes (reference §4.6), in numpy.

* ``average_precision``: scikit-learn's ``average_precision_score`` for one class, exactly: the
  distinct scores are the thresholds (tied scores form one threshold), and
  ``AP = sum_n (R_n - R_{n-1}) P_n`` over those thresholds, from the highest score down.
* ``mean_average_precision``: the AudioSet metric: AP per class, averaged over the classes that have
  at least one positive (the official ``nanmean``); classes without positives are reported, not averaged.
* ``accuracy``: ``100 * correct / total`` (ESC-50 / Speech Commands).
* ``roc_auc`` / ``partial_roc_auc``: the area under the ROC curve (Mann-Whitney, ties count 1/2) and the
  standardised partial area up to a false-positive rate, the AUC / pAUC that the DCASE anomalous sound
  detection challenges report (scikit-learn's ``roc_auc_score(y, s)`` / ``roc_auc_score(y, s, max_fpr=0.1)``).
"""

from typing import NamedTuple, Tuple

import numpy as np

MAX_BLOCK_ELEMENTS = 1 << 22  # columns are processed in blocks of at most this many scores (bounded memory)


class MAPResult(NamedTuple):
    """Result of ``mean_average_precision`` (a tuple: ``mAP, per_class_ap, num_skipped = result``)."""

    mAP: float  # mean AP over the classes with a positive; NaN if none has one
    per_class_ap: np.ndarray  # (C,) float64, NaN for classes without a positive
    num_skipped: int  # classes without a positive (left out of the mean)


def _binarise(targets: np.ndarray) -> np.ndarray:
    """Targets as booleans; soft targets (mixup, smoothing) count as positive from 0.5 on."""
    targets = np.asarray(targets)
    if targets.dtype == bool:
        return targets
    return targets.astype(np.float64) >= 0.5


def _check_scores(scores: np.ndarray, what: str, metric: str = "average precision") -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)  # exact for float16/32 input: ties are kept
    if np.isnan(scores).any():
        raise ValueError(f"{what} contain {int(np.isnan(scores).sum())} NaN values; {metric} needs numbers")
    return scores


def _column_ap(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """AP of every column of ``scores (N, c)`` / ``positives (N, c)``; NaN where a column has no positive.

    Each positive contributes ``1 / P`` times the precision at the threshold that admits it, i.e. at
    the last position of its group of tied scores: that is ``sum_n (R_n - R_{n-1}) P_n``.
    """
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")  # (N, c), highest score first
    ranked = np.take_along_axis(scores, order, axis=0)  # (N, c)
    hits = np.take_along_axis(positives, order, axis=0)  # (N, c) bool
    true_pos = np.cumsum(hits, axis=0)  # (N, c)
    group_end = np.ones_like(hits)
    group_end[:-1] = ranked[1:] != ranked[:-1]  # (N, c), True at the last position of each tie group
    rows = np.arange(n)[:, None]  # (N, 1)
    marks = np.where(group_end, rows, n)  # (N, c), positions of group ends, n elsewhere
    end = np.minimum.accumulate(marks[::-1], axis=0)[::-1]  # (N, c), group end of every position
    precision = np.take_along_axis(true_pos, end, axis=0) / (end + 1)  # (N, c), at each position's threshold
    num_pos = hits.sum(axis=0)  # (c,)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (hits * precision).sum(axis=0) / num_pos  # (c,)
    return np.where(num_pos > 0, ap, np.nan)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class (scikit-learn's definition); NaN if ``targets`` has no positive.

    Args:
        scores: ``(N,)`` scores, higher = more likely positive.
        targets: ``(N,)`` 0/1 (or bool, or soft: positive from 0.5 on).
    """
    scores = _check_scores(scores, "scores")
    positives = _binarise(targets)
    if scores.ndim != 1 or scores.shape != positives.shape or scores.size == 0:
        raise ValueError(
            f"scores {scores.shape} and targets {positives.shape}: expected two non-empty 1-D arrays of equal length"
        )
    return float(_column_ap(scores[:, None], positives[:, None])[0])


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> MAPResult:
    """Mean over classes of the per-class AP, leaving out (and counting) classes without a positive.

    Args:
        scores: ``(N, C)`` scores (e.g. sigmoid outputs).
        targets: ``(N, C)`` multi-hot labels (0/1, bool, or soft: positive from 0.5 on).
    """
    scores = _check_scores(scores, "scores")
    positives = _binarise(targets)
    if scores.ndim != 2 or scores.shape != positives.shape or scores.shape[0] == 0:
        raise ValueError(
            f"scores {scores.shape} and targets {positives.shape}: expected two (N, C) arrays of equal shape, N >= 1"
        )
    n, c = scores.shape
    block = max(1, MAX_BLOCK_ELEMENTS // n)
    per_class = np.concatenate(
        [_column_ap(scores[:, i : i + block], positives[:, i : i + block]) for i in range(0, c, block)]
    )  # (C,)
    valid = ~np.isnan(per_class)
    mean = float(per_class[valid].mean()) if valid.any() else float("nan")
    return MAPResult(mean, per_class, int(c - valid.sum()))


def accuracy(correct: float, total: float) -> float:
    """Accuracy in percent, ``100 * correct / total``; NaN when ``total`` is 0."""
    return 100.0 * float(correct) / float(total) if total > 0 else float("nan")


def _roc_curve(labels: np.ndarray, scores: np.ndarray, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr)``, each ``(G + 1,)``: ``(0, 0)``, then one point per distinct score from the highest
    down (tied scores form one threshold, so a tie between a positive and a negative is a diagonal segment)."""
    scores = _check_scores(scores, "scores", metric)
    positives = _binarise(labels)
    if scores.ndim != 1 or scores.shape != positives.shape:
        raise ValueError(
            f"{metric}: labels {positives.shape} and scores {scores.shape}: expected two 1-D arrays of equal length"
        )
    num_pos = int(positives.sum())
    num_neg = positives.size - num_pos
    if num_pos == 0 or num_neg == 0:
        raise ValueError(
            f"{metric}: labels hold {num_pos} positives (1, anomalous) and {num_neg} negatives (0, normal): "
            "expected at least one of each"
        )
    order = np.argsort(-scores, kind="stable")  # (N,), highest score first
    ranked = scores[order]  # (N,)
    hits = positives[order]  # (N,) bool
    group_end = np.append(ranked[1:] != ranked[:-1], True)  # (N,), True at the last position of each tie group
    true_pos = np.cumsum(hits)[group_end]  # (G,)
    false_pos = np.cumsum(~hits)[group_end]  # (G,)
    tpr = np.concatenate([[0.0], true_pos / num_pos])  # (G + 1,)
    fpr = np.concatenate([[0.0], false_pos / num_neg])  # (G + 1,)
    return fpr, tpr


def _trapezoid(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """``Σ_k (fpr_k - fpr_{k-1}) (tpr_k + tpr_{k-1}) / 2``."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, ``AUC = (1 / (P N)) Σ_{i pos} Σ_{j neg} ([s_i > s_j] + ½ [s_i = s_j])``.

    That is the Mann-Whitney statistic: the probability that a random positive outscores a random negative,
    ties counted 1/2; it equals the trapezoidal area under the ROC curve with tied scores as one threshold
    (scikit-learn's ``roc_auc_score``).

    Args:
        labels: ``(N,)`` 0 (normal) / 1 (anomalous), or bool (soft labels: positive from 0.5 on).
        scores: ``(N,)``, higher = more likely positive (anomalous).
    """
    return _trapezoid(*_roc_curve(labels, scores, "roc_auc"))


def partial_roc_auc(labels: np.ndarray, scores: np.ndarray, max_fpr: float = 0.1) -> float:
    """Standardised partial AUC up to ``max_fpr`` (McClish 1989), DCASE's pAUC (``roc_auc_score(max_fpr=...)``).

    ``A`` is the area under the ROC curve from FPR 0 to ``m = max_fpr``, the curve's TPR at ``m`` linearly
    interpolated between its two neighbouring points. It is then mapped so that a random ranking
    (``A = m² / 2``) gives 0.5 and a perfect one (``A = m``) gives 1::

        pAUC = ½ (1 + (A - m²/2) / (m - m²/2))

    (a fully reversed ranking gives ``(1 - m) / (2 - m)``; ``max_fpr = 1`` is the plain ``roc_auc``).

    Args:
        labels, scores: as ``roc_auc``; max_fpr: in (0, 1].
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr={max_fpr}: expected 0 < max_fpr <= 1")
    fpr, tpr = _roc_curve(labels, scores, "partial_roc_auc")  # (G + 1,) each
    if max_fpr == 1.0:
        return _trapezoid(fpr, tpr)
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr[stop - 1] <= max_fpr < fpr[stop]
    left, right = stop - 1, stop
    tpr_at = tpr[left] + (tpr[right] - tpr[left]) * (max_fpr - fpr[left]) / (fpr[right] - fpr[left])
    area = _trapezoid(np.append(fpr[:stop], max_fpr), np.append(tpr[:stop], tpr_at))
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    return 0.5 * (1.0 + (area - min_area) / (max_area - min_area))
