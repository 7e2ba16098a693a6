"""``eat_plugin.metrics``: AP / mAP / accuracy against hand computations and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score  # independent reference (installed with fairseq)

from eat_plugin.metrics import accuracy, average_precision, mean_average_precision


def test_average_precision_by_hand():
    # ranks 1..4: hits at 1 and 3 -> precisions 1 and 2/3, each worth recall 1/2
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.1, 0.2, 0.3], [0, 0, 1]) == pytest.approx(1.0)  # perfect ranking
    assert average_precision([0.3, 0.2, 0.1], [0, 0, 1]) == pytest.approx(1 / 3)  # worst ranking
    assert average_precision([0.5], [1]) == 1.0


def test_tied_scores_form_one_threshold():
    # the three tied scores enter together: precision 2/3 at recall 1 for both positives
    assert average_precision([0.5, 0.5, 0.5], [1, 0, 1]) == pytest.approx(2 / 3)
    # first threshold 0.9: 1 of 1 correct (R 1/3, P 1); second, the tie at 0.4: P 3/5 for the other two
    scores, targets = [0.9, 0.4, 0.4, 0.4, 0.4], [1, 1, 0, 0, 1]
    assert average_precision(scores, targets) == pytest.approx(1 / 3 * 1 + 2 / 3 * 3 / 5)
    # order inside a tie does not matter
    assert average_precision([0.9, 0.4, 0.4, 0.4, 0.4], [1, 0, 0, 1, 1]) == average_precision(scores, targets)


def test_soft_targets_are_thresholded_at_one_half():
    assert average_precision([0.9, 0.8, 0.7], [0.5, 0.49, 0.9]) == average_precision([0.9, 0.8, 0.7], [1, 0, 1])
    assert average_precision([0.9, 0.8], [True, False]) == 1.0


def test_class_without_positives_is_nan():
    assert math.isnan(average_precision([0.9, 0.1], [0, 0]))


def test_mean_average_precision_skips_and_counts_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.7, 0.2, 0.1], [0.6, 0.9, 0.8]])  # (4, 3)
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])  # class 2: no positive
    m_ap, per_class, skipped = mean_average_precision(scores, targets)
    assert per_class[0] == pytest.approx((1 + 2 / 3) / 2)
    assert per_class[1] == pytest.approx(1 / 2)  # the positive is ranked 2nd
    assert math.isnan(per_class[2]) and skipped == 1
    assert m_ap == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2)
    all_negative = mean_average_precision(scores, np.zeros_like(targets))
    assert math.isnan(all_negative.mAP) and all_negative.num_skipped == 3


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_sklearn_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(20, 300)), 17
    scores = np.round(rng.random((n, c)), 1).astype(np.float32)  # 11 distinct values: many ties
    targets = (rng.random((n, c)) < rng.uniform(0.02, 0.5)).astype(np.float32)
    targets[:, 3] = 0  # one class without positives
    result = mean_average_precision(scores, targets)
    expected = [average_precision_score(targets[:, k], scores[:, k]) if targets[:, k].any() else np.nan
                for k in range(c)]
    np.testing.assert_allclose(result.per_class_ap, expected, rtol=0, atol=1e-6, equal_nan=True)
    assert result.mAP == pytest.approx(np.nanmean(expected), abs=1e-6)
    assert result.num_skipped == int(np.isnan(expected).sum())
    for k in (0, 5):
        assert average_precision(scores[:, k], targets[:, k]) == pytest.approx(expected[k], abs=1e-6)


def test_column_blocks_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(0)
    scores, targets = rng.random((50, 9)), rng.random((50, 9)) < 0.3
    whole = mean_average_precision(scores, targets)
    monkeypatch.setattr("eat_plugin.metrics.MAX_BLOCK_ELEMENTS", 100)  # 2 columns per block
    np.testing.assert_array_equal(mean_average_precision(scores, targets).per_class_ap, whole.per_class_ap)


def test_shape_and_nan_errors():
    with pytest.raises(ValueError, match=r"expected two \(N, C\) arrays of equal shape"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="1-D arrays of equal length"):
        average_precision([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="1 NaN"):
        average_precision([0.1, np.nan], [1, 0])


def test_accuracy():
    assert accuracy(3, 4) == 75.0
    assert accuracy(0, 10) == 0.0
    assert math.isnan(accuracy(0, 0))
