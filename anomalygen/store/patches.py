"""The compact layout's samples: boxes, masks and the lesion pixels inside them. No I/O.

A synthetic sample equals its target photograph wherever its mask is 0 (the sample contract:
``image == normals[target]`` wherever ``mask == 0``), and lesions cover a small part of it. A
compact store keeps per sample its boxes (``boxes``: (N, B, 4) int32, ``[y0, x0, y1, x1]``
end-exclusive, unused rows zero), the number of bytes of its patches (``patch_bytes``) and the
patches themselves (``patches``): for each box in order, the mask inside it (h x w bytes), then
the image's pixels where that mask is not 0 (3 bytes each, in C order). A sample kept *whole*
(one box, the full frame) stores every pixel of its box instead; it is the sample whose one box
has exactly h x w x 4 bytes of patches (where its mask is all ones the two readings agree). The
patches of one shard follow each other, sample by sample, in row ``s`` of the ``patches`` array
(one row per shard), so that a shard is written once by one writer and a sample's bytes are
found from its shard's ``patch_bytes`` alone (:func:`offsets`).

:func:`encode` takes the lesions' target boxes, shrinks each to its mask's pixels, and checks
that composing them back gives the sample byte for byte. Where it would not (a generator that
changed pixels outside the mask, more lesions than rows), the sample is kept whole. So
:func:`compose` always gives back exactly the image and mask that were rendered.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BYTES_PER_PIXEL",
    "MAX_CHUNKS",
    "MIN_CHUNK",
    "box_rows",
    "chunk_bytes",
    "compose",
    "encode",
    "offsets",
    "row_bytes",
    "shard_row",
    "used_boxes",
]

#: Bytes a patch pixel takes: three of the image, one of the mask.
BYTES_PER_PIXEL = 4
#: Smallest inner chunk of the ``patches`` rows (bytes): the unit a random read decodes.
MIN_CHUNK = 1 << 17
#: Most inner chunks in one ``patches`` row: its shard index takes 16 bytes each.
MAX_CHUNKS = 4096


def box_rows(max_lesions: int) -> int:
    """Rows of ``boxes`` per sample: one per lesion the generator may draw."""
    return max(1, int(max_lesions))


def chunk_bytes(shard_size: int, size: int) -> int:
    """The inner chunk of a ``patches`` row: 128 KiB, or more where a row would otherwise
    need more than MAX_CHUNKS of them."""
    chunk = MIN_CHUNK
    while chunk * MAX_CHUNKS < shard_size * size * size * BYTES_PER_PIXEL:
        chunk *= 2
    return chunk


def row_bytes(shard_size: int, size: int) -> int:
    """Length of a ``patches`` row: room for every sample of a shard whole, in chunks."""
    chunk = chunk_bytes(shard_size, size)
    return -(-(shard_size * size * size * BYTES_PER_PIXEL) // chunk) * chunk


def used_boxes(rows: np.ndarray) -> np.ndarray:
    """The boxes of one sample's ``boxes`` rows: those before the first empty one."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    empty = (rows[:, 2] <= rows[:, 0]) | (rows[:, 3] <= rows[:, 1])
    stop = int(np.argmax(empty)) if empty.any() else len(rows)
    return rows[:stop]


def offsets(lengths: np.ndarray) -> np.ndarray:
    """Where each sample's patches start in its shard's row: (k + 1,) int64 for the
    ``patch_bytes`` of a shard's k samples; sample j's are ``[out[j], out[j + 1])``."""
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def _whole(boxes: np.ndarray, payload: np.ndarray) -> bool:
    """A sample kept whole: one box, every one of its pixels stored."""
    if len(boxes) != 1:
        return False
    y0, x0, y1, x1 = (int(v) for v in boxes[0])
    return len(payload) == (y1 - y0) * (x1 - x0) * BYTES_PER_PIXEL


def compose(
    normal: np.ndarray, boxes: np.ndarray, payload: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)``: the target photograph ``normal`` with each box's patch pasted in.

    Raises ValueError where ``payload`` does not hold what the boxes say (a damaged read)."""
    image = normal.copy()
    mask = np.zeros(normal.shape[:2], np.uint8)
    data = np.asarray(payload, dtype=np.uint8).ravel()
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    whole, at = _whole(boxes, data), 0
    for y0, x0, y1, x1 in boxes:
        h, w = int(y1 - y0), int(x1 - x0)
        if at + h * w > len(data):
            raise ValueError(f"patches hold {len(data)} bytes, the boxes need more")
        m = data[at : at + h * w].reshape(h, w)
        at += h * w
        chosen = np.ones((h, w), bool) if whole else m != 0
        count = int(np.count_nonzero(chosen))
        if at + 3 * count > len(data):
            raise ValueError(f"patches hold {len(data)} bytes, the boxes need more")
        mask[y0:y1, x0:x1] = m
        image[y0:y1, x0:x1][chosen] = data[at : at + 3 * count].reshape(count, 3)
        at += 3 * count
    if at != len(data):
        raise ValueError(f"patches hold {len(data)} bytes, the boxes use {at}")
    return image, mask


def _pixels(image: np.ndarray, mask: np.ndarray, boxes: np.ndarray, whole: bool) -> np.ndarray:
    parts: list[Any] = []
    for y0, x0, y1, x1 in boxes:
        m = mask[y0:y1, x0:x1]
        parts.append(m.ravel())
        inside = image[y0:y1, x0:x1]
        parts.append((inside.reshape(-1, 3) if whole else inside[m != 0]).ravel())
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def _lesion_boxes(meta: dict[str, Any], size: int) -> np.ndarray:
    boxes = [lesion["target_box"] for lesion in meta.get("lesions", [])]
    out = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    return np.clip(out, 0, size)


def _tightened(boxes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each box shrunk to its mask's pixels (a lesion's crop box is mostly its target's own
    pixels); boxes with none are dropped. Pixels that changed outside the mask make ``encode``'s
    check fail, and the sample is kept whole."""
    out = []
    for y0, x0, y1, x1 in boxes:
        inside = mask[y0:y1, x0:x1]
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        if len(rows):
            out.append([y0 + rows[0], x0 + cols[0], y0 + rows[-1] + 1, x0 + cols[-1] + 1])
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def _row_bands(boxes: np.ndarray, height: int) -> list[tuple[int, int, bool]]:
    """The rows of an image of ``height`` as consecutive bands ``(start, stop, boxed)``; the
    rows of the boxed bands are those some box spans."""
    boxed = np.zeros(height + 2, np.int8)  # row k at k + 1, a row of zeros either side
    for y0, _, y1, _ in boxes:
        boxed[y0 + 1 : y1 + 1] = 1
    cuts = sorted({0, height, *np.flatnonzero(np.diff(boxed)).tolist()})
    return [(a, b, bool(boxed[a + 1])) for a, b in itertools.pairwise(cuts) if b > a]


def _composes(image: np.ndarray, mask: np.ndarray, normal: np.ndarray, boxes: np.ndarray) -> bool:
    """Whether ``compose(normal, boxes, _pixels(image, mask, boxes, whole=False))`` gives back
    ``(image, mask)``. Those patches hold the sample's own mask in every box and its own pixels
    where that mask is not 0, so it does exactly where the mask is 0 outside the boxes and the
    image equals ``normal`` wherever the mask is 0. Checked so, band of rows by band of rows
    (the rows no box spans in OpenCV's fast unmasked compare) and without a copy of the image:
    composing and comparing made four temporary images, a compact render's costliest step after
    the generator."""
    import cv2  # only a writer checks: readers of the store do not need OpenCV

    if image.shape != normal.shape or image.dtype != normal.dtype:
        return False
    for a, b, boxed in _row_bands(boxes, image.shape[0]):
        if boxed:
            if not _band_composes(image[a:b], mask[a:b], normal[a:b], boxes, a):
                return False
        elif cv2.norm(image[a:b], normal[a:b], cv2.NORM_INF) != 0 or cv2.countNonZero(mask[a:b]):
            return False
    return True


def _band_composes(
    image: np.ndarray, mask: np.ndarray, normal: np.ndarray, boxes: np.ndarray, top: int
) -> bool:
    """:func:`_composes` on the rows ``top ..`` of a band that boxes span."""
    import cv2

    unmasked = (mask == 0).view(np.uint8)  # where the composed image is the normal's
    if cv2.norm(image, normal, cv2.NORM_INF, mask=unmasked) != 0:
        return False
    for y0, x0, y1, x1 in boxes:  # the box's rows in this band (none: an empty slice)
        unmasked[max(y0 - top, 0) : max(y1 - top, 0), x0:x1] = 1
    return cv2.countNonZero(unmasked) == unmasked.size


def encode(
    image: np.ndarray, mask: np.ndarray, normal: np.ndarray, meta: dict[str, Any], rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes (rows, 4) int32, patches uint8)`` of one sample (its target photograph
    ``normal``, its generator ``meta``), such that ``compose`` gives it back exactly."""
    size = image.shape[0]
    boxes = _lesion_boxes(meta, size)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    boxes = _tightened(boxes, mask)
    payload = None
    if len(boxes) <= rows:
        payload = _pixels(image, mask, boxes, whole=False)
        if len(payload) > size * size * BYTES_PER_PIXEL:  # overlapping boxes: larger than whole
            payload = None
    if payload is not None and not _composes(image, mask, normal, boxes):
        payload = None
    if payload is None:  # kept whole: the full frame, every pixel
        boxes = np.asarray([[0, 0, size, size]], np.int64)
        payload = _pixels(image, mask, boxes, whole=True)
    out = np.zeros((rows, 4), np.int32)
    out[: len(boxes)] = boxes
    return out, payload


def shard_row(payloads: Sequence[np.ndarray], chunk: int) -> np.ndarray:
    """A shard's patches, sample after sample, zero-padded to whole chunks (at least one)."""
    data = np.concatenate([np.zeros(0, np.uint8), *payloads])
    used = max(chunk, -(-len(data) // chunk) * chunk)
    row = np.zeros((1, used), np.uint8)
    row[0, : len(data)] = data
    return row
