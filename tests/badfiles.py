"""A corpus of awkward image files, for tests of everything that reads user folders.

:func:`write_bad_files` writes files that must be refused, each with a keyword that the one-line
:class:`anomalygen.ImageError` message contains; :func:`write_odd_but_valid_files` writes unusual
but valid encodings of one small synthetic fundus photograph (:func:`odd_reference`), all of
which must read and prepare. Everything is tiny and made on the spot: no fixtures on disk.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tests.synthetic import make_fundus

#: Height and width of the odd-but-valid files (wider than high, so a wrong rotation shows).
ODD_SHAPE = (96, 120)


def odd_reference() -> np.ndarray:
    """The RGB uint8 photograph that every odd-but-valid file encodes."""
    return make_fundus(ODD_SHAPE[0], seed=7, width_ratio=ODD_SHAPE[1] / ODD_SHAPE[0])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels but that holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _encoded(rgb: np.ndarray, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_bad_files(folder: Path) -> dict[str, str]:
    """Write unusable files into ``folder``; return {file name: keyword of the expected reason}.

    The keyword is a lower-case substring of the :class:`ImageError` message for that file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fundus = make_fundus(96, seed=3)
    jpeg = _encoded(fundus, "JPEG", quality=90)
    png = _encoded(fundus, "PNG")
    # Damage the compressed pixel data of the PNG but keep its length: CRC and zlib both fail.
    idat = png.index(b"IDAT") + 4
    corrupt_png = png[:idat] + bytes(b ^ 0x5A for b in png[idat : idat + 200]) + png[idat + 200 :]

    files: dict[str, tuple[bytes, str]] = {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "not_an_image.jpg": (b"This is a text file, not a photograph.\n" * 20, "not a recognised"),
        "huge_header.png": (huge_png_header(), "too large"),
        "corrupt.png": (corrupt_png, "corrupt"),
        "all_black.png": (_encoded(np.zeros((96, 96, 3), np.uint8), "PNG"), "no field of view"),
        "uniform_grey.png": (
            _encoded(np.full((96, 96, 3), 128, np.uint8), "PNG"),
            "no field of view",
        ),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: keyword for name, (_, keyword) in files.items()}


def write_odd_but_valid_files(folder: Path) -> list[str]:
    """Write :func:`odd_reference` in unusual but valid encodings; return the file names.

    16-bit RGB and grey PNG, 16-bit RGB TIFF (values v * 257 plus noise in the low byte, so
    that clipping instead of scaling would show), 8-bit grey PNG, RGBA and LA PNG with
    transparent, colourful backgrounds, palette PNG with and without transparency, CMYK JPEG,
    BMP, WebP, and a JPEG stored rotated with an EXIF orientation tag that turns it upright.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = odd_reference()
    rng = np.random.default_rng(11)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    disc = cv2.medianBlur(rgb.max(axis=2), 3) > 30

    def sixteen(a: np.ndarray) -> np.ndarray:
        wide = a.astype(np.int32) * 257 + rng.integers(-120, 121, size=a.shape)
        return np.clip(wide, 0, 65535).astype(np.uint16)

    cv2.imwrite(str(folder / "rgb16.png"), sixteen(rgb)[..., ::-1])
    cv2.imwrite(str(folder / "grey16.png"), sixteen(grey))
    cv2.imwrite(str(folder / "rgb16.tif"), sixteen(rgb)[..., ::-1])
    Image.fromarray(grey).save(folder / "grey.png")

    # Transparent background with loud colours under it: compositing on black must hide them.
    noise = rng.integers(0, 256, size=rgb.shape, dtype=np.uint8)
    alpha = np.where(disc, 255, 0).astype(np.uint8)
    under = np.where(disc[..., None], rgb, noise)
    Image.fromarray(np.dstack([under, alpha])).save(folder / "rgba.png")
    Image.fromarray(np.dstack([np.where(disc, grey, noise[..., 0]), alpha])).save(folder / "la.png")

    palette = Image.fromarray(rgb).quantize(colors=64, dither=Image.Dither.NONE)
    palette.save(folder / "palette.png")
    index = np.asarray(palette).copy()
    index[~disc] = 255  # a spare palette entry, marked transparent
    colours = palette.getpalette() or []
    colours = [*(colours + [0] * 768)[:765], 255, 0, 255]  # 256 entries, the last magenta
    transparent = Image.fromarray(index, mode="P")
    transparent.putpalette(colours)
    transparent.save(folder / "palette_transparent.png", transparency=255)

    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(rgb).save(folder / "image.bmp")
    Image.fromarray(rgb).save(folder / "image.webp", quality=95)

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(
        folder / "exif_rotated.jpg", quality=95, exif=exif
    )
    return [
        "rgb16.png",
        "grey16.png",
        "rgb16.tif",
        "grey.png",
        "rgba.png",
        "la.png",
        "palette.png",
        "palette_transparent.png",
        "cmyk.jpg",
        "image.bmp",
        "image.webp",
        "exif_rotated.jpg",
    ]
