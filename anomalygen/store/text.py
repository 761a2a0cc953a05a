"""JSON records (``meta``, ``<pool>_info``) as the store holds them. No I/O.

Zarr v3's core data types are fixed-size numbers; zarr-python's variable-length ``string`` type
is an extension that other implementations (tensorstore) refuse. From format version 3 a record
array is a uint8 array of one fixed-width row per item: the record's UTF-8 JSON text, then NUL
bytes (the fill value). JSON text never holds a NUL byte (``json.dumps`` escapes control
characters), so the text ends at the first one. Each shard of items is one chunk, compressed
with zstd whatever the store's codec (the rows are mostly NUL padding, which zstd removes):
zarr-python spends about 0.2 ms on every chunk it writes, so one chunk per record (or several)
would cost a render more than its images.

Row widths: :data:`INFO_BYTES` for pool records; :func:`meta_bytes` for a sample's meta, which
grows with the number of lesions the generator may draw. Stores of versions 1 and 2 hold the
records in zarr-python's ``string`` type; :func:`decode_texts` reads both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "INFO_BYTES",
    "META_BYTES_BASE",
    "META_BYTES_PER_LESION",
    "decode_texts",
    "encode_texts",
    "is_text_rows",
    "meta_bytes",
]

#: Bytes of a pool record's row: ours are at most about 50 KB (a 4,096-character name and
#: reason, the longest the schema allows, with every character escaped as ``\uXXXX``).
INFO_BYTES = 65536
#: A sample's meta row: this much, plus :data:`META_BYTES_PER_LESION` per lesion the generator
#: may draw, rounded up to 4 KiB. Ours take about 120 bytes plus about 260 a lesion.
META_BYTES_BASE = 4096
META_BYTES_PER_LESION = 2048


def meta_bytes(max_lesions: int) -> int:
    """The width of the ``meta`` rows of a store whose generator draws at most
    ``max_lesions`` lesions a sample (``GeneratorConfig.lesions[1]``)."""
    width = META_BYTES_BASE + META_BYTES_PER_LESION * max(1, int(max_lesions))
    return -(-width // 4096) * 4096


def encode_texts(texts: Sequence[str], width: int, what: str = "record") -> np.ndarray:
    """``(len(texts), width)`` uint8 rows: each text's UTF-8 bytes, NUL-padded.

    Raises ValueError for a text longer than a row or holding a NUL character."""
    rows = np.zeros((len(texts), width), np.uint8)
    for k, text in enumerate(texts):
        data = text.encode("utf-8")
        if len(data) > width or b"\0" in data:
            problem = f"is {len(data):,} bytes long" if len(data) > width else "holds a NUL"
            raise ValueError(f"{what} {k} {problem} (its rows hold {width:,} bytes)")
        rows[k, : len(data)] = np.frombuffer(data, np.uint8)
    return rows


def is_text_rows(values: Any) -> bool:
    """Whether ``values`` read from a record array are format-3 rows (uint8, one per item)."""
    return isinstance(values, np.ndarray) and values.dtype == np.uint8 and values.ndim >= 1


def decode_texts(values: Any) -> list[str]:
    """The texts of records read from a record array: rows (format 3) or strings (1 and 2).

    Bytes that are not UTF-8 (a corrupted row) decode with replacement characters, so that
    the text's digest does not match and the item is reported as damaged."""
    if not is_text_rows(values):
        return [str(v) for v in np.asarray(values, dtype=object).ravel()]
    rows = values.reshape(-1, values.shape[-1])
    out = []
    for row in rows:
        data = row.tobytes()
        end = data.find(b"\0")
        out.append(data[: end if end >= 0 else len(data)].decode("utf-8", errors="replace"))
    return out
