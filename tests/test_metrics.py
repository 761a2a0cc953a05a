"""resynth_models.metrics against scikit-learn: image scores, Table 1 rows, streaming pixel metrics
(random data, ties, heavy imbalance, scores exactly 0 and 1, undefined cases) and the tables."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

from resynth_models.metrics import (
    PAPER_TABLE1,
    PixelMetrics,
    bin_lower_edge,
    format_table1,
    format_table2,
    grade_aurocs,
    image_auroc,
    image_score,
    score_bins,
)

TOL = 1e-4


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    n = 20_000
    y_half = rng.random(n) < 0.5
    y_rare = rng.random(n) < 0.01
    y_lesion = rng.random(n) < 0.03
    # a trained detector's scores: most of them within 1e-3 of 0 or 1, float32
    logits = np.where(y_lesion, rng.normal(-2.0, 6.0, n), rng.normal(-11.0, 4.0, n))
    return {
        "uniform": (rng.random(n), y_half),
        "imbalanced 1%": (np.clip(rng.normal(0.4, 0.2, n) + 0.2 * y_rare, 0, 1), y_rare),
        "ties": (np.round(rng.random(n), 2), y_half),
        "exact 0 0.5 1": (rng.choice([0.0, 0.5, 1.0], n), y_half),
        "float32 sigmoid": (_sigmoid(logits), y_lesion),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_pixel_metrics_match_sklearn(case: str) -> None:
    scores, labels = _cases()[case]
    metrics = PixelMetrics(thresholds=(0.5, 0.25))
    for s, y in zip(np.array_split(scores, 4), np.array_split(labels, 4), strict=True):
        metrics.update(s, y)
    result = metrics.compute()

    auroc = roc_auc_score(labels, scores)
    ap = average_precision_score(labels, scores)
    assert abs(result["auroc"] - auroc) < TOL
    assert abs(result["aupr"] - ap) < TOL
    # the reported bounds hold
    assert abs(result["auroc"] - auroc) <= result["auroc_binning_error"] + 1e-12
    assert abs(result["aupr"] - ap) <= result["aupr_binning_error"] + 1e-12
    assert result["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, scores >= 0.5), abs=1e-12
    )
    assert metrics.balanced_accuracy(0.25) == pytest.approx(
        balanced_accuracy_score(labels, scores >= 0.25), abs=1e-12
    )
    assert result["n_pixels"] == scores.size
    assert result["n_lesion_pixels"] == int(labels.sum())
    assert all(type(v) in (float, int) for v in result.values())


@pytest.mark.parametrize("case", ["ties", "exact 0 0.5 1"])
def test_true_ties_are_exact(case: str) -> None:
    """Scores 0.01 apart fall in different bins, and 0, 0.5 and 1 have bins of their own: exact."""
    scores, labels = _cases()[case]
    metrics = PixelMetrics()
    metrics.update(scores, labels)
    result = metrics.compute()
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["aupr"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    if case == "exact 0 0.5 1":
        assert result["auroc_binning_error"] == 0.0
        assert result["aupr_binning_error"] == 0.0


def test_tiny_scores_are_resolved() -> None:
    """Scores near 0 (the bulk of a detector's map) keep their order: 1e-8 still beats 1e-9."""
    scores = np.array([1e-9] * 50 + [1e-8] * 5 + [2e-8] * 5, dtype=np.float32)
    labels = np.array([0] * 50 + [1] * 5 + [0] * 5)
    metrics = PixelMetrics()
    metrics.update(scores, labels)
    assert metrics.auroc()[0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    near_one = 1 - scores.astype(np.float64)  # and near 1, mirrored
    metrics = PixelMetrics()
    metrics.update(near_one, 1 - labels)
    assert metrics.auroc()[0] == pytest.approx(roc_auc_score(1 - labels, near_one), abs=1e-12)


def test_best_threshold_reproduces_its_balanced_accuracy() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(3000) < 0.1
    scores = _sigmoid(rng.normal(-3, 2, 3000) + 3 * labels)
    metrics = PixelMetrics()
    metrics.update(scores, labels)
    best_t, best_acc = metrics.best_balanced_accuracy()
    assert best_acc == pytest.approx(
        balanced_accuracy_score(labels, scores >= np.float32(best_t)), abs=1e-12
    )
    # every distinct score as threshold t: sensitivity #lesion >= t, specificity #normal < t
    candidates = np.unique(scores)
    pos, neg = np.sort(scores[labels]), np.sort(scores[~labels])
    sensitivity = 1 - np.searchsorted(pos, candidates, side="left") / pos.size
    specificity = np.searchsorted(neg, candidates, side="left") / neg.size
    brute = float(np.max(0.5 * (sensitivity + specificity)))
    assert best_acc == pytest.approx(brute, abs=TOL)


def test_fov_and_maps() -> None:
    """2-D maps with a valid (FOV) mask: pixels outside don't count, in any metric."""
    rng = np.random.default_rng(5)
    prob = rng.random((2, 48, 48)).astype(np.float32)
    gt = rng.random((2, 48, 48)) < 0.05
    fov = np.zeros((2, 48, 48), dtype=np.uint8)
    fov[:, 8:40, 8:40] = 1
    prob[fov == 0] = 1.0  # confident false positives outside the FOV must not count
    metrics = PixelMetrics()
    for i in range(2):
        metrics.update(prob[i], gt[i].astype(np.uint8), valid=fov[i])
    inside = fov.astype(bool)
    result = metrics.compute()
    assert result["n_pixels"] == int(inside.sum())
    assert abs(result["auroc"] - roc_auc_score(gt[inside], prob[inside])) < TOL
    assert abs(result["aupr"] - average_precision_score(gt[inside], prob[inside])) < TOL


def test_merge_and_pickle_equal_one_pass() -> None:
    rng = np.random.default_rng(11)
    scores, labels = rng.random(5000), rng.random(5000) < 0.2
    whole, first, second = PixelMetrics(), PixelMetrics(), PixelMetrics()
    whole.update(scores, labels)
    first.update(scores[:1234], labels[:1234])
    second.update(scores[1234:], labels[1234:])
    merged = pickle.loads(pickle.dumps(first)).merge(second)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert merged.compute() == whole.compute()
    with pytest.raises(ValueError, match="cannot merge"):
        whole.merge(PixelMetrics(thresholds=(0.3,)))


def test_float32_and_float64_share_bins() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.random(1000), rng.random(1000) * 1e-12, 1 - rng.random(1000) * 1e-6])
    x32 = np.concatenate([x.astype(np.float32), [0.0, 0.5, 1.0, -0.0, 1e-45, 2.0**-48]])
    x32 = x32.astype(np.float32)
    np.testing.assert_array_equal(score_bins(x32), score_bins(x32.astype(np.float64)))


@pytest.mark.parametrize("mantissa_bits", [13, 3])
def test_bins_are_monotone_and_edges_exact(mantissa_bits: int) -> None:
    rng = np.random.default_rng(mantissa_bits)
    u = rng.random(4000)
    x = np.concatenate([u, u * 1e-3, u * 1e-9, 1 - u * 1e-3, 1 - u * 1e-7, [0, 0.5, 1, 2.0**-49]])
    x = np.sort(x.astype(np.float32))
    bins = score_bins(x, mantissa_bits)
    assert (np.diff(bins) >= 0).all()
    for j in [0, 1, 2, *rng.integers(0, bins.max() + 2, 300).tolist(), bins.max() + 1]:
        edge = np.float32(bin_lower_edge(j, mantissa_bits))
        np.testing.assert_array_equal(x >= edge, bins >= j)


@pytest.mark.parametrize(
    ("labels", "missing"), [([0, 0, 0, 0], "no lesion pixels"), ([1, 1, 1, 1], "no normal")]
)
def test_undefined_pixel_metrics_raise(labels: list[int], missing: str) -> None:
    metrics = PixelMetrics()
    metrics.update(np.array([0.1, 0.2, 0.7, 0.9]), np.array(labels))
    for call in (metrics.compute, metrics.auroc, metrics.average_precision):
        with pytest.raises(ValueError, match=f"undefined: {missing}"):
            call()
    with pytest.raises(ValueError, match="pixel AUROC is undefined: no lesion pixels"):
        PixelMetrics().compute()  # nothing seen


def test_bad_inputs_raise() -> None:
    metrics = PixelMetrics()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.update(np.array([0.2, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.update(np.array([0.2, 1.5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        metrics.update(np.zeros((4, 4)), np.zeros((4, 5)))
    metrics.update(np.array([0.2, 0.8]), np.array([0, 1]))
    with pytest.raises(ValueError, match="was not tracked"):
        metrics.compute(threshold=0.3)


def test_image_score_top_k_inside_fov() -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((32, 32)).astype(np.float32)
    fov = np.zeros((32, 32), dtype=np.uint8)
    fov[4:28, 4:28] = 1
    prob[0, 0] = 1.0  # outside the FOV: ignored
    inside = np.sort(prob[fov == 1])
    assert image_score(prob, fov) == pytest.approx(inside[-10:].mean(), abs=1e-7)
    assert image_score(prob) == pytest.approx(np.sort(prob.ravel())[-10:].mean(), abs=1e-7)
    assert image_score(prob, fov, k=1) == pytest.approx(inside[-1])
    small = np.zeros((32, 32), dtype=np.uint8)
    small[5, 5:8] = 1
    assert image_score(prob, small) == pytest.approx(prob[5, 5:8].mean())
    with pytest.raises(ValueError, match="field of view is empty"):
        image_score(prob, np.zeros_like(fov))


def test_image_auroc_and_table1_row() -> None:
    rng = np.random.default_rng(4)
    grades = rng.choice([0, 0, 0, 1, 2, 3, 4], 400)
    scores = rng.random(400) + 0.1 * grades
    assert image_auroc(scores, grades > 0) == pytest.approx(roc_auc_score(grades > 0, scores))
    row = grade_aurocs(scores, grades)
    assert list(row) == ["0vs1", "0vs2", "0vs3", "0vs4", "0vsall"]
    for g in (1, 2, 3, 4):
        keep = (grades == 0) | (grades == g)
        assert row[f"0vs{g}"] == pytest.approx(roc_auc_score(grades[keep] == g, scores[keep]))
    assert row["0vsall"] == pytest.approx(roc_auc_score(grades > 0, scores))
    # a grade with no images: its column is n/a, the others stand
    no_three = grades != 3
    partial = grade_aurocs(scores[no_three], grades[no_three])
    assert partial["0vs3"] is None and partial["0vs2"] == row["0vs2"]
    with pytest.raises(ValueError, match="no grade-0"):
        grade_aurocs(scores[grades > 0], grades[grades > 0])
    with pytest.raises(ValueError, match="no abnormal"):
        image_auroc(scores[:5], [0] * 5)
    with pytest.raises(ValueError, match="no normal"):
        image_auroc(scores[:5], [1] * 5)


def test_tables_in_paper_layout() -> None:
    table1 = format_table1({"0vs1": 0.5, "0vs2": 0.61234, "0vs3": None, "0vs4": 1.0, "0vsall": 0.7})
    lines = table1.strip().splitlines()
    assert lines[0] == "| Method | 0vs1 | 0vs2 | 0vs3 | 0vs4 | 0 vs all |"
    assert lines[2] == "| ReSynthDetect (paper, Table 1) | 0.556 | 0.764 | 0.941 | 0.919 | 0.722 |"
    assert lines[3] == "| ReSynthDetect (this run) | 0.500 | 0.612 | n/a | 1.000 | 0.700 |"
    assert len(PAPER_TABLE1) == 5
    table2 = format_table2({"auroc": 0.9, "balanced_accuracy": 0.8, "aupr": 0.3}, method="mine")
    lines = table2.strip().splitlines()
    assert lines[0] == "| Method | AUROC | ACC | AUPR |"
    assert lines[2] == "| ReSynthDetect (paper, Table 2) | 0.931 | 0.859 | 0.427 |"
    assert lines[3] == "| mine | 0.900 | 0.800 | 0.300 |"
