"""Reading fundus photographs and preparing them as the paper does (section 4.1).

Two steps, each usable on its own:

1. :func:`read_image` turns any image file (JPEG, PNG, TIFF, BMP, WebP; 8 or 16 bit; grey, RGBA,
   palette, CMYK; EXIF-rotated) into an RGB uint8 array, or raises :class:`ImageError` naming the
   file and the reason. A header claiming an enormous size is refused before anything is decoded.
2. :func:`prepare_fundus` finds the field of view (FOV: the bright disc of retina on the black
   background), crops the FOV's bounding square (padding with black where the disc is cut, as in
   HRF photographs), resizes it to ``size x size``, applies CLAHE (clip limit 2, 8x8 grid) and
   zeroes everything outside the FOV. The :class:`Square` it returns sends ground-truth lesion
   masks the same way (:func:`apply_square`).

How the FOV is found (:func:`find_fov`): the brightness of a pixel is the largest of its R, G and
B values. On a grid of every k-th pixel (at most ``FovParams.detect_size`` along the long side),
median-filtered against JPEG noise, we choose the threshold at which the bright area is most
*stable*: where the fraction of pixels above ``t`` changes least as ``t`` moves (the valley
between the dark border and the retina). No fixed threshold suits every camera: IDRiD
photographs have a glow of brightness 20-35 around the disc, while the rim of some CHASE_DB1
discs starts at 26. The largest connected bright region is kept and its holes (dark lesions,
vessels, the macula) are filled. The bounding box is then refined on thin strips of the full
image, and the mask is redrawn at the resolution asked for (the input's, or the prepared
image's) by thresholding that image, guided by the coarse mask, so its edges are exact there.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from anomalygen.errors import ConfigError, ImageError, one_line
from anomalygen.files import NotRegularFile, open_regular

__all__ = [
    "CLAHE_CLIP_LIMIT",
    "CLAHE_GRID",
    "MAX_PIXELS",
    "MAX_SIDE",
    "FovParams",
    "PreparedFundus",
    "Square",
    "apply_square",
    "find_fov",
    "load_fundus",
    "prepare_fundus",
    "read_image",
]

#: Largest image (width x height) that :func:`read_image` decodes: 150 megapixels, 12 times an
#: IDRiD photograph (4288 x 2848) and 18 times HRF at full resolution (3504 x 2336), about 450 MB
#: decoded. It is checked on the header, before decoding. It stays below Pillow's own hard limit
#: (2 x ``Image.MAX_IMAGE_PIXELS``, about 179 megapixels) so that ours is the check users meet.
MAX_PIXELS = 150_000_000

#: Largest side a photograph is prepared at (px); the same bound as a store's size
#: (``anomalygen.store.format.MAX_SIZE``): 48 MiB an image.
MAX_SIDE = 4096

#: CLAHE settings from the paper (section 4.1: "ClipLimit of 2 and a GridSize of 8").
CLAHE_CLIP_LIMIT = 2.0
CLAHE_GRID = (8, 8)


@dataclass(frozen=True)
class FovParams:
    """Tunables of field-of-view detection; brightness is max(R, G, B) in 0..255.

    The defaults were chosen on the photographs in ``../shared/data`` (HRF, CHASE_DB1, IDRiD,
    Wikimedia): black borders measure 0-7 after the median filter, IDRiD's glow around the disc
    20-35, and disc rims 26-45 at their darkest.
    """

    detect_size: int = 512  # long side (px) of the grid searched; our choice: ~2 ms of work
    median_ksize: int = 5  # median filter on that copy, removes JPEG noise in the border
    min_threshold: int = 8  # never call darker pixels FOV: above sensor/JPEG noise in borders
    max_threshold: int = 60  # never require brighter: the dimmest rims seen are ~26-45
    stability_window: int = 4  # +- brightness levels over which the bright area must be stable
    min_contrast: int = 16  # an image whose 0.5-99.5 % brightness spread is smaller is uniform
    min_area_fraction: float = 0.05  # a FOV covering less of the image is refused as too small
    min_side: int = 16  # nor is one whose bounding box is narrower (px, original image)

    def __post_init__(self) -> None:
        checks = {
            "detect_size": self.detect_size >= 32,
            "median_ksize": self.median_ksize >= 1 and self.median_ksize % 2 == 1,
            "min_threshold": 0 <= self.min_threshold <= self.max_threshold,
            "max_threshold": self.max_threshold <= 250,
            "stability_window": 1 <= self.stability_window <= 32,
            "min_contrast": self.min_contrast >= 0,
            "min_area_fraction": 0.0 <= self.min_area_fraction < 1.0,
            "min_side": self.min_side >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ConfigError(f"FovParams: out of range: {values}")


@dataclass(frozen=True)
class Square:
    """The FOV's bounding square in the original image's pixels (rows ``y0:y0+side``).

    It may overhang the image (negative ``y0``, or ``y0 + side > height``) where the disc is cut;
    the overhang is filled with black.
    """

    y0: int
    x0: int
    side: int


@dataclass(frozen=True)
class PreparedFundus:
    """A photograph prepared as in paper 4.1."""

    image: np.ndarray  # (size, size, 3) uint8 RGB, zero outside the FOV
    fov: np.ndarray  # (size, size) uint8 in {0, 1}
    square: Square  # where the crop came from, to send ground-truth masks the same way


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as a contiguous, writable (H, W, 3) uint8 RGB array.

    JPEG, PNG, TIFF, BMP and WebP (anything Pillow opens); the first frame of a multi-page file.
    16-bit samples are scaled to 8 bits (65535 -> 255), transparency is composited on black (a
    fundus photograph's background), palette, grey and CMYK images are converted, and the EXIF
    orientation is applied. A file with more than ``max_pixels`` pixels is refused from its
    header, before decoding. Raises :class:`ImageError` ``"<path>: <reason>"`` otherwise.
    """
    name = str(path)
    path = Path(path)
    try:
        if path.is_dir():
            raise ImageError(f"{name}: is a directory, not an image file")
        # A FIFO, socket or device is refused without being opened (a FIFO would block).
        fh = open_regular(path)
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except OSError as err:
        raise ImageError(f"{name}: {_os_reason(err)}") from None
    with fh:
        return _decode(fh, name, max_pixels)


def _os_reason(err: OSError) -> str:
    if isinstance(err, NotRegularFile):
        return str(err.strerror)
    return f"cannot read ({one_line(err)})"


def _decode(fh: BinaryIO, name: str, max_pixels: int) -> np.ndarray:
    """Decode the image in the open file ``fh`` (named ``name`` in messages)."""
    if os.fstat(fh.fileno()).st_size == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We check the size against max_pixels ourselves; Pillow's warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as im:  # reads the header only
                _check_pixels(im.size, max_pixels, name)
                im.load()
                upright = _exif_upright(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(_bomb_message(name, err, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{name}: not a recognised image (unknown format, or not an image at all)"
        ) from None
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except PermissionError as err:
        raise ImageError(f"{name}: cannot read ({one_line(err)})") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode this image") from None
    except EOFError:
        raise ImageError(f"{name}: truncated image data (file ends early)") from None
    except Exception as err:  # Pillow's decoders raise OSError, SyntaxError, ValueError, zlib...
        reason = one_line(err)
        if "truncat" in reason.lower():
            raise ImageError(f"{name}: truncated image data ({reason})") from None
        if any(sign in reason for sign in _METADATA_BOMB):  # PNG text or ICC profile chunks
            raise ImageError(
                f"{name}: refused: its metadata chunks decompress to more than Pillow's limit "
                f"({ImageFile.SAFEBLOCK >> 20} MB a chunk; a decompression bomb?)"
            ) from None
        raise ImageError(f"{name}: corrupt or unsupported image data ({reason})") from None
    return _to_rgb8(upright, name)


#: What Pillow's PNG reader says of text and ICC chunks that decompress to too much.
_METADATA_BOMB = ("Decompressed data too large", "MAX_TEXT_MEMORY")


def _bomb_message(name: str, err: Exception, max_pixels: int) -> str:
    """Our message for Pillow's DecompressionBombError (raised on the header, before decoding:
    the image claims more pixels than Pillow's own hard limit)."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    claimed = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
    return (
        f"{name}: image too large ({claimed}, limit {max_pixels / 1e6:.0f}); refused before "
        "decoding (a decompression bomb?)"
    )


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: corrupt header (image size {width} x {height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: image too large ({width} x {height} = {width * height / 1e6:.0f} "
            f"megapixels, limit {max_pixels / 1e6:.0f}); refused before decoding"
        )


def _exif_upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation tag says; unchanged if the EXIF data is unreadable."""
    try:
        upright = ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF: the pixels are still fine, use them as stored
        return im
    return upright if upright is not None else im


_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}


def _to_rgb8(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode in _ALPHA or (mode in {"P", "L", "RGB"} and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        alpha = np.ascontiguousarray(rgba[..., 3:])
        # Composite on black: a fundus background is black, so transparent pixels are background.
        return cv2.multiply(rgba[..., :3], np.repeat(alpha, 3, axis=2), scale=1.0 / 255)
    if mode == "RGB":
        return np.array(im)  # np.asarray would be read-only
    if mode == "L":
        return cv2.cvtColor(np.asarray(im), cv2.COLOR_GRAY2RGB)
    if mode in _SIXTEEN_BIT or mode == "I":
        # 16-bit grey; Pillow's 32-bit "I" mode holds the same 0..65535 range for PNG and TIFF.
        # Scaled, not clipped: round(v * 255 / 65535).
        values = np.asarray(im)
        if mode == "I":
            values = np.clip(values, 0, 65535)
        grey = cv2.convertScaleAbs(values.astype(np.float32), alpha=255.0 / 65535.0)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    if mode == "F":
        raise ImageError(
            f"{name}: unsupported pixel format (32-bit floating point); save it as 8 or 16 bit"
        )
    # P, 1, CMYK, YCbCr, LAB, HSV, RGBX. Pillow reads 16-bit RGB(A) as 8-bit RGB(A) by keeping
    # the high byte, which is floor(v / 256): a scaling, within one level of round(v / 257).
    try:
        return np.array(im.convert("RGB"))
    except ValueError as err:
        raise ImageError(f"{name}: unsupported pixel format {mode!r} ({one_line(err)})") from None


# --------------------------------------------------------------------------------------------
# The field of view
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Detection:
    """The FOV found on the detection grid: every ``step``-th pixel, from ``offset``."""

    mask: np.ndarray  # (h, w) bool; grid pixel (r, c) is original pixel (offset + r*step, ...)
    step: int
    offset: int
    threshold: int  # brightness: a pixel is FOV where max(R, G, B) > threshold
    bbox: tuple[int, int, int, int]  # (y0, x0, y1, x1), original pixels, end exclusive


def _check_rgb(rgb: np.ndarray, name: str) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"{name}: expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}"
        )
    return rgb


def _brightness(rgb: np.ndarray) -> np.ndarray:
    """max(R, G, B): the red channel for most of the retina, whatever the camera's colour cast."""
    return cv2.max(cv2.max(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def _bright_pixels(rgb: np.ndarray, threshold: int) -> np.ndarray:
    """Where the 3x3 median of the brightness exceeds ``threshold``: the FOV before cleaning.

    The same definition at every resolution (full image, bounding-box strips, prepared image),
    so that they agree to the pixel; the median removes isolated JPEG-noise pixels.
    """
    return cv2.medianBlur(_brightness(rgb), 3) > threshold


def _largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, dtype=bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not reach the image border filled."""
    padded = np.pad(mask.astype(np.uint8), 1)  # the border region is connected all around
    cv2.floodFill(padded, None, (0, 0), 2)
    return padded[1:-1, 1:-1] != 2


def _clean(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of ``mask``, holes filled."""
    return _fill_holes(_largest_component(mask))


def _stable_threshold(bright: np.ndarray, params: FovParams) -> tuple[int, int, int]:
    """(threshold, low, high): the most stable threshold and the 0.5 / 99.5 % brightness.

    Stability at ``t`` is the relative change of the bright area (pixels > t) between ``t - w``
    and ``t + w``: small in the valley between the border's and the retina's brightness.
    """
    cum = np.cumsum(np.bincount(bright.ravel(), minlength=256)).astype(np.float64)
    low = int(np.searchsorted(cum, 0.005 * cum[-1]))
    high = int(np.searchsorted(cum, 0.995 * cum[-1]))
    above = cum[-1] - cum  # above[t]: number of pixels brighter than t
    w = params.stability_window
    # Never above half the retina's bright level: a dim photograph keeps its dim rim.
    t_max = min(params.max_threshold, max(params.min_threshold, high // 2))
    ts = np.arange(params.min_threshold, t_max + 1)
    lo, hi = above[np.maximum(ts - w, 0)], above[np.minimum(ts + w, 255)]
    change = (lo - hi) / np.maximum(above[ts], 1.0)
    return int(ts[np.argmin(change)]), low, high


def _detect(rgb: np.ndarray, params: FovParams, name: str) -> _Detection:
    height, width = rgb.shape[:2]
    if min(height, width) < params.min_side:
        raise ImageError(
            f"{name}: no field of view (image is {width} x {height} pixels, too small)"
        )
    # Every step-th pixel (block centres) rather than a resize: ~1 ms on 12 megapixels instead
    # of ~40; the median filter takes care of the noise that averaging would have removed.
    step = max(1, -(-max(height, width) // params.detect_size))
    offset = step // 2
    small = rgb[offset::step, offset::step]
    bright = cv2.medianBlur(_brightness(small), params.median_ksize)

    threshold, low, high = _stable_threshold(bright, params)
    if high <= params.min_threshold:
        raise ImageError(f"{name}: no field of view (the image is black or nearly so)")
    if high - low < params.min_contrast:
        raise ImageError(
            f"{name}: no field of view (the image is uniform: brightness {low}..{high})"
        )
    mask = _clean(bright > threshold)
    fraction = float(mask.mean())
    if fraction < params.min_area_fraction:
        raise ImageError(
            f"{name}: no field of view (the largest bright region covers {100 * fraction:.1f}% "
            f"of the image, less than {100 * params.min_area_fraction:.0f}%)"
        )
    bbox = _exact_bbox(rgb, mask, step, offset, threshold)
    if min(bbox[2] - bbox[0], bbox[3] - bbox[1]) < params.min_side:
        raise ImageError(
            f"{name}: no field of view (the bright region is less than "
            f"{params.min_side} pixels across)"
        )
    return _Detection(mask, step, offset, threshold, bbox)


def _exact_bbox(
    rgb: np.ndarray, mask: np.ndarray, step: int, offset: int, threshold: int
) -> tuple[int, int, int, int]:
    """The FOV's bounding box in original pixels: the grid's, refined at full resolution.

    Each edge lies within two steps of the outermost grid samples inside the FOV, so only
    a strip of the full image around those samples is thresholded. The strip spans only where
    the coarse mask reaches that edge, so that a bright object elsewhere along the edge (a date
    stamp in a corner) is not taken for the disc.
    """
    height, width = rgb.shape[:2]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    reach = 2 * step  # the grid's 5x5 median may shave up to two samples off a pointed edge

    def span(samples: np.ndarray, limit: int) -> tuple[int, int]:
        """Original pixels from ``reach`` before the first sample to ``reach`` after the last."""
        hit = np.flatnonzero(samples)
        start, stop = offset + step * int(hit[0]), offset + step * int(hit[-1])
        return max(0, start - reach), min(limit, stop + reach + 1)

    def inside(ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
        # One more pixel on every side where the image has it: the 3x3 median of a strip then
        # equals that of the whole image (a strip's own border would be replicated instead).
        a0, b0 = max(0, ys[0] - 1), max(0, xs[0] - 1)
        a1, b1 = min(height, ys[1] + 1), min(width, xs[1] + 1)
        bright = _bright_pixels(np.ascontiguousarray(rgb[a0:a1, b0:b1]), threshold)
        return bright[ys[0] - a0 : ys[1] - a0, xs[0] - b0 : xs[1] - b0]

    def first(hits: np.ndarray, start: int, fallback: int) -> int:
        return start + int(np.argmax(hits)) if hits.any() else fallback

    def last(hits: np.ndarray, start: int, fallback: int) -> int:
        return start + len(hits) - 1 - int(np.argmax(hits[::-1])) if hits.any() else fallback

    # Original coordinates of the outermost samples inside the FOV.
    top, bottom = offset + step * r0, offset + step * r1
    left, right = offset + step * c0, offset + step * c1
    above = (max(0, top - reach), top + 1)
    below = (bottom, min(height, bottom + reach + 1))
    before = (max(0, left - reach), left + 1)
    after = (right, min(width, right + reach + 1))
    # The strips span where the mask's three outermost samples reach: the grid's median may
    # have shaved a pointed edge, whose tip then lies beside the outermost sample, not at it.
    y0 = first(inside(above, span(mask[r0 : r0 + 3].any(axis=0), width)).any(axis=1), above[0], top)
    y1 = last(inside(below, span(mask[max(0, r1 - 2) : r1 + 1].any(axis=0), width)).any(axis=1),
              below[0], bottom) + 1  # fmt: skip
    x0 = first(inside(span(mask[:, c0 : c0 + 3].any(axis=1), height), before).any(axis=0),
               before[0], left)  # fmt: skip
    x1 = last(inside(span(mask[:, max(0, c1 - 2) : c1 + 1].any(axis=1), height), after).any(axis=0),
              after[0], right) + 1  # fmt: skip
    return y0, x0, y1, x1


def _guide(det: _Detection) -> np.ndarray:
    """The coarse mask grown by two grid pixels, as uint8 0/255: where the FOV may be."""
    grown = cv2.dilate(det.mask.astype(np.uint8), np.ones((5, 5), np.uint8))
    return grown * np.uint8(255)


def find_fov(
    rgb: np.ndarray, *, name: str = "image", params: FovParams | None = None
) -> np.ndarray:
    """The field of view of an (H, W, 3) uint8 RGB fundus photograph, as an (H, W) bool mask.

    One filled region (holes from dark lesions, vessels and the macula are filled), drawn at
    full resolution. Raises :class:`ImageError` ``"<name>: no field of view (...)"`` for an
    all-black, uniform or too-small image.
    """
    rgb = _check_rgb(rgb, name)
    det = _detect(rgb, params or FovParams(), name)
    height, width = rgb.shape[:2]
    k = det.step
    # Grid pixel r stands for original rows r*k + offset +- k/2, i.e. about [r*k, (r+1)*k).
    guide = cv2.resize(_guide(det), None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    guide = np.pad(
        guide,
        ((0, max(0, height - guide.shape[0])), (0, max(0, width - guide.shape[1]))),
        mode="edge",
    )
    return _clean(_bright_pixels(rgb, det.threshold) & (guide[:height, :width] > 0))


def _bounding_square(bbox: tuple[int, int, int, int], multiple: int = 1) -> Square:
    """The square of side max(bbox height, width), rounded up to ``multiple``; same centre."""
    y0, x0, y1, x1 = bbox
    side = -(-max(y1 - y0, x1 - x0) // multiple) * multiple
    return Square(y0=y0 - (side - (y1 - y0)) // 2, x0=x0 - (side - (x1 - x0)) // 2, side=side)


def _guide_in_square(det: _Detection, square: Square, size: int) -> np.ndarray:
    """The coarse guide resampled onto the prepared image's (size, size) grid, as bool."""
    step = square.side / size  # original pixels per output pixel
    # Output pixel centre j lies at original coordinate x0 + (j + 0.5) * step - 0.5 (pixel
    # centres at integers), which is grid coordinate (that - offset) / det.step.
    shift = (0.5 * step - 0.5 - det.offset) / det.step
    a = step / det.step
    m = np.array([[a, 0.0, square.x0 / det.step + shift], [0.0, a, square.y0 / det.step + shift]])
    warped = cv2.warpAffine(
        _guide(det),
        m,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return warped > 0


# --------------------------------------------------------------------------------------------
# Crop, resize, CLAHE
# --------------------------------------------------------------------------------------------

_CV_RESIZE_DTYPES = {np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32, np.float64)}


def apply_square(arr: np.ndarray, square: Square, size: int, *, nearest: bool) -> np.ndarray:
    """Crop ``arr`` (H, W) or (H, W, C) to ``square``, zero-padded, and resize to (size, size).

    Sends anything aligned with the original photograph (a ground-truth lesion mask, a label
    map) to where :func:`prepare_fundus` sent the photograph: the square's edges map to the
    output's edges. ``nearest=True`` takes the original pixel under each output pixel's centre,
    so values are kept as they are (masks, labels; any dtype). ``nearest=False`` averages
    (``INTER_AREA``) when shrinking and interpolates linearly when enlarging (images); dtypes
    OpenCV cannot resize (bool, int32, int64, ...) are resized as, and returned in, float64.
    """
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3):
        raise ValueError(f"apply_square: expected an (H, W) or (H, W, C) array, got {arr.shape}")
    if size < 1 or square.side < 1:
        raise ValueError(
            f"apply_square: size ({size}) and square side ({square.side}) must be at least 1"
        )
    if nearest:
        return _nearest_square(arr, square, size)
    if arr.dtype not in _CV_RESIZE_DTYPES:
        arr = arr.astype(np.float64)
    return _area_square(arr, square, size)


def unapply_square(
    arr: np.ndarray, square: Square, shape: tuple[int, int], *, nearest: bool
) -> np.ndarray:
    """The inverse of :func:`apply_square`: an (size, size[, C]) array in the prepared frame
    back to the original photograph's (height, width) = ``shape``; zero outside the square.

    Sends what was computed on a prepared image (an anomaly map, a predicted mask) to where it
    lies in the photograph, at the photograph's resolution. ``nearest=True`` gives each original
    pixel the prepared pixel its centre falls in (masks, labels; exact for any dtype);
    ``nearest=False`` interpolates linearly between prepared pixel centres (maps, images;
    float32 stays float32; dtypes OpenCV cannot resize are returned as float64).
    """
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"unapply_square: expected a (size, size[, C]) array, got {arr.shape}")
    height, width = shape
    if height < 1 or width < 1 or square.side < 1:
        raise ValueError(f"unapply_square: empty shape {shape} or square {square}")
    size = arr.shape[0]
    if nearest:
        # original pixel r's centre, r + 1/2, lies in prepared pixel floor((r + 1/2 - y0) * k)
        def cells(n: int, origin: int) -> tuple[np.ndarray, np.ndarray]:
            offset = np.arange(n, dtype=np.int64) - origin
            inside = np.flatnonzero((offset >= 0) & (offset < square.side))
            return inside, (2 * offset[inside] + 1) * size // (2 * square.side)

        (rows, r_src), (cols, c_src) = cells(height, square.y0), cells(width, square.x0)
        out = np.zeros((height, width, *arr.shape[2:]), dtype=arr.dtype)
        if rows.size and cols.size:  # both increase: one block
            r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
            out[r, c] = arr[r_src][:, c_src]
        return out
    if arr.dtype not in _CV_RESIZE_DTYPES:
        arr = arr.astype(np.float64)
    # Resizing (size, size) to (side, side) puts output pixel j's centre at prepared coordinate
    # (j + 1/2) * size / side - 1/2: where apply_square took it from (tested). Then the square is
    # cut to the photograph (it may overhang it) and placed at (y0, x0).
    side = square.side
    top, left = max(0, -square.y0), max(0, -square.x0)
    bottom, right = min(side, height - square.y0), min(side, width - square.x0)
    out = np.zeros((height, width, *arr.shape[2:]), dtype=arr.dtype)
    if bottom <= top or right <= left:
        return out
    big = cv2.resize(np.ascontiguousarray(arr), (side, side), interpolation=cv2.INTER_LINEAR)
    big = big.reshape(side, side, *arr.shape[2:])
    out[square.y0 + top : square.y0 + bottom, square.x0 + left : square.x0 + right] = big[
        top:bottom, left:right
    ]
    return out


def _nearest_square(arr: np.ndarray, square: Square, size: int) -> np.ndarray:
    # Integer arithmetic, so sampling is exact: output i <- y0 + floor((i + 1/2) * side / size).
    centres = (2 * np.arange(size, dtype=np.int64) + 1) * square.side // (2 * size)
    rows, cols = square.y0 + centres, square.x0 + centres
    out = np.zeros((size, size, *arr.shape[2:]), dtype=arr.dtype)
    r_ok = np.flatnonzero((rows >= 0) & (rows < arr.shape[0]))
    c_ok = np.flatnonzero((cols >= 0) & (cols < arr.shape[1]))
    if r_ok.size and c_ok.size:  # sampled rows and columns increase with i: one block
        r, c = slice(r_ok[0], r_ok[-1] + 1), slice(c_ok[0], c_ok[-1] + 1)
        out[r, c] = arr[rows[r]][:, cols[c]]
    return out


def _area_square(arr: np.ndarray, square: Square, size: int) -> np.ndarray:
    """Crop, pad and resize; when shrinking by at least 2, first halve as often as exact.

    If ``side`` is divisible by a power of two k with ``side / k >= size``, the image's part of
    the square is halved log2(k) times (OpenCV's vectorised 2x2 ``INTER_AREA``), padded at that
    scale, then shrunk from ``side / k`` to ``size``: for an IDRiD photograph at 768 this takes
    about 30 ms instead of 55-85 for one non-integer shrink of the padded square (our
    measurement). Every stage maps the square's edges to the output's, so the geometry is that
    of one resize (tested).
    """
    height, width = arr.shape[:2]
    side, channels = square.side, arr.shape[2:]
    k = 1
    while side % (2 * k) == 0 and side // (2 * k) >= size:
        k *= 2
    # The image's part of the square, in square coordinates, widened to multiples of k (the
    # widening lies in the black padding, so it is only added where k does not divide).
    top, left = max(0, square.y0) - square.y0, max(0, square.x0) - square.x0
    bottom = min(height, square.y0 + side) - square.y0
    right = min(width, square.x0 + side) - square.x0
    if bottom <= top or right <= left:
        return np.zeros((size, size, *channels), dtype=arr.dtype)
    t, b = top // k * k, -(-bottom // k) * k
    lft, rgt = left // k * k, -(-right // k) * k
    part = arr[square.y0 + top : square.y0 + bottom, square.x0 + left : square.x0 + right]
    if (t, b, lft, rgt) != (top, bottom, left, right):
        part = cv2.copyMakeBorder(
            np.ascontiguousarray(part),
            top - t,
            b - bottom,
            left - lft,
            rgt - right,
            cv2.BORDER_CONSTANT,
            value=0,
        )
    while part.shape[0] > (b - t) // k:
        part = cv2.resize(
            part, (part.shape[1] // 2, part.shape[0] // 2), interpolation=cv2.INTER_AREA
        )
    canvas = np.zeros((side // k, side // k, *channels), dtype=arr.dtype)
    canvas[t // k : b // k, lft // k : rgt // k] = part.reshape(part.shape[:2] + channels)
    if side // k != size:
        interp = cv2.INTER_AREA if side // k > size else cv2.INTER_LINEAR
        canvas = cv2.resize(canvas, (size, size), interpolation=interp)
    return np.ascontiguousarray(canvas.reshape(size, size, *channels))


def _clahe_lab(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_GRID)
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def prepare_fundus(
    rgb: np.ndarray,
    size: int = 768,
    clahe: bool = True,
    *,
    name: str = "image",
    params: FovParams | None = None,
) -> PreparedFundus:
    """Prepare a fundus photograph as in paper 4.1: FOV square crop, resize, CLAHE, mask.

    1. Find the field of view (see the module docstring) on a grid of at most
       ``params.detect_size`` pixels, so big photographs cost little more than small ones.
    2. Crop its bounding square: side = the bounding box's longer side, centred on the box,
       black where the square overhangs the photograph (HRF discs cut at top and bottom). When
       the side is at least twice ``size`` it is rounded up to a multiple of the largest power
       of two k <= side / size (by under k pixels, 0.1 % for IDRiD) so that the shrink can
       start with fast exact halvings (see :func:`apply_square`).
    3. Resize to ``size x size`` (``INTER_AREA`` when shrinking, linear when enlarging).
    4. If ``clahe``: CLAHE (clip limit 2.0, 8x8 tiles, from the paper) on the L channel of CIE
       L*a*b*. Equalising lightness alone raises local contrast (vessels, lesions) without
       shifting hue; equalising R, G and B separately would change the colours that tell
       exudates from haemorrhages, and colour is what the generator's lesions are made of.
    5. Redraw the FOV at ``size x size`` (threshold of the resized image, guided by the coarse
       mask, holes filled) and zero everything outside it.

    Raises :class:`ImageError` ``"<name>: no field of view (...)"`` if none can be found.
    """
    if not isinstance(size, int | np.integer) or not 8 <= size <= MAX_SIDE:
        raise ConfigError(f"size: must be an integer from 8 to {MAX_SIDE} pixels, got {size!r}")
    rgb = _check_rgb(rgb, name)
    det = _detect(rgb, params or FovParams(), name)
    longest = max(det.bbox[2] - det.bbox[0], det.bbox[3] - det.bbox[1])
    halvings = max(0, (longest // size).bit_length() - 1)  # so that side / 2**halvings >= size
    square = _bounding_square(det.bbox, multiple=2**halvings)
    image = apply_square(rgb, square, size, nearest=False)
    guide = _guide_in_square(det, square, size)
    fov = _clean(_bright_pixels(image, det.threshold) & guide)
    if not fov.any():  # only if the FOV vanishes at a tiny size
        raise ImageError(f"{name}: no field of view at {size} x {size} pixels")
    if clahe:
        image = _clahe_lab(image)
    fov8 = fov.astype(np.uint8)
    image = cv2.bitwise_and(image, image, mask=fov8)  # zero outside the FOV
    return PreparedFundus(image=image, fov=fov8, square=square)


def load_fundus(
    path: str | Path, size: int = 768, clahe: bool = True, *, params: FovParams | None = None
) -> PreparedFundus:
    """:func:`read_image` then :func:`prepare_fundus`; errors name ``path``."""
    return prepare_fundus(read_image(path), size, clahe, name=str(path), params=params)
