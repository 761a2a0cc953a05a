"""The paper's evaluation metrics (ReSynthDetect, section 4.1), checked against scikit-learn.

Image level (EyeQ, Table 1): an image's anomaly score is the mean of the 10 highest pixel
probabilities of the localisation network's map inside the field of view (FOV); AUROC is computed
with :func:`sklearn.metrics.roc_auc_score` for grade 0 against all abnormal grades and against
each DR grade 1..4.

Pixel level (IDRiD, Table 2): AUROC, AUPR (average precision, scikit-learn's step-wise definition)
and balanced accuracy over every pixel inside the FOV of every test image. The full EyeQ test set
has about 5 billion pixel scores, so :class:`PixelMetrics` streams: it keeps two histograms of
quantised scores (one for lesion pixels, one for the others) and derives every metric from them.

Quantisation (see :func:`score_bins`): a score p in [0, 1] is binned on the bit pattern of
q = min(p, 1 - p), mirrored for p >= 0.5. A bin spans at most 2**-MANTISSA_BITS (1.2e-4 with the
default 13 bits) of q, so the resolution is relative: as fine near 0 and 1, where almost all pixel
scores of a trained network lie, as in the middle (uniform bins of [0, 1] would merge every score
below their width, e.g. 1e-6 for 2**20 bins). Every q below 2**-48 shares one bin; p = 0, 0.5 and
1 have a bin each. Equal scores always share a bin, so ties are handled exactly as scikit-learn
handles them. Distinct scores that share a bin are treated as ties too; :meth:`PixelMetrics.compute`
reports a guaranteed bound on the error this can cause (``auroc_binning_error``,
``aupr_binning_error``), computed from the histograms themselves: typically 1e-6 to 1e-5, but
large where many scores are truly tied (the bound cannot tell true ties within a bin from merged
distinct scores) other than at exactly 0, 0.5 or 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

#: Number of pixels the image score averages over (paper 4.1: "the top 10 pixels").
TOP_K = 10

#: The paper's reported rows for ReSynthDetect ("Ours"), for side-by-side tables.
PAPER_TABLE1 = {"0vs1": 0.556, "0vs2": 0.764, "0vs3": 0.941, "0vs4": 0.919, "0vsall": 0.722}
PAPER_TABLE2 = {"auroc": 0.931, "balanced_accuracy": 0.859, "aupr": 0.427}

TABLE1_COLUMNS = (("0vs1", "0vs1"), ("0vs2", "0vs2"), ("0vs3", "0vs3"), ("0vs4", "0vs4"),
                  ("0vsall", "0 vs all"))  # fmt: skip
TABLE2_COLUMNS = (("auroc", "AUROC"), ("balanced_accuracy", "ACC"), ("aupr", "AUPR"))

#: Mantissa bits kept by the score quantiser: relative bin width 2**-13 = 1.2e-4 (our choice:
#: 770,054 bins, 11.8 MiB of int64 counts for both classes; binning errors below 1e-5 against
#: scikit-learn on our random tests).
MANTISSA_BITS = 13
#: Every q = min(p, 1 - p) below 2**MIN_EXPONENT shares the extreme bins (a logit beyond +-33).
MIN_EXPONENT = -48


# ---------------------------------------------------------------------------------------------
# Image level


def image_score(prob_map: np.ndarray, fov: np.ndarray | None = None, k: int = TOP_K) -> float:
    """The image's anomaly score: mean of the ``k`` highest probabilities inside the FOV.

    ``prob_map`` is the anomaly probability, sigmoid of the detector's logits, in [0, 1], any
    shape; ``fov`` (same shape, nonzero = inside) defaults to the whole map. Where the FOV has
    fewer than ``k`` pixels, all of them are averaged.
    """
    if k < 1:
        raise ValueError(f"image score: k must be at least 1, got {k}")
    values = np.asarray(prob_map)
    if fov is not None:
        fov = np.asarray(fov)
        if fov.shape != values.shape:
            raise ValueError(f"image score: FOV shape {fov.shape} != map shape {values.shape}")
        values = values[fov.astype(bool)]
    values = values.ravel()
    if values.size == 0:
        raise ValueError("image score is undefined: the field of view is empty")
    if values.size > k:
        values = np.partition(values, values.size - k)[values.size - k :]
    return float(values.astype(np.float64).mean())


def image_auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Image-level AUROC of ``scores`` (higher = more abnormal) for ``labels`` (0 normal,
    1 abnormal), by :func:`sklearn.metrics.roc_auc_score`."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"image AUROC: {s.size} scores but {y.size} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("image AUROC: labels must be 0 (normal) or 1 (abnormal)")
    if not np.isfinite(s).all():
        raise ValueError("image AUROC: scores contain NaN or infinite values")
    for value, what in ((0, "normal (label 0)"), (1, "abnormal (label 1)")):
        if not (y == value).any():
            raise ValueError(f"image AUROC is undefined: no {what} images in the evaluated set")
    return float(roc_auc_score(y, s))


def grade_aurocs(
    scores: Sequence[float] | np.ndarray, grades: Sequence[int] | np.ndarray
) -> dict[str, float | None]:
    """The Table 1 row: AUROC of grade 0 against each DR grade 1..4 and against all of them.

    Column ``"0vsG"`` uses only the images of grade 0 and grade G; ``"0vsall"`` uses all images.
    A column whose grade has no image is ``None`` (the table prints "n/a"). Raises ``ValueError``
    when there is no grade-0 image or no abnormal image at all.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    g = np.asarray(grades).ravel()
    if s.shape != g.shape:
        raise ValueError(f"Table 1: {s.size} scores but {g.size} DR grades")
    if not np.isin(g, (0, 1, 2, 3, 4)).all():
        raise ValueError("Table 1: DR grades must be integers 0 to 4")
    if not (g == 0).any():
        raise ValueError("Table 1 is undefined: no grade-0 (normal) images in the evaluated set")
    if not (g > 0).any():
        raise ValueError("Table 1 is undefined: no images of DR grade 1 to 4 in the evaluated set")
    row: dict[str, float | None] = {}
    for grade in (1, 2, 3, 4):
        keep = (g == 0) | (g == grade)
        row[f"0vs{grade}"] = (
            image_auroc(s[keep], (g[keep] > 0).astype(int)) if (g == grade).any() else None
        )
    row["0vsall"] = image_auroc(s, (g > 0).astype(int))
    return row


# ---------------------------------------------------------------------------------------------
# Pixel level, streaming


def _bin_layout(mantissa_bits: int) -> tuple[int, int]:
    """(T, number of bins): T is the bin of q = 0.5 in the half-scale (see :func:`score_bins`)."""
    if not 1 <= mantissa_bits <= 23:
        raise ValueError(f"mantissa_bits must be in 1..23, got {mantissa_bits}")
    binades = -1 - MIN_EXPONENT  # [2**MIN_EXPONENT, 0.5)
    top = (binades << mantissa_bits) + 2
    return top, 2 * top + 2


def score_bins(scores: np.ndarray, mantissa_bits: int = MANTISSA_BITS) -> np.ndarray:
    """Bin index (intp) of each score in [0, 1]; non-decreasing in the score.

    With q = min(p, 1 - p) (exact: 1 - p is exact in floating point for p in [0.5, 1]), the
    half-scale index k is 0 for q = 0, 1 for 0 < q < 2**MIN_EXPONENT, then 2 + the binade and top
    ``mantissa_bits`` of the mantissa of q, read from its bit pattern (a non-negative float's bits
    grow with its value), up to T for q = 0.5. Scores p < 0.5 get bin k (0..T-1), scores p >= 0.5
    get bin 2T + 1 - k (T+1..2T+1). So p = 0, p = 0.5 and p = 1 each have a bin of their own and
    "p >= 0.5" is exact on the histogram. float64 scores are binned from their own bits (the bin
    edges are the same numbers), other dtypes as float32.
    """
    top, _ = _bin_layout(mantissa_bits)
    p = np.asarray(scores)
    if p.dtype != np.float64:
        p = p.astype(np.float32, copy=False)
    uint = np.dtype(np.uint64 if p.dtype == np.float64 else np.uint32).type
    shift = uint(np.finfo(p.dtype).nmant - mantissa_bits)
    lowest = uint(int(np.array(2.0**MIN_EXPONENT, dtype=p.dtype).view(uint)) - (1 << int(shift)))
    # In-place steps: this runs on every pixel of every evaluated image.
    upper = p >= 0.5
    q = np.subtract(p.dtype.type(1), p)
    np.minimum(q, p, out=q)
    q += 0  # -0.0 becomes +0.0, whose bits are 0
    bits = q.view(uint)
    k = np.maximum(bits, lowest)
    k -= lowest
    k >>= shift
    k += np.minimum(bits, uint(1))  # q = 0 alone in k = 0
    k = k.astype(np.intp)
    np.subtract(2 * top + 1, k, out=k, where=upper)
    return k


def _single_value_bins(mantissa_bits: int) -> list[int]:
    """The bins that hold one score value only (p = 0, 0.5, 1): their ties are true ties."""
    top, n_bins = _bin_layout(mantissa_bits)
    return [0, top + 1, n_bins - 1]


def bin_lower_edge(index: int, mantissa_bits: int = MANTISSA_BITS) -> float:
    """The smallest threshold t such that, for float32 scores p, ``p >= t`` iff bin(p) >= index.

    In the lower half (t < 0.5) this holds for float64 scores too; above 0.5, a float64 score
    within one float32 step below t may be binned at or above ``index``.
    """
    top, n_bins = _bin_layout(mantissa_bits)
    shift = 23 - mantissa_bits
    lowest = int(np.float32(2.0**MIN_EXPONENT).view(np.uint32)) - (1 << shift)

    def first_q(k: int) -> float:  # smallest q of half-scale index k >= 1
        if k == 1:
            return float(np.nextafter(np.float32(0), np.float32(1)))
        return float(np.uint32(lowest + ((k - 1) << shift)).view(np.float32))

    if index <= 0:
        return 0.0
    if index >= n_bins:
        return float(np.nextafter(np.float32(1.0), np.float32(2.0)))  # nothing is predicted
    if index <= top:
        return first_q(index)
    # upper half: bin >= index  <=>  k <= 2T+1-index  <=>  1 - p < first q of index k+1.
    q_next = first_q(2 * top + 2 - index)
    # float32 values in [0.5, 1] are 1 - m * 2**-24; take the largest m with m * 2**-24 < q_next
    m = max(int(np.ceil(q_next * 2.0**24)) - 1, 0)
    return max(1.0 - m * 2.0**-24, 0.5)


class PixelMetrics:
    """Streaming pixel-level AUROC, AUPR and balanced accuracy (the paper's Table 2).

    Call :meth:`update` once per image (or batch) and :meth:`compute` at the end; several workers'
    accumulators combine with :meth:`merge` (or, under DDP, by summing :attr:`counts` and
    :attr:`threshold_counts` across ranks with ``all_reduce``). Memory is fixed: two int64
    histograms of ``n_bins`` (770,054 by default: 11.8 MiB) whatever the number of pixels.

    Balanced accuracy predicts "lesion" where ``score >= threshold``; it is counted exactly
    (not from the histogram) at each of ``thresholds``, given at construction.
    """

    def __init__(
        self, thresholds: Sequence[float] = (0.5,), mantissa_bits: int = MANTISSA_BITS
    ) -> None:
        self.mantissa_bits = mantissa_bits
        _, self.n_bins = _bin_layout(mantissa_bits)
        self.thresholds = tuple(float(t) for t in thresholds)
        for t in self.thresholds:
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"pixel metrics: threshold {t} is outside [0, 1]")
        #: counts[0] = histogram of normal pixels' scores, counts[1] = of lesion pixels' scores.
        self.counts = np.zeros((2, self.n_bins), dtype=np.int64)
        #: threshold_counts[i, c] = pixels of class c with score >= thresholds[i].
        self.threshold_counts = np.zeros((len(self.thresholds), 2), dtype=np.int64)

    def update(
        self, prob_map: np.ndarray, gt_mask: np.ndarray, valid: np.ndarray | None = None
    ) -> None:
        """Add one map (any shape, or a batch): ``prob_map`` in [0, 1], ``gt_mask`` nonzero =
        lesion, ``valid`` nonzero = counted (the FOV; default everything)."""
        p = np.asarray(prob_map)
        gt = np.asarray(gt_mask)
        if gt.shape != p.shape:
            raise ValueError(f"pixel metrics: mask shape {gt.shape} != map shape {p.shape}")
        if p.size == 0:
            return
        if not (p.min() >= 0.0 and p.max() <= 1.0):  # also catches NaN
            raise ValueError(
                "pixel metrics: probabilities must lie in [0, 1] (NaN found or out of range)"
            )
        if valid is not None:
            valid = np.asarray(valid)
            if valid.shape != p.shape:
                raise ValueError(f"pixel metrics: valid shape {valid.shape} != map shape {p.shape}")
            keep = valid.ravel().astype(bool)
            p, gt = p.ravel()[keep], gt.ravel()[keep]
        p, gt = p.ravel(), gt.ravel().astype(bool)
        index = score_bins(p, self.mantissa_bits)
        np.add(index, self.n_bins, out=index, where=gt)  # lesion pixels count in counts[1]
        np.add.at(self.counts.reshape(-1), index, 1)  # no temporary histogram (numpy 2 fast path)
        for i, t in enumerate(self.thresholds):
            predicted = p >= t  # on the input's own dtype: exact, no binning
            lesion_hits = int(np.count_nonzero(predicted & gt))
            self.threshold_counts[i, 1] += lesion_hits
            self.threshold_counts[i, 0] += int(np.count_nonzero(predicted)) - lesion_hits

    def merge(self, other: PixelMetrics) -> PixelMetrics:
        """Add the counts of ``other`` (same binning and thresholds) to this one; returns self."""
        if other.mantissa_bits != self.mantissa_bits or other.thresholds != self.thresholds:
            raise ValueError(
                "pixel metrics: cannot merge accumulators with different binning or thresholds "
                f"({self.mantissa_bits} bits {self.thresholds} vs "
                f"{other.mantissa_bits} bits {other.thresholds})"
            )
        self.counts += other.counts
        self.threshold_counts += other.threshold_counts
        return self

    @property
    def n_pixels(self) -> int:
        return int(self.counts.sum())

    @property
    def n_lesion_pixels(self) -> int:
        return int(self.counts[1].sum())

    def _check_defined(self, metric: str) -> tuple[np.ndarray, np.ndarray, float, float]:
        neg, pos = self.counts[0].astype(np.float64), self.counts[1].astype(np.float64)
        n_pos, n_neg = float(pos.sum()), float(neg.sum())
        if n_pos == 0:
            raise ValueError(f"{metric} is undefined: no lesion pixels in the evaluated set")
        if n_neg == 0:
            raise ValueError(
                f"{metric} is undefined: no normal (non-lesion) pixels in the evaluated set"
            )
        return neg, pos, n_neg, n_pos

    def auroc(self) -> tuple[float, float]:
        """(pixel AUROC, bound on its binning error) as in ``roc_auc_score``.

        AUROC is the probability that a lesion pixel outscores a normal one, ties counting 1/2;
        pairs sharing a bin are counted as ties, so the error is at most half their share.
        """
        neg, pos, n_neg, n_pos = self._check_defined("pixel AUROC")
        neg_below = np.cumsum(neg) - neg
        area = float(np.dot(pos, neg_below + 0.5 * neg)) / (n_pos * n_neg)
        shared = pos * neg
        shared[_single_value_bins(self.mantissa_bits)] = 0  # true ties, counted exactly
        return area, 0.5 * float(shared.sum()) / (n_pos * n_neg)

    def average_precision(self) -> tuple[float, float]:
        """(pixel AUPR, bound on its binning error) as in ``average_precision_score``.

        AP = sum over thresholds t (descending) of (R(t) - R(t_prev)) * P(t), no interpolation. A
        bin holding p lesion and n normal pixels, with T lesion and F normal pixels above it,
        contributes p/P * precision at its end; the exact precisions within it lie between
        (T+1)/(T+1+F+n) and (T+p)/(T+p+F), which bounds the error.
        """
        neg, pos, n_neg, n_pos = self._check_defined("pixel AUPR")
        del n_neg
        sel = pos[::-1] > 0
        single = np.zeros(self.n_bins, dtype=bool)
        single[_single_value_bins(self.mantissa_bits)] = True
        p, n = pos[::-1][sel], neg[::-1][sel]
        tp = np.cumsum(pos[::-1])[sel]  # lesion pixels at or above each bin
        fp = np.cumsum(neg[::-1])[sel]
        precision = tp / (tp + fp)
        ap = float(np.dot(p, precision)) / n_pos
        above_tp, above_fp = tp - p, fp - n
        highest = (above_tp + p) / (above_tp + p + above_fp)
        lowest = (above_tp + 1) / (above_tp + 1 + above_fp + n)
        spread = np.maximum(highest - precision, precision - lowest)
        spread[single[::-1][sel]] = 0.0  # one value: exact
        return ap, float(np.dot(p, spread)) / n_pos

    def balanced_accuracy(self, threshold: float = 0.5) -> float:
        """Balanced accuracy (mean of sensitivity and specificity) predicting lesion where
        ``score >= threshold`` (compared in the scores' dtype), exact; ``threshold`` must be one of
        those given at construction."""
        _, _, n_neg, n_pos = self._check_defined("pixel balanced accuracy")
        try:
            i = self.thresholds.index(float(threshold))
        except ValueError:
            raise ValueError(
                f"pixel metrics: threshold {threshold} was not tracked (tracked: "
                f"{self.thresholds}); create PixelMetrics(thresholds=({threshold},)) to evaluate it"
            ) from None
        fp, tp = self.threshold_counts[i]
        return 0.5 * (tp / n_pos + (n_neg - fp) / n_neg)

    def best_balanced_accuracy(self) -> tuple[float, float]:
        """(threshold, balanced accuracy) maximising balanced accuracy over the bin edges.

        Predicting ``score >= threshold`` on float32 scores gives exactly that balanced accuracy;
        the optimum over all thresholds is at most half the largest (lesion share + normal share)
        of one bin higher.
        """
        neg, pos, n_neg, n_pos = self._check_defined("pixel balanced accuracy")
        # cut j: predict lesion iff bin >= j, for j = 0..n_bins.
        lesion_hit = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]]) / n_pos
        normal_ok = np.concatenate([[0.0], np.cumsum(neg)]) / n_neg
        score = 0.5 * (lesion_hit + normal_ok)
        j = int(np.argmax(score))
        return bin_lower_edge(j, self.mantissa_bits), float(score[j])

    def threshold_at_fpr(self, fpr: float) -> tuple[float, float]:
        """(threshold, false-positive rate): the lowest bin edge at which at most ``fpr`` of the
        normal pixels score ``>= threshold``, and the share that does (``fpr`` in [0, 1])."""
        if not 0.0 <= fpr <= 1.0:
            raise ValueError(f"pixel metrics: a false-positive rate must be in [0, 1], got {fpr}")
        neg = self.counts[0].astype(np.float64)
        if neg.sum() == 0:
            raise ValueError("threshold at a false-positive rate: no normal pixels were counted")
        # share of normal pixels at or above each cut j (predict lesion iff bin >= j)
        above = np.concatenate([np.cumsum(neg[::-1])[::-1], [0.0]]) / neg.sum()
        j = int(np.argmax(above <= fpr))  # non-increasing: the first cut that is low enough
        return bin_lower_edge(j, self.mantissa_bits), float(above[j])

    def curves(self, max_points: int = 2000) -> dict[str, np.ndarray]:
        """ROC and precision-recall curves from the histograms, for plots.

        Returns ``{"fpr", "tpr", "recall", "precision", "threshold"}``: one point per non-empty
        bin edge from the highest score down (as ``roc_curve`` / ``precision_recall_curve``
        would give on the binned scores), thinned to at most ``max_points`` evenly spread over
        the recall and the false-positive rate, with the curves' end points kept.
        ``threshold`` is each point's bin edge: predicting ``score >= threshold`` gives it.
        """
        neg, pos, n_neg, n_pos = self._check_defined("pixel curves")
        keep = (pos + neg)[::-1] > 0  # descending bins that hold any pixel
        tp = np.cumsum(pos[::-1])[keep]
        fp = np.cumsum(neg[::-1])[keep]
        edges = np.flatnonzero(keep[::-1])[::-1]  # ascending bin index of each point
        if len(tp) > max_points:
            half = max(max_points // 2 - 1, 1)
            pick = np.unique(
                np.concatenate(
                    [
                        np.searchsorted(tp, np.linspace(0, n_pos, half)),
                        np.searchsorted(fp, np.linspace(0, n_neg, half)),
                        [0, len(tp) - 1],
                    ]
                ).clip(0, len(tp) - 1)
            )
            tp, fp, edges = tp[pick], fp[pick], edges[pick]
        return {
            "fpr": fp / n_neg,
            "tpr": tp / n_pos,
            "recall": tp / n_pos,
            "precision": tp / np.maximum(tp + fp, 1.0),
            "threshold": np.array([bin_lower_edge(int(j), self.mantissa_bits) for j in edges]),
        }

    def compute(self, threshold: float = 0.5) -> dict[str, float | int]:
        """All pixel metrics as plain numbers (JSON-ready).

        Keys: ``auroc``, ``aupr``, ``balanced_accuracy`` (at ``threshold``), ``threshold``,
        ``best_threshold``, ``best_balanced_accuracy``, ``n_pixels``, ``n_lesion_pixels``,
        ``auroc_binning_error``, ``aupr_binning_error`` (guaranteed bounds). Raises ``ValueError``
        where the metrics are undefined (no lesion pixels, or no normal pixels).
        """
        auroc, auroc_err = self.auroc()
        aupr, aupr_err = self.average_precision()
        best_t, best_acc = self.best_balanced_accuracy()
        return {
            "auroc": auroc,
            "aupr": aupr,
            "balanced_accuracy": float(self.balanced_accuracy(threshold)),
            "threshold": float(threshold),
            "best_threshold": best_t,
            "best_balanced_accuracy": best_acc,
            "n_pixels": self.n_pixels,
            "n_lesion_pixels": self.n_lesion_pixels,
            "auroc_binning_error": auroc_err,
            "aupr_binning_error": aupr_err,
        }


# ---------------------------------------------------------------------------------------------
# Tables in the paper's layout


def _markdown_table(
    columns: Sequence[tuple[str, str]], rows: Sequence[tuple[str, Mapping[str, Any]]]
) -> str:
    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{float(value):.3f}"

    lines = [
        "| Method | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, row in rows:
        lines.append(f"| {name} | " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def format_table1(row: Mapping[str, float | None], method: str = "ReSynthDetect (this run)") -> str:
    """Markdown table in the layout of the paper's Table 1 (image-level AUROC, EyeQ), with the
    paper's reported ReSynthDetect row for reference. ``row`` as from :func:`grade_aurocs`."""
    return _markdown_table(
        TABLE1_COLUMNS, [("ReSynthDetect (paper, Table 1)", PAPER_TABLE1), (method, row)]
    )


def format_table2(row: Mapping[str, Any], method: str = "ReSynthDetect (this run)") -> str:
    """Markdown table in the layout of the paper's Table 2 (pixel-level AUROC, balanced accuracy
    "ACC", AUPR; IDRiD), with the paper's reported row; ``row`` as from
    :meth:`PixelMetrics.compute`."""
    return _markdown_table(
        TABLE2_COLUMNS, [("ReSynthDetect (paper, Table 2)", PAPER_TABLE2), (method, row)]
    )
