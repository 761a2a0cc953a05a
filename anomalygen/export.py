"""Exporting a store's samples as PNG files that other frameworks read: ``anomalygen export``.

The ``folder`` layout (the one anomalib's ``Folder`` datamodule, nnU-Net-style converters and
``resynth evaluate --dataset folder`` read)::

    OUT/normal/000012.png     a sample without lesions (I_G, which is its target photograph)
    OUT/abnormal/000013.png   a sample with lesions (I_G), RGB
    OUT/masks/000013.png      its mask M_G, 8-bit grey: 255 on the lesions, 0 elsewhere; the same
                              name as its image
    OUT/samples.csv           one row per exported sample: index, image, mask, area

File names are the sample index, zero-padded to the store's size, so they sort in sample order
and name the same sample in every export of one store. PNG is lossless: the files hold the
store's pixels exactly. For anomalib: ``Folder(name="synth", root=OUT, normal_dir="normal",
abnormal_dir="abnormal", mask_dir="masks")``.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from anomalygen.errors import AnomalygenError, ConfigError
from anomalygen.progress import Progress
from anomalygen.store.reader import SampleStore, open_store

__all__ = ["FORMATS", "ExportResult", "export_store"]

FORMATS = ("folder",)
NORMAL_DIR, ABNORMAL_DIR, MASK_DIR = "normal", "abnormal", "masks"
SAMPLES_CSV = "samples.csv"
CSV_COLUMNS = ("index", "image", "mask", "area")


@dataclass(frozen=True)
class ExportResult:
    out: Path
    normal: int  # samples written to normal/
    abnormal: int  # samples written to abnormal/ (with their masks)
    seconds: float

    def summary(self) -> str:
        total = self.normal + self.abnormal
        return (
            f"exported {total} sample(s) to {self.out}/ in {self.seconds:.1f} s: {self.normal} "
            f"in {NORMAL_DIR}/, {self.abnormal} in {ABNORMAL_DIR}/ with masks in {MASK_DIR}/, "
            f"{SAMPLES_CSV}"
        )


def export_store(
    url: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = "folder",
    indices: range | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> ExportResult:
    """Write the samples ``indices`` (default: all) of the store at ``url`` into the folder
    ``out`` in ``layout`` (see the module docstring; ``anomalygen export --format``).

    ``out`` must not exist or be empty, unless ``overwrite`` (files of the same names are then
    replaced, others are left). Raises :class:`StoreError` for a missing store or a sample of a
    shard that is not rendered yet, :class:`ConfigError` for a bad format, range or folder.
    """
    if layout not in FORMATS:
        raise ConfigError(f"--format: must be one of {', '.join(FORMATS)}, got {layout!r}")
    store = open_store(url, storage_options)
    indices = range(len(store)) if indices is None else indices
    if indices.step != 1 or not 0 <= indices.start < indices.stop <= len(store):
        raise ConfigError(
            f"--range: {indices.start}-{indices.stop - 1} is not a range of the store's samples "
            f"(0-{len(store) - 1})"
        )
    folder = _output_folder(Path(out), overwrite)
    start = time.perf_counter()
    width = len(str(len(store) - 1))
    rows: list[tuple[int, str, str, int]] = []
    with Progress(len(indices), description="export", unit="samples", enabled=progress) as bar:
        for first, images, masks in _blocks(store, indices):
            for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
                rows.append(_write_sample(folder, first + k, width, image, mask))
            bar.advance(len(images))
    _write_csv(folder / SAMPLES_CSV, rows)
    abnormal = sum(1 for row in rows if row[2])
    return ExportResult(folder, len(rows) - abnormal, abnormal, time.perf_counter() - start)


def _output_folder(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: a file is in the way (the export is a folder)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out}: the folder exists and is not empty; choose another, or --overwrite to write "
            "into it"
        )
    for name in (NORMAL_DIR, ABNORMAL_DIR, MASK_DIR):
        (out / name).mkdir(parents=True, exist_ok=True)
    return out


def _blocks(store: SampleStore, indices: range) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The samples of ``indices``, one read per shard (sequential reading is the fast one)."""
    shards = range(indices.start // store.shard_size, (indices.stop - 1) // store.shard_size + 1)
    for s in shards:
        r = store.shard_range(s)
        images, masks = store.read_shard(s)
        lo, hi = max(r.start, indices.start), min(r.stop, indices.stop)
        yield lo, images[lo - r.start : hi - r.start], masks[lo - r.start : hi - r.start]


def _write_sample(
    folder: Path, index: int, width: int, image: np.ndarray, mask: np.ndarray
) -> tuple[int, str, str, int]:
    """One sample's files; its ``samples.csv`` row (index, image, mask or "", area)."""
    name = f"{index:0{width}d}.png"
    area = int(np.count_nonzero(mask))
    image_file = f"{ABNORMAL_DIR if area else NORMAL_DIR}/{name}"
    _imwrite(folder / image_file, np.ascontiguousarray(image[..., ::-1]))  # OpenCV: BGR
    mask_file = ""
    if area:
        mask_file = f"{MASK_DIR}/{name}"
        _imwrite(folder / mask_file, (mask != 0).astype(np.uint8) * 255)
    return index, image_file, mask_file, area


def _imwrite(path: Path, pixels: np.ndarray) -> None:
    if not cv2.imwrite(str(path), pixels):
        raise AnomalygenError(f"{path}: cannot write the PNG file")


def _write_csv(path: Path, rows: list[tuple[int, str, str, int]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
