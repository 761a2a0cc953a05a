"""Real lesions against synthetic ones: size, count and tone, at the training size.

    python benchmarks/lesion_stats.py                       # idrid-512 vs our generator, 256 px
    python benchmarks/lesion_stats.py --config G.json       # vs a generator configuration
    python benchmarks/lesion_stats.py --size 768 --samples 500

Real: the lesion masks of ``../shared/data/idrid-512`` (30 IDRiD photographs, MA, HE, EX, SE),
prepared as for evaluation (:func:`resynth_models.datasets.load_item_by_type`). Synthetic:
anomalous samples (``p_normal`` 0) of :class:`anomalygen.AnomalyGenerator` on the prepared
photographs of ``--normals`` (default ``../shared/data/idrid-normal-512``).

For each set it prints the lesion share of the field of view, the connected components (8-
connected) per image and their areas (percentiles, pixels), and each component's *tone*: its
mean colour minus the mean of a ring 2-3 px around it outside every lesion (R, G, B in levels
of 255, percentiles over components). These figures are where the defaults of
``anomalygen.tone.ToneConfig`` and the generator's lesion counts come from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

from anomalygen.config import from_dict  # noqa: E402
from anomalygen.fundus import load_fundus  # noqa: E402
from anomalygen.generator import AnomalyGenerator, GeneratorConfig, draw_pair, sample_rng  # noqa: E402
from anomalygen.sources import find_sources  # noqa: E402
from resynth_models.datasets import idrid_items, load_item_by_type  # noqa: E402

_NEAR = np.ones((3, 3), np.uint8)
_RING = np.ones((7, 7), np.uint8)


class Tally:
    """Components, areas and tones of one set of lesion masks."""

    def __init__(self) -> None:
        self.areas: list[int] = []
        self.tones: list[np.ndarray] = []
        self.counts: list[int] = []
        self.lesion_px = 0
        self.fov_px = 0
        self.depths: list[np.ndarray] = []  # lesion pixels' distance to the FOV border / its max
        self.fov_depths: list[np.ndarray] = []  # the same of every FOV pixel

    def add(self, image: np.ndarray, mask: np.ndarray, fov: np.ndarray, every: np.ndarray) -> None:
        """One image's mask of this kind; ``every`` is the union of all its lesions."""
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        self.counts.append(n - 1)
        self.lesion_px += int(mask.sum())
        depth = cv2.distanceTransform((fov != 0).astype(np.uint8), cv2.DIST_L2, 5)
        depth /= max(float(depth.max()), 1.0)
        self.depths.append(depth[mask != 0])
        self.fov_depths.append(depth[fov != 0])
        outside = (cv2.dilate(every, _NEAR) == 0) & (fov != 0)
        pixels = image.astype(np.float32)
        for k in range(1, n):
            comp = (labels == k).astype(np.uint8)
            ring = (cv2.dilate(comp, _RING) != 0) & outside
            self.areas.append(int(stats[k, cv2.CC_STAT_AREA]))
            if ring.sum() >= 5:
                self.tones.append(pixels[comp != 0].mean(0) - pixels[ring].mean(0))

    def lines(self, name: str) -> list[str]:
        if not self.areas:
            return [f"{name}: no lesions"]
        a, t = np.array(self.areas), np.array(self.tones)
        d, f = np.concatenate(self.depths), np.concatenate(self.fov_depths)
        pct = (10, 50, 90, 99)
        tone = " ".join(
            f"{c} {np.percentile(t[:, i], (10, 50, 90)).round(0).astype(int).tolist()}"
            for i, c in enumerate("RGB")
        )
        return [
            f"{name}: {100 * self.lesion_px / max(self.fov_px, 1):.2f}% of the FOV, "
            f"components per image median {np.median(self.counts):.0f} (max {max(self.counts)}), "
            f"area px p{pct} {np.percentile(a, pct).round(1).tolist()}, max {a.max()}, "
            f"{100 * a[a > 50].sum() / a.sum():.0f}% of pixels in components > 50 px",
            f"    tone (lesion - ring) p10/50/90: {tone}; "
            f"{100 * np.mean(t[:, :2].mean(1) < 0):.0f}% darker",
            f"    depth in the FOV (distance to its border / the largest): "
            f"{100 * np.mean(d < 0.1):.0f}% of lesion pixels below 0.1, "
            f"{100 * np.mean(d < 0.2):.0f}% below 0.2 (the FOV's own pixels: "
            f"{100 * np.mean(f < 0.1):.0f}%, {100 * np.mean(f < 0.2):.0f}%)",
        ]


def real(size: int) -> dict[str, Tally]:
    tallies = {code: Tally() for code in ("MA", "HE", "EX", "SE", "all")}
    for item in idrid_items(DATA / "idrid-512"):
        prepared, masks = load_item_by_type(item, size)
        every = np.zeros(prepared.fov.shape, np.uint8)
        for m in masks.values():
            every |= m
        for code, tally in tallies.items():
            tally.fov_px += int(prepared.fov.sum())
            mask = every if code == "all" else masks.get(code)
            if mask is not None:
                tally.add(prepared.image, mask, prepared.fov, every)
    return tallies


def synthetic(size: int, config: GeneratorConfig, normals: Path, samples: int) -> Tally:
    photos = [load_fundus(f.path, size) for f in find_sources(normals).files[:32]]
    generator = AnomalyGenerator(config)
    tally = Tally()
    for i in range(samples):
        rng = sample_rng(0, i)
        t, s = draw_pair(0, i, rng, len(photos))
        target, source = photos[t], photos[s]
        sample = generator.generate(target.image, source.image, rng, target.fov, source.fov)
        tally.fov_px += int(target.fov.sum())
        tally.add(sample.image, sample.mask, target.fov, sample.mask)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--config", type=Path, help="generator JSON (overrides of the defaults)")
    parser.add_argument("--normals", type=Path, default=DATA / "idrid-normal-512")
    args = parser.parse_args()
    if not (DATA / "idrid-512").is_dir():
        sys.exit(f"error: {DATA / 'idrid-512'} not found (needs ../shared/data)")
    fields = json.loads(args.config.read_text()) if args.config else {}
    config = from_dict(GeneratorConfig, {**fields, "p_normal": 0.0})
    print(f"real lesions, idrid-512 at {args.size} px:")
    for code, tally in real(args.size).items():
        print("\n".join("  " + line for line in tally.lines(code)))
    print(f"synthetic lesions, {args.samples} anomalous samples from {args.normals.name}:")
    tally = synthetic(args.size, config, args.normals, args.samples)
    print("\n".join("  " + line for line in tally.lines("synthetic")))


if __name__ == "__main__":
    main()
