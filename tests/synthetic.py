"""Synthetic fundus-like photographs for tests: a reddish disc with a darker rim, an optic disc and
a few vessels on a dark, slightly noisy background. Not realistic, but with the structure that
field-of-view detection and the generator depend on."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_fundus(
    size: int, seed: int = 0, *, cut: bool = False, width_ratio: float = 1.0
) -> np.ndarray:
    """An RGB uint8 image of height ``size`` and width ``round(size * width_ratio)``.

    ``cut`` clips the circle at top and bottom as in HRF photographs.
    """
    rng = np.random.default_rng(seed)
    h, w = size, round(size * width_ratio)
    img = rng.integers(0, 6, size=(h, w, 3), dtype=np.uint8)  # sensor noise on the black border
    cy, cx = h / 2, w / 2
    radius = 0.46 * (size * (1.25 if cut else 1.0))
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - cy, xx - cx) / radius
    inside = r <= 1.0
    shade = np.clip(1.0 - 0.35 * r**2, 0, 1)  # vignetting towards the rim
    base = np.array([190, 90, 40], dtype=np.float64) * rng.uniform(0.85, 1.1)
    disc = (shade[..., None] * base[None, None, :]).clip(0, 255)
    img[inside] = disc[inside].astype(np.uint8)
    od = (int(cx + 0.45 * radius), int(cy))
    cv2.circle(img, od, max(2, int(0.14 * radius)), (250, 210, 150), -1)  # optic disc
    for k in range(4):  # vessels leaving the optic disc
        angle = rng.uniform(0, 2 * np.pi) + k * np.pi / 2
        end = (int(od[0] + np.cos(angle) * radius), int(od[1] + np.sin(angle) * radius))
        cv2.line(img, od, end, (120, 30, 20), max(1, size // 96))
    img[~inside] = rng.integers(0, 6, size=(int((~inside).sum()), 3), dtype=np.uint8)
    if cut:
        band = int(h * 0.04)
        img[:band] = 0
        img[h - band :] = 0
    return img


def write_sources(folder: Path, count: int = 4) -> Path:
    """A few small synthetic fundus photographs (PNG), different sizes and FOV shapes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        rgb = make_fundus(80 + 8 * k, seed=k, cut=(k % 2 == 1))
        Image.fromarray(rgb).save(folder / f"normal_{k}.png")
    return folder


def run_cli(main, prog: str, monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run a console script's ``main`` as ``prog ARGS`` in this process: (exit code, stdout,
    stderr). Goes through ``anomalygen_cli.common.run_app``, exactly as the installed command
    does."""
    monkeypatch.setattr("sys.argv", [prog, *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def render_tiny_store(
    root: Path, n: int, *, photos: int = 4, cut: tuple[int, ...] = (), config=None
) -> Path:
    """A real store made by the renderer under ``root``: ``n`` samples of 64 px in shards of 4,
    from ``photos`` synthetic photographs (``make_fundus(96 + 16 k, seed=k)``, circles cut for
    ``k`` in ``cut``)."""
    from PIL import Image

    from anomalygen.render import render

    src = root / "normals"
    src.mkdir(parents=True, exist_ok=True)
    for k in range(photos):
        Image.fromarray(make_fundus(96 + 16 * k, seed=k, cut=k in cut)).save(src / f"n{k}.png")
    out = root / "synth.zarr"
    render(
        out,
        src,
        n,
        size=64,
        seed=0,
        workers=1,
        shard_size=4,
        progress=False,
        config=config,
        layout="full",
    )
    return out
