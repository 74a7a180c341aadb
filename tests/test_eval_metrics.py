"""geossl.eval.metrics against scikit-learn's average_precision_score."""

import warnings

import numpy as np
import pytest

from geossl.eval import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _random_case(rng, n, k, levels):
    y = (rng.random((n, k)) < 0.3).astype(np.int64)
    y[:, 0] = 0                                    # a class without positives
    scores = np.round(rng.random((n, k)) * levels) / levels  # coarse grid: many ties
    return y, scores


@pytest.mark.parametrize("levels", [3, 10, 10**6])
def test_average_precision_matches_sklearn(levels):
    rng = np.random.default_rng(levels)
    for _ in range(10):
        n, k = int(rng.integers(2, 80)), int(rng.integers(2, 7))
        y, s = _random_case(rng, n, k, levels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns about the class without positives
            want_per_class = sklearn_metrics.average_precision_score(y, s, average=None)
            want_micro = sklearn_metrics.average_precision_score(y, s, average="micro")
            want_macro = sklearn_metrics.average_precision_score(y, s, average="macro")
        np.testing.assert_allclose(metrics.average_precision(y, s), want_per_class, atol=1e-6)
        assert metrics.mean_average_precision(y, s, average="micro") == pytest.approx(want_micro, abs=1e-6)
        assert metrics.mean_average_precision(y, s, average="macro", skip_empty=False) == \
            pytest.approx(want_macro, abs=1e-6)
        has_pos = y.sum(0) > 0
        assert metrics.mean_average_precision(y, s, average="macro") == \
            pytest.approx(want_per_class[has_pos].mean(), abs=1e-6)


def test_average_precision_hand_values():
    # Ranked 1, 0, 1: AP = (1/1 + 2/3) / 2.
    assert metrics.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)
    # A tie between a positive and a negative counts as one threshold of precision 1/2
    # (not 1, as a tie broken in the positive's favour would give).
    assert metrics.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.average_precision([0, 0], [0.5, 0.2]) == 0.0   # no positive: sklearn's 0


def test_macro_report_leaves_out_empty_classes():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    s = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.3], [0.7, 0.6, 0.3]])
    report = metrics.multilabel_report(y, s)
    assert report["ap_per_class"][2] is None
    assert report["map_macro"] == pytest.approx(1.0)
    assert metrics.mean_average_precision(y, s, average="macro", skip_empty=False) == pytest.approx(2 / 3)


def test_top1_accuracy():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert metrics.top1_accuracy([1, 0, 0], logits) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels"):
        metrics.top1_accuracy([1, 0], logits)


def test_scores_that_are_not_finite_are_refused():
    """NaN ranks last and argmax takes class 0: a quietly wrong figure, refused as sklearn does."""
    with pytest.raises(ValueError, match=r"scores: 1 of 3 are not finite \(first at index \(0, 0\)\)"):
        metrics.average_precision(np.array([1, 0, 1]), np.array([np.nan, 0.8, 0.7]))
    with pytest.raises(ValueError, match=r"scores: 1 of 4 are not finite \(first at index \(1, 1\)\)"):
        metrics.top1_accuracy([1, 0], np.array([[0.1, 0.9], [0.8, np.inf]]))
