"""``eat_plugin.metrics.roc_auc`` / ``partial_roc_auc`` (DCASE's AUC / pAUC) against hand integrations of tiny
ROC curves, closed forms, and reference formulas written out here (pairwise Mann-Whitney counts; the
partial area as a sum over the highest-scored negatives)."""

import itertools

import numpy as np
import pytest

from eat_plugin.metrics import partial_roc_auc, roc_auc


def mann_whitney(labels, scores):
    """``(1 / (P N)) Σ_pos Σ_neg ([s_p > s_n] + ½ [s_p = s_n])`` by looping over every pair."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def mcclish(area, max_fpr):
    return 0.5 * (1 + (area - max_fpr**2 / 2) / (max_fpr - max_fpr**2 / 2))


def test_perfect_reversed_and_tied_rankings():
    labels, scores = [0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9]
    assert roc_auc(labels, scores) == 1.0
    assert partial_roc_auc(labels, scores) == pytest.approx(1.0)
    reversed_scores = [-s for s in scores]  # every negative above every positive: TPR 0 until FPR 1
    assert roc_auc(labels, reversed_scores) == 0.0
    assert partial_roc_auc(labels, reversed_scores) == pytest.approx(9 / 19)  # (1 - m) / (2 - m), m = 0.1
    assert partial_roc_auc(labels, reversed_scores, max_fpr=0.5) == pytest.approx(1 / 3)
    tied = [0.5] * 5  # one threshold: the diagonal, area m² / 2 -> 0.5
    assert roc_auc(labels, tied) == 0.5
    assert partial_roc_auc(labels, tied) == pytest.approx(0.5)


def test_four_point_curve_integrated_by_hand():
    # (0, 0) -> 0.9: (0, 1/2) -> the 0.5 tie (one positive, one negative): (1/2, 1) -> 0.1: (1, 1)
    labels, scores = [1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1]
    assert roc_auc(labels, scores) == pytest.approx(0.875)  # 1/2 * (1/2 + 1)/2 + 1/2 * 1
    assert mann_whitney(labels, scores) == pytest.approx(0.875)  # 2 + 1/2 + 1 wins of 4 pairs
    # up to FPR 1/4: on the diagonal, TPR interpolated to 3/4; area 1/4 * (1/2 + 3/4) / 2 = 5/32
    assert partial_roc_auc(labels, scores, max_fpr=0.25) == pytest.approx(mcclish(5 / 32, 0.25))
    assert partial_roc_auc(labels, scores, max_fpr=0.25) == pytest.approx(11 / 14)
    # up to FPR 1/2 (a curve point): area 1/2 * (1/2 + 1) / 2 = 3/8 -> 1/2 (1 + (3/8 - 1/8) / (1/2 - 1/8)) = 5/6
    assert partial_roc_auc(labels, scores, max_fpr=0.5) == pytest.approx(5 / 6)


def test_vertical_step_at_max_fpr():
    """A curve point exactly at FPR = max_fpr with TPR jumping there: the area does not depend on which TPR."""
    scores = [0.95, 0.9, 0.85] + [0.8 - 0.05 * i for i in range(9)]
    labels = [1, 0, 1] + [0] * 9  # 10 negatives: (0, 1/2), (0.1, 1/2), (0.1, 1), ...
    assert partial_roc_auc(labels, scores, max_fpr=0.1) == pytest.approx(mcclish(0.1 * 0.5, 0.1))
    assert partial_roc_auc(labels, scores, max_fpr=0.1) == pytest.approx(14 / 19)
    assert roc_auc(labels, scores) == pytest.approx((10 + 9) / 20)


def test_roc_auc_is_the_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounded: many ties, within and across classes
        assert roc_auc(labels, scores) == pytest.approx(mann_whitney(labels.tolist(), scores.tolist()), abs=1e-12)


def test_partial_auc_is_the_sum_over_the_top_negatives():
    """For max_fpr = k / N and no tie between the k-th and (k+1)-th highest negatives, the partial area is
    ``(1 / N) Σ_{j<=k} TPR-at-negative-j``, each negative counting positives above it plus half the tied ones."""
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(50):
        num_neg, num_pos = 50, int(rng.integers(3, 30))
        neg = np.round(rng.normal(0.0, 1.0, num_neg), 1)
        pos = np.round(rng.normal(1.0, 1.0, num_pos), 1)
        top = np.sort(neg)[::-1]
        k = 5  # max_fpr = 0.1
        if top[k - 1] == top[k]:
            continue
        heights = [((pos > s).sum() + 0.5 * (pos == s).sum()) / num_pos for s in top[:k]]
        area = sum(heights) / num_neg
        labels = np.r_[np.zeros(num_neg), np.ones(num_pos)]
        perm = rng.permutation(labels.size)  # the order of the samples must not matter
        result = partial_roc_auc(labels[perm], np.r_[neg, pos][perm], max_fpr=k / num_neg)
        assert result == pytest.approx(mcclish(area, k / num_neg), abs=1e-12)
        checked += 1
    assert checked >= 20


def test_invariances_and_full_range():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(labels, 1.0)
    assert partial_roc_auc(labels, scores, max_fpr=1.0) == roc_auc(labels, scores)
    assert partial_roc_auc(labels, np.exp(3 * scores)) == pytest.approx(partial_roc_auc(labels, scores), abs=1e-12)
    assert roc_auc(labels.astype(bool), scores.astype(np.float32)) == pytest.approx(roc_auc(labels, scores), abs=1e-6)
    assert 0.5 < partial_roc_auc(labels, scores) < 1.0 and 0.5 < roc_auc(labels, scores) < 1.0


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_one_class_is_refused(labels):
    for metric in (roc_auc, partial_roc_auc):
        with pytest.raises(ValueError, match=r"expected at least one of each") as err:
            metric(labels, [0.1, 0.2, 0.3])
        assert metric.__name__ in str(err.value) and "anomalous" in str(err.value)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="max_fpr"):
        partial_roc_auc([0, 1], [0.1, 0.2], max_fpr=0.0)
    with pytest.raises(ValueError, match="max_fpr"):
        partial_roc_auc([0, 1], [0.1, 0.2], max_fpr=1.5)
    with pytest.raises(ValueError, match="equal length"):
        roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
