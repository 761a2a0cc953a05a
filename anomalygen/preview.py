"""Contact sheets: synthetic samples with their mask outlines, a zoom on the first lesion, and the
source crop C_s it came from, labelled with the augmentation ops used.

Users tune the generator by looking at these. Two entry points share the drawing code:
:func:`live_preview` prepares photographs from a folder and generates samples on the fly,
:func:`store_preview` draws samples already rendered into a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from anomalygen.errors import AnomalygenError, ConfigError, ImageError

#: Outline colour of the lesion masks (RGB): yellow reads well on the red-orange fundus.
OUTLINE = (255, 230, 0)
#: Colour of the box showing where the zoom panel was taken from (RGB).
ZOOM_BOX = (0, 200, 255)
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


@dataclass(frozen=True)
class PreviewItem:
    """One sample to draw: I_G, M_G, its meta (as made by the generator) and the raw source crop
    C_s of its first lesion (the pixels the augmentations were applied to)."""

    title: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8 in {0, 1}
    meta: dict
    source_crop: np.ndarray | None = None  # (h, w, 3) uint8


def outline(
    image: np.ndarray, mask: np.ndarray, color=OUTLINE, thickness: int = 1, gap: int = 0
) -> np.ndarray:
    """A copy of ``image`` with the contours of ``mask`` drawn on it.

    ``gap`` > 0 draws the contour that many pixels outside the mask, so that the lesion's own
    pixels stay visible inside the line.
    """
    out = np.ascontiguousarray(image.copy())
    mask = (mask > 0).astype(np.uint8)
    if gap > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1))
        mask = cv2.dilate(mask, kernel)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, thickness)
    return out


def _fit(image: np.ndarray, side: int, nearest: bool = False, fill=BACKGROUND) -> np.ndarray:
    """Resize an image to ``side`` x ``side``, letterboxed on ``fill``."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    canvas = np.empty((side, side, *image.shape[2:]), np.uint8)
    canvas[:] = fill
    y0, x0 = (side - nh) // 2, (side - nw) // 2
    canvas[y0 : y0 + nh, x0 : x0 + nw] = resized
    return canvas


def _zoom_box(box: Sequence[int], shape: tuple[int, int], margin: float = 0.5) -> tuple[int, ...]:
    """A square box around ``box`` (y0, x0, y1, x1) grown by ``margin`` of its side, in bounds."""
    y0, x0, y1, x1 = (int(v) for v in box)
    side = round(max(y1 - y0, x1 - x0) * (1 + 2 * margin))
    side = min(max(side, 8), min(shape))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    zy = int(np.clip(cy - side // 2, 0, shape[0] - side))
    zx = int(np.clip(cx - side // 2, 0, shape[1] - side))
    return zy, zx, zy + side, zx + side


def _lesion_extent(mask: np.ndarray, box: Sequence[int]) -> tuple[int, int, int, int]:
    """The bounding box of the mask's pixels inside the crop ``box`` (the crop when empty)."""
    y0, x0, y1, x1 = (int(v) for v in box)
    ys, xs = np.nonzero(mask[y0:y1, x0:x1])
    if ys.size == 0:
        return y0, x0, y1, x1
    return y0 + int(ys.min()), x0 + int(xs.min()), y0 + int(ys.max()) + 1, x0 + int(xs.max()) + 1


def _ops_label(lesion: dict) -> str:
    return ", ".join(str(op.get("op", "?")) for op in lesion.get("ops", [])) or "no ops"


def render_tile(item: PreviewItem, tile: int = 256) -> np.ndarray:
    """One contact-sheet cell: the sample with outlines, a zoom and the source crop, and labels.

    Layout (pixels): the sample at ``tile`` x ``tile``; to its right a column of two panels of
    ``tile // 2``: the first lesion magnified in I_G (outlined), and the raw source crop C_s before
    augmentation; under both, two lines of text.
    """
    half = tile // 2
    image, mask = item.image, item.mask
    lesions = item.meta.get("lesions", [])
    main = outline(_fit(image, tile), _fit_mask(mask, tile), gap=1)

    zoom = np.full((half, half, 3), BACKGROUND, np.uint8)
    source = np.full((half, half, 3), BACKGROUND, np.uint8)
    if lesions:
        first = lesions[0]
        zy0, zx0, zy1, zx1 = _zoom_box(_lesion_extent(mask, first["target_box"]), image.shape[:2])
        zoom = outline(
            _fit(image[zy0:zy1, zx0:zx1], half, nearest=True),
            _fit_mask(mask[zy0:zy1, zx0:zx1], half),
            gap=2,
        )
        _draw_box(main, (zy0, zx0, zy1, zx1), tile / max(image.shape[:2]), ZOOM_BOX)
        if item.source_crop is not None and item.source_crop.size:
            source = _fit(item.source_crop, half, nearest=True)

    cell = np.full((tile + 34, tile + half, 3), BACKGROUND, np.uint8)
    cell[:tile, :tile] = main
    cell[:half, tile:] = zoom
    cell[half : 2 * half, tile:] = source
    if item.meta.get("normal", not lesions):
        line1, line2 = f"{item.title}  normal", "no lesion"
    else:
        area = int(item.meta.get("area", int(mask.sum())))
        more = f"  +{len(lesions) - 1} lesion(s)" if len(lesions) > 1 else ""
        line1 = f"{item.title}  {len(lesions)} lesion(s), {area} px"
        line2 = f"1: {_ops_label(lesions[0])}{more}"
    cell = _draw_text(cell, [(4, tile + 2, line1), (4, tile + 17, line2)])
    cell = _draw_text(cell, [(tile + 3, 2, "zoom"), (tile + 3, half + 2, "source C_s")], size=11)
    return cell


def _fit_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """Resize a mask like :func:`_fit` resizes its image; a lesion never vanishes when shrunk."""
    binary = (mask > 0).astype(np.uint8) * 255
    shrinking = side < max(mask.shape[:2])
    return (_fit(binary, side, nearest=not shrinking, fill=0) > 0).astype(np.uint8)


def _draw_box(canvas: np.ndarray, box: Sequence[int], scale: float, color) -> None:
    y0, x0, y1, x1 = (round(v * scale) for v in box)
    cv2.rectangle(canvas, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), color, 1)


@lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _draw_text(canvas: np.ndarray, lines: list[tuple[int, int, str]], size: int = 13) -> np.ndarray:
    from PIL import Image, ImageDraw

    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    for x, y, text in lines:
        draw.text((x, y), text, fill=TEXT, font=_font(size))
    return np.asarray(pil).copy()


def contact_sheet(cells: Sequence[np.ndarray], columns: int | None = None) -> np.ndarray:
    """Arrange equally sized cells in a grid with a small gutter (RGB uint8)."""
    if not cells:
        raise AnomalygenError("nothing to preview: no samples")
    columns = columns or int(np.ceil(np.sqrt(len(cells))))
    rows = int(np.ceil(len(cells) / columns))
    h, w = cells[0].shape[:2]
    gap = 6
    sheet = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), 0, np.uint8)
    for k, cell in enumerate(cells):
        r, c = divmod(k, columns)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        sheet[y : y + h, x : x + w] = cell
    return sheet


def save_png(sheet: np.ndarray, path: str | Path) -> Path:
    """Write an RGB sheet as PNG, creating the parent folder; one-line error if it cannot."""
    from PIL import Image

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(path, format="PNG")
    except (OSError, ValueError) as err:
        raise AnomalygenError(f"cannot write {path}: {err}") from None
    return path


def _check_counts(n: int, tile: int) -> None:
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    if tile < 64:
        raise ConfigError(f"--tile must be at least 64 pixels, got {tile}")


def live_preview(
    src: str | Path,
    *,
    n: int = 16,
    seed: int = 0,
    size: int = 512,
    config=None,
    tile: int = 256,
    columns: int | None = None,
    max_images: int = 32,
    labels: str | Path | None = None,
    where: Sequence[str] = (),
    labels_column: str | None = None,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Prepare photographs from ``src`` and draw ``n`` freshly generated samples.

    Sample ``k`` is made exactly as sample ``k`` of ``anomalygen render`` with the same seed, size
    and generator config would be when ``src`` holds at most ``max_images`` usable photographs;
    from larger folders, ``max_images`` evenly spaced files are used, so that previews stay quick.

    Returns the contact sheet (RGB uint8) and the skipped files as ``(name, reason)`` pairs.
    """
    from anomalygen.fundus import load_fundus
    from anomalygen.generator import AnomalyGenerator, GeneratorConfig, draw_pair, sample_rng
    from anomalygen.sources import find_sources

    _check_counts(n, tile)
    if max_images < 1:
        raise ConfigError(f"max_images must be at least 1, got {max_images}")
    config = config or GeneratorConfig()
    if config.source != "fundus":
        raise ConfigError("preview --src draws fundus-sourced lesions; preview a store instead")
    files = find_sources(src, labels=labels, where=where, labels_column=labels_column).files
    if len(files) > max_images:
        picks = np.linspace(0, len(files) - 1, max_images).round().astype(int)
        files = tuple(files[k] for k in picks)

    prepared, skipped = [], []
    for f in files:
        try:
            prepared.append(load_fundus(f.path, size))
        except ImageError as err:
            skipped.append((f.name, str(err)))
    if not prepared:
        raise AnomalygenError(f"{src}: no usable fundus photograph ({len(skipped)} skipped)")

    generator = AnomalyGenerator(config)
    cells = []
    for k in range(n):
        rng = sample_rng(seed, k)
        t, s = draw_pair(seed, k, rng, len(prepared))
        target, source = prepared[t], prepared[s]
        sample = generator.generate(target.image, source.image, rng, target.fov, source.fov)
        crop = None
        if sample.meta["lesions"]:
            y0, x0, y1, x1 = sample.meta["lesions"][0]["source_box"]
            crop = source.image[y0:y1, x0:x1]
        item = PreviewItem(f"#{k}", sample.image, sample.mask, sample.meta, crop)
        cells.append(render_tile(item, tile))
    return contact_sheet(cells, columns), skipped


def store_preview(
    url: str | Path,
    *,
    n: int = 16,
    indices: Sequence[int] | None = None,
    tile: int = 256,
    columns: int | None = None,
    storage_options: dict | None = None,
) -> np.ndarray:
    """Draw samples of a rendered store: ``indices``, or the first ``n`` of its complete shards."""
    from anomalygen.store import open_store

    _check_counts(n, tile)
    store = open_store(url, storage_options)
    if indices is None:
        done = [i for s in store.complete_shards() for i in store.shard_range(s)]
        if not done:
            raise AnomalygenError(f"{url}: no complete shard to preview yet")
        indices = done[:n]
    cells = []
    for i in indices:
        if not 0 <= i < len(store):
            raise ConfigError(f"--indices: {i} is out of range for a store of {len(store)}")
        image, mask = store[i]
        meta = store.meta(i)
        lesions = store.lesion_sources(i)
        crop = lesions[0]["crop"] if lesions else None
        cells.append(render_tile(PreviewItem(f"#{i}", image, mask, meta, crop), tile))
    return contact_sheet(cells, columns)


__all__ = [
    "PreviewItem",
    "contact_sheet",
    "live_preview",
    "outline",
    "render_tile",
    "save_png",
    "store_preview",
]
