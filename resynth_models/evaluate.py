"""Scoring a dataset with a trained detector: the paper's metrics (section 4.1), tables in the
layout of Tables 1 and 2, a per-image CSV and Fig. 4-style overlays.

    detector = load_detector("runs/exp1", device)
    eval_set = open_eval_set("idrid", "IDRiD", split="all", normal_dir="IDRiD/normal")
    result = evaluate(detector, eval_set, "eval/idrid", batch_size=4, device=device)
    print(result.markdown())

Per image: the photograph is prepared exactly as in training (:func:`load_item` with the
detector's size and CLAHE setting), the detector gives an anomaly map in [0, 1] (the localisation
network's probability, or the stage-1 reconstruction error), and only the field of view (FOV)
counts: the image score is the mean of the 10 highest probabilities inside it
(:func:`~resynth_models.metrics.image_score`) and the pixel statistics take FOV pixels only.

Memory is bounded whatever the size of the set: pixel statistics stream into
:class:`~resynth_models.metrics.PixelMetrics` (fixed-size histograms), and of the maps only those
of the current batch and of the few best/worst candidates for the overlays are kept.

Photographs are read and prepared by a small pool of threads a few images ahead of the network
(JPEG decoding in Pillow and OpenCV's resize/CLAHE release the GIL, so threads run in parallel,
with none of a DataLoader's process start-up or pickling, and nothing forks a process that holds
CUDA). An image that cannot be read or has no FOV is reported and skipped, never fatal.

Outputs (:meth:`EvaluationResult.write`): ``metrics.json``, ``metrics.md``, ``per_image.csv`` and
``overlays/*.png``; see ``docs`` in :func:`evaluate`.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import math
import os
import platform
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from sklearn.metrics import average_precision_score

from anomalygen.errors import AnomalygenError, ConfigError
from anomalygen.fundus import PreparedFundus
from anomalygen.progress import Progress
from resynth_models import overlay as draw
from resynth_models.curves import plot_curves
from resynth_models.datasets import OTHER_LESION, EvalItem, EvalSet, load_item_by_type
from resynth_models.devices import detector_device, resolve_device
from resynth_models.metrics import (
    PAPER_TABLE1,
    PixelMetrics,
    format_table1,
    format_table2,
    grade_aurocs,
    image_auroc,
    image_score,
)

__all__ = [
    "EVAL_FORMAT",
    "DetectorLike",
    "EvaluationResult",
    "ImageResult",
    "anomaly_maps",
    "evaluate",
    "prefetch",
    "score_in_batches",
]

EVAL_FORMAT = {"format": "resynth-evaluation", "format_version": 1}

#: Overlays written for the best and for the worst images (ours: 4 each, as a Fig. 4 panel).
DEFAULT_OVERLAYS = 4
#: Images being read ahead of the network, per loader thread (ours: enough to hide one batch).
READ_AHEAD = 2


class DetectorLike(Protocol):
    """What :func:`evaluate` and :func:`~resynth_models.predict.predict` use of a detector
    (``resynth_models.checkpoint.Detector``)."""

    size: int
    clahe: bool
    scoring: str

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------
# Shared with predict: device, prefetching, batched inference


def default_workers() -> int:
    """Loader threads: one per CPU, at most 8. Measured here: reading and preparing one
    photograph at 768 px takes 0.1 s (a 1000 px PNG) to 0.5 s (IDRiD's 4288 x 2848 JPEG) on one
    core, while a GPU scores a 768 px image in milliseconds, so on a GPU the loader sets the pace.
    On a CPU the network does (seconds per image) and idle loader threads cost nothing."""
    return max(1, min(8, os.cpu_count() or 1))


def prefetch(
    items: Iterable[Any], load: Callable[[Any], Any], workers: int
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """``(item, load(item), None)`` or ``(item, None, error)`` for each item, in order, while up
    to ``workers * READ_AHEAD`` later items load in ``workers`` threads. The project's errors,
    OSError/ValueError and OpenCV's errors (an odd image) are caught per item; anything else,
    a bug, propagates."""
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")

    def safe(item: Any) -> tuple[Any, BaseException | None]:
        try:
            return load(item), None
        except (AnomalygenError, OSError, ValueError, cv2.error) as err:
            return None, err

    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resynth-load") as pool:
        pending: deque[tuple[Any, Future]] = deque()
        try:
            for item in itertools.islice(iterator, workers * READ_AHEAD):
                pending.append((item, pool.submit(safe, item)))
            while pending:
                item, future = pending.popleft()
                value, error = future.result()
                for nxt in itertools.islice(iterator, 1):
                    pending.append((nxt, pool.submit(safe, nxt)))
                yield item, value, error
        finally:
            for _, future in pending:
                future.cancel()


#: The threshold of a detector that has none of its own (the middle of the probability range).
DEFAULT_THRESHOLD = 0.5


def score_in_batches(
    items: Iterable[Any],
    load: Callable[[Any], Any],
    score: Callable[[list[tuple[Any, Any]]], None],
    *,
    batch_size: int,
    workers: int,
    bar: Progress,
    report: Callable[[str], None],
) -> list[dict[str, str]]:
    """Load ``items`` ahead (:func:`prefetch`) and ``score`` them in batches of ``(item,
    load(item))``, ``batch_size`` at a time, advancing ``bar``. An item that cannot be loaded is
    reported and skipped; returns the skipped ones, ``[{"name", "reason"}]``."""
    skipped: list[dict[str, str]] = []
    batch: list[tuple[Any, Any]] = []
    for item, loaded, error in prefetch(items, load, workers):
        if error is not None:
            reason = str(error).replace(str(item.path), "").strip(" :") or type(error).__name__
            skipped.append({"name": item.name, "reason": reason})
            report(f"skipped {item.name}: {reason}")
            bar.advance(1)
            continue
        batch.append((item, loaded))
        if len(batch) == batch_size:
            score(batch)
            bar.advance(len(batch))
            batch = []
    if batch:
        score(batch)
        bar.advance(len(batch))
    return skipped


def own_threshold(detector: Any) -> float:
    """The detector's own pixel threshold (``detector.threshold``), or
    :data:`DEFAULT_THRESHOLD` where it has none."""
    value = getattr(detector, "threshold", None)
    return DEFAULT_THRESHOLD if value is None else float(value)


def anomaly_maps(
    detector: DetectorLike, images: list[np.ndarray], device: torch.device, amp: bool = True
) -> np.ndarray:
    """The detector's maps (B, H, W) float32 in [0, 1] for RGB uint8 images (H, W, 3).

    uint8 goes to the device (a quarter of float's bytes) and becomes float (B, 3, H, W) in
    [0, 1] there; under ``torch.no_grad``, with bf16 autocast on CUDA when ``amp``. Values are
    clipped to [0, 1]; NaN or infinite values raise :class:`AnomalygenError` (a broken model).
    """
    batch = torch.from_numpy(np.stack(images))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        if device.type == "cuda" and amp:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                maps = detector.anomaly_map(x)
        else:
            maps = detector.anomaly_map(x)
    out = maps.float().cpu().numpy()
    if out.shape != (len(images), *images[0].shape[:2]):
        raise AnomalygenError(
            f"detector returned maps of shape {out.shape} for {len(images)} images of "
            f"{images[0].shape[:2]}; expected (B, H, W)"
        )
    if not np.isfinite(out).all():
        raise AnomalygenError(
            "detector produced NaN/inf anomaly maps: the checkpoint is probably broken (training "
            "diverged?); check RUN/metrics.jsonl"
        )
    return out.clip(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ImageResult:
    """One scored image (a row of ``per_image.csv``)."""

    name: str  # the item's name in its set, e.g. "IDRiD_55.jpg" or "normal/x.png"
    path: str
    label: int  # 0 normal, 1 abnormal
    grade: int | None  # DR grade (EyeQ) or None
    score: float  # image score: mean of the 10 highest probabilities in the FOV (paper 4.1)
    max_prob: float  # highest probability in the FOV
    area_above: float  # fraction of FOV pixels with probability >= threshold
    lesion_pixels: int | None  # ground-truth lesion pixels in the FOV; None without a mask
    pixel_aupr: float | None  # this image's pixel AUPR (average precision); None if undefined


CSV_COLUMNS = (
    "file", "label", "grade", "score", "max_prob", "area_above_threshold", "lesion_pixels",
    "pixel_aupr", "path",
)  # fmt: skip


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` measured; :meth:`to_dict` is ``metrics.json``."""

    dataset: dict[str, Any]  # kind, root, description, n_items, n_normal, n_abnormal, problems
    detector: dict[str, Any]  # checkpoint, scoring, size, clahe
    threshold: float
    images: list[ImageResult]
    skipped: list[dict[str, str]]  # [{"name", "reason"}]
    image_level: dict[str, Any] | None  # Table 1 row (EyeQ) or {"auroc": ...}; None if undefined
    image_level_note: str | None  # why image level is undefined, or what it covers
    pixel_level: dict[str, Any] | None  # PixelMetrics.compute(); None if undefined
    pixel_level_note: str | None
    # Per lesion type (IDRiD's MA, HE, EX, SE): PixelMetrics.compute() of that type's pixels
    # against the pixels of no lesion (other types' pixels left out), plus "n_images" with it.
    pixel_by_type: dict[str, dict[str, Any]] = field(default_factory=dict)
    # ROC and PR points (PixelMetrics.curves) per lesion type and for "all": curves.png/.csv.
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    overlays: list[dict[str, Any]] = field(default_factory=list)  # {"file", "kind", "name", ...}
    seconds: float = 0.0
    device: str = "cpu"

    @property
    def n_scored(self) -> int:
        return len(self.images)

    def to_dict(self) -> dict[str, Any]:
        return {
            **EVAL_FORMAT,
            "dataset": self.dataset,
            "detector": self.detector,
            "threshold": self.threshold,
            "n_images": self.dataset.get("n_items", self.n_scored + len(self.skipped)),
            "n_scored": self.n_scored,
            "skipped": self.skipped,
            "image_level": self.image_level,
            "image_level_note": self.image_level_note,
            "pixel_level": self.pixel_level,
            "pixel_level_note": self.pixel_level_note,
            "pixel_by_type": self.pixel_by_type,
            "overlays": self.overlays,
            "timing": {
                "seconds": round(self.seconds, 3),
                "images_per_s": round(self.n_scored / self.seconds, 3) if self.seconds else None,
                "device": self.device,
            },
            "versions": _versions(),
        }

    def markdown(self) -> str:
        """``metrics.md``: the tables in the paper's layout, with the paper's row for reference."""
        d = self.dataset
        lines = [
            f"# Evaluation: {d.get('kind', '?')}",
            "",
            f"- dataset: {d.get('description', '')}",
            f"- checkpoint: {self.detector.get('checkpoint') or '(given as an object)'} "
            f"(scoring: {self.detector.get('scoring')}, {self.detector.get('size')} px, "
            f"CLAHE {'on' if self.detector.get('clahe') else 'off'})",
            f"- images scored: {self.n_scored} of {self.n_scored + len(self.skipped)}"
            + (f" ({len(self.skipped)} skipped, listed below)" if self.skipped else ""),
            f"- time: {self.seconds:.1f} s on {self.device}"
            + (f" ({self.n_scored / self.seconds:.2f} images/s)" if self.seconds else ""),
            "",
            "## Image level (AUROC; layout of the paper's Table 1)",
            "",
        ]
        if self.image_level is None:
            lines.append(f"Not computed: {self.image_level_note}")
        elif "auroc" in self.image_level:  # no DR grades: normal vs abnormal only
            lines += [
                "| Method | AUROC (normal vs abnormal) |",
                "|---|---:|",
                f"| ReSynthDetect (this run) | {self.image_level['auroc']:.3f} |",
                "",
                f"Paper, Table 1 (EyeQ, 0 vs all): {PAPER_TABLE1['0vsall']:.3f}. "
                + (self.image_level_note or ""),
            ]
        else:
            lines.append(format_table1(self.image_level).rstrip())
            if self.image_level_note:
                lines += ["", self.image_level_note]
        lines += ["", "## Pixel level (layout of the paper's Table 2)", ""]
        if self.pixel_level is None:
            lines.append(f"Not computed: {self.pixel_level_note}")
        else:
            p = self.pixel_level
            lines += [
                format_table2(p).rstrip(),
                "",
                f"ACC is the balanced accuracy at threshold {p['threshold']:g}; the threshold "
                f"maximising it is {p['best_threshold']:.4g} "
                f"(ACC {p['best_balanced_accuracy']:.3f})."
                f" {p['n_pixels']:,} FOV pixels, {p['n_lesion_pixels']:,} of them lesion. "
                f"Streaming binning error bounds: AUROC {p['auroc_binning_error']:.1e}, "
                f"AUPR {p['aupr_binning_error']:.1e}.",
            ]
            if self.pixel_level_note:
                lines += ["", self.pixel_level_note]
        if self.pixel_by_type:
            lines += ["", "## Pixel level per lesion type", "", *_type_table(self)]
        if self.overlays:
            lines += ["", "## Overlays", ""]
            lines += [f"- `{o['file']}`: {o['caption']}" for o in self.overlays]
        if self.skipped:
            lines += ["", "## Skipped images", ""]
            lines += [f"- {s['name']}: {s['reason']}" for s in self.skipped]
        if d.get("problems"):
            lines += ["", "## Dataset notes", ""]
            lines += [f"- {p}" for p in d["problems"]]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``metrics.json``, ``metrics.md`` and ``per_image.csv`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out / "metrics.md").write_text(self.markdown())
        with (out / "per_image.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for r in self.images:
                writer.writerow([
                    r.name, r.label, _cell(r.grade), f"{r.score:.6f}", f"{r.max_prob:.6f}",
                    f"{r.area_above:.6f}", _cell(r.lesion_pixels),
                    "" if r.pixel_aupr is None else f"{r.pixel_aupr:.6f}", r.path,
                ])  # fmt: skip
        written = [out / "metrics.json", out / "metrics.md", out / "per_image.csv"]
        if self.curves:
            written += self._write_curves(out)
        return written

    def _write_curves(self, out: Path) -> list[Path]:
        """``curves.csv`` (every point) and ``curves.png`` (ROC and PR, one curve per type)."""
        with (out / "curves.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["lesions", "threshold", "fpr", "tpr", "precision", "recall"])
            for name, c in self.curves.items():
                for row in zip(c["threshold"], c["fpr"], c["tpr"], c["precision"], c["recall"],
                               strict=True):  # fmt: skip
                    writer.writerow([name, *(f"{v:.6g}" for v in row)])
        summary = {k: v for k, v in self.pixel_by_type.items()}
        if self.pixel_level is not None:
            summary["all"] = self.pixel_level
        labels = {
            name: f"{LESION_NAMES.get(name, name)}: AUROC {summary[name]['auroc']:.3f}, "
            f"AUPR {summary[name]['aupr']:.3f}"
            for name in self.curves
        }
        title = f"{self.dataset.get('kind', '')}: {self.detector.get('checkpoint') or 'detector'}"
        plot_curves(self.curves, labels, out / "curves.png", title=title)
        return [out / "curves.csv", out / "curves.png"]


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


#: Names of IDRiD's lesion codes in tables and plots.
LESION_NAMES = {
    "MA": "microaneurysms (MA)",
    "HE": "haemorrhages (HE)",
    "EX": "hard exudates (EX)",
    "SE": "soft exudates (SE)",
    OTHER_LESION: "lesions",
}


def _type_table(result: EvaluationResult) -> list[str]:
    """Markdown lines: one row per lesion type and one for all lesions together."""
    t = result.threshold
    lines = [
        f"| lesions | images | lesion pixels | AUROC | AUPR | ACC at {t:.3g} "
        "| best ACC (threshold) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(LESION_NAMES.get(k, k), v) for k, v in result.pixel_by_type.items()]
    if result.pixel_level is not None:
        n_images = sum(r.lesion_pixels is not None and r.lesion_pixels > 0 for r in result.images)
        rows.append(("all", {**result.pixel_level, "n_images": n_images}))
    for name, m in rows:
        lines.append(
            f"| {name} | {m['n_images']} | {m['n_lesion_pixels']:,} | {m['auroc']:.3f} | "
            f"{m['aupr']:.3f} | {m['balanced_accuracy']:.3f} | "
            f"{m['best_balanced_accuracy']:.3f} ({m['best_threshold']:.3g}) |"
        )
    lines += [
        "",
        "Each type's row scores its lesion pixels against the pixels of no lesion (pixels of the "
        "other types are left out); 'all' scores every lesion pixel against the same normal "
        "pixels. Curves: `curves.png`.",
    ]
    return lines


def _versions() -> dict[str, str]:
    import anomalygen

    return {
        "anomalygen": anomalygen.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# Overlay candidates: a bounded gallery of the best and worst images


@dataclass
class _Candidate:
    result: ImageResult
    image: np.ndarray  # prepared photograph (H, W, 3) uint8
    prob: np.ndarray  # anomaly map (H, W) float32, 0 outside the FOV
    fov: np.ndarray  # (H, W) bool
    mask: np.ndarray | None  # ground truth (H, W) uint8 or None


class _TopK:
    """The ``k`` candidates with the largest key (ties: earlier images first). O(k) memory."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._heap: list[tuple[float, int, _Candidate]] = []
        self._count = itertools.count()

    def offer(self, key: float, make: Callable[[], _Candidate]) -> None:
        if self.k <= 0:
            return
        entry_key = (key, -next(self._count))
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, (*entry_key, make()))
        elif entry_key > self._heap[0][:2]:
            heapq.heapreplace(self._heap, (*entry_key, make()))

    def ranked(self) -> list[_Candidate]:
        return [c for *_, c in sorted(self._heap, key=lambda e: e[:2], reverse=True)]


class _Gallery:
    """Which images get overlays.

    With ground-truth masks (pixel labels): the images with lesions ranked by their own pixel
    AUPR, ``best`` the highest and ``worst`` the lowest (Fig. 4 overlays). Without: heat maps of
    the abnormal images with the highest scores (``best``: clearest detections), and as
    ``worst`` the abnormal images with the lowest scores (misses) and the normal images with the
    highest (false alarms), half each.
    """

    def __init__(self, k: int, pixel_labels: bool) -> None:
        self.pixel_labels = pixel_labels
        self.slots: dict[str, _TopK] = (
            {"best": _TopK(k), "worst": _TopK(k)}
            if pixel_labels
            else {"best": _TopK(k), "missed": _TopK((k + 1) // 2), "false-alarm": _TopK(k // 2)}
        )

    def offer(self, result: ImageResult, make: Callable[[], _Candidate]) -> None:
        if self.pixel_labels:
            if result.pixel_aupr is not None:
                self.slots["best"].offer(result.pixel_aupr, make)
                self.slots["worst"].offer(-result.pixel_aupr, make)
        elif result.label == 1:
            self.slots["best"].offer(result.score, make)
            self.slots["missed"].offer(-result.score, make)
        else:
            self.slots["false-alarm"].offer(result.score, make)

    def selection(self) -> list[tuple[str, int, _Candidate]]:
        """(slot, rank from 1, candidate), each image once. With pixel labels and fewer than
        2k ranked images, ``best`` takes the upper half and ``worst`` the rest."""
        ranked = {slot: top.ranked() for slot, top in self.slots.items()}
        if self.pixel_labels:
            names = {c.result.name for cands in ranked.values() for c in cands}
            n_best = min(self.slots["best"].k, math.ceil(len(names) / 2))
            ranked["best"] = ranked["best"][:n_best]
        out, shown = [], set()
        for slot, cands in ranked.items():
            rank = 0
            for cand in cands:
                if cand.result.name in shown:
                    continue
                shown.add(cand.result.name)
                rank += 1
                out.append((slot, rank, cand))
        return out


def _safe_name(name: str) -> str:
    stem = name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "image"


def _render_candidate(slot: str, cand: _Candidate, threshold: float) -> tuple[np.ndarray, str]:
    r = cand.result
    heat = draw.heatmap_overlay(cand.image, cand.prob, cand.fov, with_colorbar=True)
    if cand.mask is not None:
        pred = cand.prob >= threshold
        fig4 = draw.fig4_overlay(cand.image, pred, cand.mask, cand.fov)
        panel = draw.side_by_side([cand.image, fig4, heat])
        text = (
            f"{slot}: {r.name}  pixel AUPR {r.pixel_aupr:.3f}  score {r.score:.3f}  "
            f"(overlay at threshold {threshold:g})"
        )
        legend = draw.fig4_legend(panel.shape[1], side=panel.shape[0])
        return np.concatenate([draw.caption(panel, text), legend], axis=0), text
    grade = f" grade {r.grade}" if r.grade is not None else ""
    text = f"{slot}: {r.name}  label {r.label}{grade}  score {r.score:.3f}"
    return draw.caption(draw.side_by_side([cand.image, heat]), text), text


# ---------------------------------------------------------------------------------------------
# The evaluation


def _per_image_aupr(prob: np.ndarray, mask: np.ndarray, fov: np.ndarray) -> float | None:
    """This image's pixel average precision inside the FOV; None without both classes."""
    truth = mask[fov].astype(bool)
    if truth.all() or not truth.any():
        return None
    return float(average_precision_score(truth, prob[fov]))


def evaluate(
    detector: DetectorLike,
    eval_set: EvalSet,
    out_dir: str | Path | None,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    threshold: float | None = None,
    progress: bool = True,
    *,
    n_overlays: int = DEFAULT_OVERLAYS,
    workers: int | None = None,
    amp: bool = True,
    checkpoint: str | None = None,
    log: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Score every image of ``eval_set`` with ``detector`` and compute the paper's metrics.

    - ``detector``: a loaded detector on ``device`` (``resynth_models.checkpoint.load_detector``).
    - ``out_dir``: where to write ``metrics.json``, ``metrics.md``, ``per_image.csv`` and
      ``overlays/`` (Fig. 4 overlays of the ``n_overlays`` best and worst images); None writes
      nothing.
    - ``batch_size``: images per forward pass; ``workers``: loader threads (default
      :func:`default_workers`); ``amp``: bf16 autocast on CUDA.
    - ``threshold``: for the pixel balanced accuracy ("ACC"), the overlays and the per-image
      "area above threshold". None takes the detector's own (``detector.threshold``: chosen on
      the synthetic validation set at the end of training), else 0.5 (the paper does not state
      its threshold).
    - ``progress``: a progress bar (rich on a terminal, plain lines otherwise) on stderr;
      ``log``: where to report skipped images (default: through the progress display).

    Image level: with DR grades (EyeQ) the Table 1 row (0 vs each grade 1..4 and 0 vs all),
    otherwise the AUROC of normal vs abnormal. Pixel level (sets with masks): pixel AUROC, AUPR,
    balanced accuracy at ``threshold`` and the threshold maximising it, over FOV pixels of all
    images with a mask. Where a metric is undefined for this set (no normal images, no masks,
    no lesion pixels), it is None and the result says why; nothing raises for it.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    threshold = own_threshold(detector) if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {threshold}")
    if len(eval_set) == 0:
        raise AnomalygenError(f"nothing to evaluate: {eval_set.description or 'empty set'}")
    device = resolve_device(device if device is not None else detector_device(detector))
    workers = default_workers() if workers is None else workers
    scoring = _Scoring(detector, eval_set, threshold, device, amp, n_overlays)

    start = time.perf_counter()
    bar = Progress(len(eval_set), description="evaluate", unit="images", enabled=progress)
    report = log if log is not None else bar.log
    with bar:
        skipped = score_in_batches(eval_set, scoring.load, scoring.score_batch,
                                   batch_size=batch_size, workers=workers, bar=bar,
                                   report=report)  # fmt: skip
    seconds = time.perf_counter() - start

    if not scoring.images:
        raise AnomalygenError(
            f"no image of {eval_set.description or 'the set'} could be scored: all "
            f"{len(skipped)} were skipped (first: {skipped[0]['name']}: {skipped[0]['reason']})"
        )
    result = _evaluation_result(scoring, eval_set, skipped, checkpoint, seconds)
    if out_dir is not None:
        _write_overlays(Path(out_dir), result, scoring.gallery)
        result.write(Path(out_dir))
    return result


class _Scoring:
    """One evaluation's running totals: every image's result, the pixel metrics (all lesions,
    and per lesion type) and the candidates for the overlays."""

    def __init__(
        self,
        detector: DetectorLike,
        eval_set: EvalSet,
        threshold: float,
        device: torch.device,
        amp: bool,
        n_overlays: int,
    ) -> None:
        self.detector, self.threshold, self.device, self.amp = detector, threshold, device, amp
        has_masks = eval_set.has_pixel_labels
        self.pixel = PixelMetrics(thresholds=(threshold,)) if has_masks else None
        types = [t for t in eval_set.lesion_types if t != OTHER_LESION]
        self.by_type = {t: PixelMetrics(thresholds=(threshold,)) for t in types}
        self.type_images = dict.fromkeys(types, 0)
        self.gallery = _Gallery(n_overlays, has_masks)
        self.images: list[ImageResult] = []
        self.any_mask = False

    def load(self, item: EvalItem) -> tuple[PreparedFundus, dict[str, np.ndarray] | None]:
        return load_item_by_type(item, size=self.detector.size, clahe=self.detector.clahe)

    def update_types(self, prob: np.ndarray, masks: dict[str, np.ndarray], union: np.ndarray,
                     fov: np.ndarray) -> None:  # fmt: skip
        for t, metrics in self.by_type.items():
            mask = masks.get(t)
            if mask is None:  # this image has none of type t: its normal pixels still count
                metrics.update(prob, union, valid=fov & (union == 0))
                continue
            self.type_images[t] += bool(mask.any())
            metrics.update(prob, mask, valid=fov & ((mask != 0) | (union == 0)))

    def score_batch(self, batch: list[tuple[EvalItem, tuple[PreparedFundus, dict | None]]]) -> None:
        images = [prepared.image for _, (prepared, _) in batch]
        maps = anomaly_maps(self.detector, images, self.device, self.amp)
        for (item, (prepared, masks)), prob in zip(batch, maps, strict=True):
            fov = prepared.fov.astype(bool)
            prob[~fov] = 0.0  # outside the FOV does not count (and is not drawn)
            inside = prob[fov]
            lesion_pixels = aupr = mask = None
            if masks is not None:
                self.any_mask = True
                assert self.pixel is not None
                mask = np.zeros(fov.shape, dtype=np.uint8)
                for m in masks.values():
                    mask |= m
                self.pixel.update(prob, mask, valid=fov)
                self.update_types(prob, masks, mask, fov)
                lesion_pixels = int(np.count_nonzero(mask[fov]))
                aupr = _per_image_aupr(prob, mask, fov)
            result = ImageResult(
                name=item.name,
                path=str(item.path),
                label=item.label,
                grade=item.grade,
                score=image_score(prob, fov),
                max_prob=float(inside.max()),
                area_above=float(np.count_nonzero(inside >= self.threshold)) / inside.size,
                lesion_pixels=lesion_pixels,
                pixel_aupr=aupr,
            )
            self.images.append(result)
            self.gallery.offer(
                result,
                lambda p=prepared, m=mask, pr=prob, r=result, f=fov: _Candidate(
                    r, p.image, pr.copy(), f, m
                ),
            )


def _evaluation_result(
    scoring: _Scoring,
    eval_set: EvalSet,
    skipped: list[dict[str, str]],
    checkpoint: str | None,
    seconds: float,
) -> EvaluationResult:
    """The metrics of a finished scoring."""
    detector, threshold = scoring.detector, scoring.threshold
    image_level, image_note = _image_level(scoring.images)
    pixel_level, pixel_note = _pixel_level(scoring.pixel, eval_set, scoring.any_mask, threshold)
    pixel_by_type, curves = _per_type(
        pixel_level, scoring.pixel, scoring.by_type, scoring.type_images, threshold
    )
    return EvaluationResult(
        dataset={
            "kind": eval_set.kind,
            "root": str(eval_set.root),
            "description": eval_set.description,
            "n_items": len(eval_set),
            "n_normal": eval_set.n_normal,
            "n_abnormal": eval_set.n_abnormal,
            "problems": list(eval_set.problems),
        },
        detector={
            "checkpoint": checkpoint,
            "scoring": getattr(detector, "scoring", "localization"),
            "threshold": getattr(detector, "threshold", None),
            "flip": bool(getattr(detector, "flip", False)),
            "size": detector.size,
            "clahe": detector.clahe,
        },
        threshold=threshold,
        images=scoring.images,
        skipped=skipped,
        image_level=image_level,
        image_level_note=image_note,
        pixel_level=pixel_level,
        pixel_level_note=pixel_note,
        pixel_by_type=pixel_by_type,
        curves=curves,
        seconds=seconds,
        device=str(scoring.device),
    )


def _write_overlays(out: Path, result: EvaluationResult, gallery: _Gallery) -> None:
    """``out/overlays/``: the gallery's pictures (those of an earlier run into ``out`` go)."""
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    for stale in (out / "overlays").glob("*.png"):  # from an earlier run into this folder
        if re.match(r"(best|worst|missed|false-alarm)_\d+_", stale.name):
            stale.unlink()
    for slot, rank, cand in gallery.selection():
        picture, text = _render_candidate(slot, cand, result.threshold)
        rel = f"overlays/{slot}_{rank:02d}_{_safe_name(cand.result.name)}.png"
        if not cv2.imwrite(str(out / rel), np.ascontiguousarray(picture[..., ::-1])):
            raise AnomalygenError(f"cannot write {out / rel}")
        result.overlays.append(
            {"file": rel, "kind": slot, "name": cand.result.name, "caption": text}
        )


def _per_type(
    pixel_level: dict[str, Any] | None,
    pixel: PixelMetrics | None,
    by_type: dict[str, PixelMetrics],
    type_images: dict[str, int],
    threshold: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """Metrics and curves per lesion type with lesion pixels, and the curves of "all"."""
    if pixel_level is None or pixel is None:
        return {}, {}
    metrics, curves = {}, {}
    for t, m in by_type.items():
        if m.n_lesion_pixels == 0:
            continue
        metrics[t] = {**m.compute(threshold), "n_images": type_images[t]}
        curves[t] = m.curves()
    curves["all"] = pixel.curves()
    return metrics, curves


def _image_level(images: list[ImageResult]) -> tuple[dict[str, Any] | None, str | None]:
    scores = [r.score for r in images]
    grades = [r.grade for r in images]
    labels = [r.label for r in images]
    try:
        if all(g is not None for g in grades):
            row = grade_aurocs(scores, grades)
            missing = [k for k, v in row.items() if v is None]
            note = f"no images of {', '.join(missing)} grade(s): n/a" if missing else None
            return dict(row), note
        auroc = image_auroc(scores, labels)
        n0 = labels.count(0)
        note = f"{n0} normal and {len(labels) - n0} abnormal images; no DR grades in this set."
        return {"auroc": auroc}, note
    except ValueError as err:
        hint = ""
        if 0 not in labels:
            hint = " (for IDRiD, give the normal test photographs with --normal-dir)"
        return None, f"{err}{hint}"


def _pixel_level(
    pixel: PixelMetrics | None, eval_set: EvalSet, any_mask: bool, threshold: float
) -> tuple[dict[str, Any] | None, str | None]:
    if pixel is None or not any_mask:
        reason = (
            "no ground-truth lesion masks in this dataset (pixel-level metrics need IDRiD or a "
            "folder layout with masks/)"
            if pixel is None
            else "every image with a ground-truth mask was skipped"
        )
        return None, reason
    try:
        metrics = pixel.compute(threshold)
    except ValueError as err:
        return None, str(err)
    note = None
    if eval_set.kind == "idrid" and eval_set.n_normal == 0:
        note = (
            "No normal images in this set: the paper's Table 2 also counts the pixels of 32 "
            "normal test images (give them with --normal-dir)."
        )
    return {k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()}, note
