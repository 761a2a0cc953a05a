"""Anomaly maps for new photographs: one overlay PNG per image and a CSV of scores.

    detector = load_detector("runs/exp1", device)
    result = predict(detector, ["new_photos/", "one.jpg"], "predictions", device=device)

Each photograph is prepared exactly as in training (:func:`anomalygen.fundus.prepare_fundus`
with the detector's size and CLAHE setting: crop to the field of view (FOV), resize, CLAHE) and
scored there. The maps and overlays are then written in ``frame``:

- ``"original"`` (default): the photograph's own geometry and resolution. The map is sent back
  through the FOV crop, padding and resize (:func:`anomalygen.fundus.unapply_square`, linear
  between the network's pixels) and drawn over the photograph as it was read (no CLAHE);
- ``"square"``: the prepared square the network sees, at the detector's size.

Outside the FOV the map is 0. The scores (``scores.csv``, captions) are those of the prepared
square, whatever the frame: the image score is the paper's, at the resolution it was trained at.

Writes into ``out_dir``:

- ``overlays/<name>.png``: the photograph and the heat-map overlay side by side, with the image
  score written above (``<name>`` mirrors the input's path under a given folder);
- ``maps/<name>.png`` with ``save_maps``: the anomaly map as a 16-bit greyscale PNG,
  probability = value / 65535;
- ``scores.csv``: one row per photograph (see :data:`CSV_COLUMNS`).

Unreadable photographs, or ones without a visible FOV, are reported and skipped.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import torch

from anomalygen.errors import AnomalygenError, ConfigError
from anomalygen.fundus import PreparedFundus, prepare_fundus, read_image, unapply_square
from anomalygen.progress import Progress
from anomalygen.sources import IMAGE_SUFFIXES, find_sources
from resynth_models import overlay as draw
from resynth_models.devices import detector_device, resolve_device
from resynth_models.evaluate import (
    DetectorLike,
    anomaly_maps,
    default_workers,
    own_threshold,
    score_in_batches,
)
from resynth_models.metrics import image_score

__all__ = [
    "CSV_COLUMNS",
    "FRAMES",
    "InputImage",
    "Prediction",
    "PredictionResult",
    "find_inputs",
    "in_frame",
    "predict",
]

CSV_COLUMNS = (
    "file", "score", "max_prob", "mean_prob", "area_above_threshold", "pixels_above_threshold",
    "fov_pixels", "overlay", "map", "path",
)  # fmt: skip

#: Rendered overlays waiting to be written, at most (bounds memory while PNG encoding lags).
MAX_PENDING_WRITES = 8
#: Where maps and overlays are drawn: the photograph's own frame, or the prepared square.
FRAMES = ("original", "square")


@dataclass(frozen=True)
class InputImage:
    name: str  # relative name (POSIX): the file name, or its path under a given folder
    path: Path


@dataclass(frozen=True)
class Loaded:
    """A photograph as read (``original``: None for the square frame) and as prepared."""

    prepared: PreparedFundus
    original: np.ndarray | None


@dataclass(frozen=True)
class Prediction:
    """One photograph's scores (a row of ``scores.csv``)."""

    name: str
    path: str
    score: float  # image score: mean of the 10 highest probabilities in the FOV (paper 4.1)
    max_prob: float  # highest probability in the FOV
    mean_prob: float  # mean probability over the FOV
    area_above: float  # fraction of FOV pixels with probability >= threshold
    pixels_above: int  # FOV pixels with probability >= threshold (at the prepared size)
    fov_pixels: int
    overlay: str  # relative to out_dir
    map: str | None  # relative to out_dir; None without save_maps


@dataclass
class PredictionResult:
    predictions: list[Prediction]
    skipped: list[dict[str, str]]  # [{"name", "reason"}]
    out_dir: Path
    threshold: float
    seconds: float = 0.0
    device: str = "cpu"
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        rate = len(self.predictions) / self.seconds if self.seconds else 0.0
        text = (
            f"{len(self.predictions)} photograph(s) scored in {self.seconds:.1f} s on "
            f"{self.device} ({rate:.2f}/s); overlays and scores.csv in {self.out_dir}"
        )
        if self.skipped:
            text += f"; {len(self.skipped)} skipped"
        return text


def find_inputs(inputs: Sequence[str | Path]) -> list[InputImage]:
    """Image files and folders (searched recursively) -> unique :class:`InputImage` names.

    A folder's images are named by their path under it; a file by its name. Two inputs with the
    same name get ``-2``, ``-3`` ... appended. Raises :class:`ConfigError` for a path that does
    not exist or when nothing is found.
    """
    if not inputs:
        raise ConfigError("no inputs: give image files or folders")
    found: list[InputImage] = []
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            files = find_sources(path).files
            if not files:
                raise ConfigError(f"{entry}: no image files in this folder (searched recursively)")
            found += [InputImage(f.name, f.path) for f in files]
        elif path.exists():
            # A file, or a FIFO, socket or device: reading refuses those with a reason (never
            # opening them), and the photograph is reported as skipped like any unusable one.
            found.append(InputImage(path.name, path))
        else:
            raise ConfigError(f"{entry}: no such file or folder")
    # Outputs are named after the input without its suffix, so "a.jpg" and "a.png" would share
    # "a.png": names must be unique once the suffix is gone.
    used: set[str] = set()
    unique: list[InputImage] = []
    for item in found:
        name, k = item.name, 1
        while _output_name(name).lower() in used:
            k += 1
            stem = PurePosixPath(item.name)
            name = str(stem.with_name(f"{stem.stem}-{k}{stem.suffix}"))
        used.add(_output_name(name).lower())
        unique.append(InputImage(name, item.path))
    return unique


def _output_name(name: str) -> str:
    """``"sub/photo.jpg" -> "sub/photo"``: the name without an image suffix (POSIX)."""
    p = PurePosixPath(name)
    return str(p.with_suffix("")) if p.suffix.lower() in IMAGE_SUFFIXES else name


def in_frame(loaded: Loaded, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, fov, map)`` to draw: the prepared square's, or with ``loaded.original`` the
    photograph as read with the map sent back to its geometry (zero outside its FOV)."""
    prepared = loaded.prepared
    if loaded.original is None:
        return prepared.image, prepared.fov, prob
    shape = loaded.original.shape[:2]
    fov = unapply_square(prepared.fov, prepared.square, shape, nearest=True)
    back = unapply_square(prob.astype(np.float32), prepared.square, shape, nearest=False)
    back[fov == 0] = 0.0
    return loaded.original, fov, np.clip(back, 0.0, 1.0)


def prediction_panel(
    image: np.ndarray, fov: np.ndarray, prob: np.ndarray, row: Prediction, threshold: float
) -> np.ndarray:
    """The picture written for one photograph: photograph | heat map with colour bar, a caption
    with the name and the row's scores above."""
    heat = draw.heatmap_overlay(image, prob, fov.astype(bool), with_colorbar=True)
    text = (
        f"{row.name}  score {row.score:.3f}  max {row.max_prob:.3f}  "
        f"area >= {threshold:g}: {100 * row.area_above:.2f}%"
    )
    return draw.caption(draw.side_by_side([image, heat]), text)


def predict(
    detector: DetectorLike,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    threshold: float | None = None,
    save_maps: bool = False,
    progress: bool = True,
    *,
    frame: str = "original",
    workers: int | None = None,
    amp: bool = True,
    log: Callable[[str], None] | None = None,
) -> PredictionResult:
    """Anomaly maps, overlays and scores for the photographs in ``inputs`` (files or folders).

    ``threshold`` is used for the "area above threshold" columns and the caption (None: the
    detector's own, see :func:`~resynth_models.evaluate.own_threshold`); ``save_maps``
    also writes the raw map (16-bit PNG); ``frame``: "original" or "square" (module
    docstring); ``workers`` loader threads read and prepare photographs ahead of the network;
    ``amp``: bf16 autocast on CUDA.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if frame not in FRAMES:
        raise ConfigError(f"--frame: must be one of {', '.join(FRAMES)}, got {frame!r}")
    threshold = own_threshold(detector) if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {threshold}")
    device = resolve_device(device if device is not None else detector_device(detector))
    images = find_inputs(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = default_workers() if workers is None else workers

    start = time.perf_counter()
    bar = Progress(len(images), description="predict", unit="images", enabled=progress)
    report = log if log is not None else bar.log
    with bar, ThreadPoolExecutor(max_workers=2, thread_name_prefix="resynth-write") as writer:
        scoring = _Scoring(detector, out, threshold, device, amp, frame, save_maps, writer)
        skipped = score_in_batches(images, scoring.load, scoring.score_batch,
                                   batch_size=batch_size, workers=workers, bar=bar,
                                   report=report)  # fmt: skip
        for future in scoring.pending:
            future.result()
    seconds = time.perf_counter() - start

    rows = scoring.rows
    csv_path = _write_tables(out, rows, skipped)
    if not rows:
        raise AnomalygenError(
            f"no photograph could be scored: all {len(skipped)} were skipped "
            f"(first: {skipped[0]['name']}: {skipped[0]['reason']}); see {out / 'skipped.csv'}"
        )
    files = [out / r.overlay for r in rows] + [out / r.map for r in rows if r.map] + [csv_path]
    return PredictionResult(rows, skipped, out, threshold, seconds, str(device), files)


class _Scoring:
    """One prediction's rows, and its pictures on their way to the files (PNG encoding runs in
    ``writer``'s threads, at most :data:`MAX_PENDING_WRITES` behind)."""

    def __init__(
        self,
        detector: DetectorLike,
        out: Path,
        threshold: float,
        device: torch.device,
        amp: bool,
        frame: str,
        save_maps: bool,
        writer: ThreadPoolExecutor,
    ) -> None:
        self.detector, self.out, self.threshold, self.device = detector, out, threshold, device
        self.amp, self.frame, self.save_maps, self.writer = amp, frame, save_maps, writer
        self.rows: list[Prediction] = []
        self.pending: list[Future] = []

    def load(self, item: InputImage) -> Loaded:
        rgb = read_image(item.path)
        prepared = prepare_fundus(rgb, self.detector.size, self.detector.clahe, name=str(item.path))
        return Loaded(prepared, rgb if self.frame == "original" else None)

    def score_batch(self, batch: list[tuple[InputImage, Loaded]]) -> None:
        maps = anomaly_maps(self.detector, [p.prepared.image for _, p in batch], self.device,
                            self.amp)  # fmt: skip
        for (item, loaded), prob in zip(batch, maps, strict=True):
            fov = loaded.prepared.fov.astype(bool)
            prob[~fov] = 0.0
            inside = prob[fov]
            above = int(np.count_nonzero(inside >= self.threshold))
            stem = _output_name(item.name)
            row = Prediction(
                name=item.name,
                path=str(item.path),
                score=image_score(prob, fov),
                max_prob=float(inside.max()),
                mean_prob=float(inside.mean(dtype=np.float64)),
                area_above=above / inside.size,
                pixels_above=above,
                fov_pixels=int(inside.size),
                overlay=f"overlays/{stem}.png",
                map=f"maps/{stem}.png" if self.save_maps else None,
            )
            self.rows.append(row)
            self.draw_and_write(loaded, prob, row)

    def draw_and_write(self, loaded: Loaded, prob: np.ndarray, row: Prediction) -> None:
        image, fov, prob = in_frame(loaded, prob)
        panel = prediction_panel(image, fov, prob, row, self.threshold)
        self.pending.append(
            self.writer.submit(_write, self.out / row.overlay, panel[..., ::-1].copy())
        )
        if row.map is not None:
            levels = np.rint(prob * 65535.0).astype(np.uint16)
            self.pending.append(self.writer.submit(_write, self.out / row.map, levels))
        while len(self.pending) > MAX_PENDING_WRITES:
            self.pending.pop(0).result()


def _write(path: Path, picture: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), picture):
        raise AnomalygenError(f"cannot write {path}")


def _write_tables(out: Path, rows: list[Prediction], skipped: list[dict[str, str]]) -> Path:
    """``scores.csv`` (one row per photograph; returned) and, if any, ``skipped.csv``."""
    csv_path = out / "scores.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow([
                r.name, f"{r.score:.6f}", f"{r.max_prob:.6f}", f"{r.mean_prob:.6f}",
                f"{r.area_above:.6f}", r.pixels_above, r.fov_pixels, r.overlay, r.map or "",
                r.path,
            ])  # fmt: skip
    if skipped:
        with (out / "skipped.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(("file", "reason"))
            w.writerows((s["name"], s["reason"]) for s in skipped)
    return csv_path
