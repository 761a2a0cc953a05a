"""The schema of a store's group attributes, checked on every open before anything is computed
from them: type and range of every attribute a reader or writer uses, the lengths of its strings
and lists, and the generator configuration. No I/O.

A store is a file a user may have been sent, copied half-way or edited: ``shard_size: 0`` made
four commands fail with ``ZeroDivisionError``, ``n: 10**15`` with ``MemoryError``, ``size: -1``
trained, and a 50 MB string was printed by ``anomalygen info``. :func:`check_attrs` raises one
:class:`StoreError` line naming the attribute instead. Keys this code does not know are left
alone (a later version may add some).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from anomalygen.errors import StoreError, one_line
from anomalygen.store.format import (
    CODECS,
    COMPACT,
    COMPACT_SINCE,
    FULL,
    LAYOUTS,
    MAX_N,
    MAX_POOL,
    MAX_SEED,
    MAX_SHARD_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    NORMALS,
    POOLS,
    TEXTURES,
    check_format,
)

__all__ = ["MAX_TEXT", "check_attrs"]

#: Longest string attribute (characters): paths, descriptions, file names and skip reasons.
MAX_TEXT = 4096
#: Longest short string attribute (versions, timestamps, ids).
MAX_SHORT = 64
#: A value shown in a message is cut to this many characters.
SHOWN = 40
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_attrs(where: object, attrs: Mapping[str, Any]) -> None:
    """Raise :class:`StoreError` (``"<where>: attribute 'k' ..."``) unless ``attrs`` are the
    attributes of a readable store: format and version, then every attribute's type and range
    (``docs/store-format.md``, "Group attributes")."""
    check_format(where, attrs)
    try:
        _check(attrs)
    except _Bad as bad:
        raise StoreError(f"{where}: attribute {bad.key!r} {bad.problem}") from None


class _Bad(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) <= SHOWN:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else type(value).__name__
    return f"{text[:SHOWN]}... ({size})"


def _int(attrs: Mapping[str, Any], key: str, low: int, high: int, *, required: bool = True) -> int:
    if key not in attrs and not required:
        return low
    if key not in attrs:
        raise _Bad(key, "is missing")
    value = attrs[key]
    if type(value) is not int or not low <= value <= high:  # type(): bools are ints
        raise _Bad(key, f"must be an integer from {low:,} to {high:,}, got {_shown(value)}")
    return value


def _text(key: str, value: Any, *, limit: int = MAX_TEXT, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str):
        raise _Bad(key, f"must be a string, got {_shown(value)}")
    if len(value) > limit:
        raise _Bad(key, f"is {len(value):,} characters long (at most {limit:,})")


def _check(attrs: Mapping[str, Any]) -> None:
    for key in ("anomalygen_version", "created"):
        if key in attrs:
            _text(key, attrs[key], limit=MAX_SHORT)
    for key in ("completed", "store_id"):
        _text(key, attrs.get(key), limit=MAX_SHORT, optional=True)
    _int(attrs, "n", 1, MAX_N)
    _int(attrs, "size", MIN_SIZE, MAX_SIZE)
    _int(attrs, "seed", 0, MAX_SEED)
    _int(attrs, "shard_size", 1, MAX_SHARD_SIZE)
    _int(attrs, "pool_shard_size", 1, MAX_SHARD_SIZE, required=False)
    if attrs.get("codec") not in CODECS:
        raise _Bad("codec", f"must be one of {', '.join(CODECS)}, got {_shown(attrs.get('codec'))}")
    if attrs.get("layout", FULL) not in LAYOUTS:
        raise _Bad("layout", f"must be one of {', '.join(LAYOUTS)}, got {_shown(attrs['layout'])}")
    if attrs.get("layout") == COMPACT and attrs["format_version"] < COMPACT_SINCE:
        raise _Bad("layout", f"compact needs format version {COMPACT_SINCE} or later")
    if not isinstance(attrs.get("clahe"), bool):
        raise _Bad("clahe", f"must be true or false, got {_shown(attrs.get('clahe'))}")
    source = _check_generator(attrs.get("generator"))
    listings = {NORMALS: attrs.get("sources"), TEXTURES: attrs.get("textures")}
    _listing("sources", listings[NORMALS])
    if listings[TEXTURES] is not None:
        _listing("textures", listings[TEXTURES])
    if (source == "texture") != (listings[TEXTURES] is not None):
        raise _Bad("textures", "must list the textures exactly when the generator uses them")
    _check_pools(attrs, listings)


def _check_generator(value: Any) -> str:
    """The generator configuration must build a ``GeneratorConfig``; returns its source."""
    if not isinstance(value, dict):
        raise _Bad("generator", f"must be a mapping, got {_shown(value)}")
    from anomalygen.config import from_dict
    from anomalygen.generator import GeneratorConfig  # OpenCV: the readers load it anyway

    try:
        config = from_dict(GeneratorConfig, value)
    except Exception as err:  # whatever hostile values make the config's checks raise
        reason = one_line(err)
        reason = reason if len(reason) <= 2 * SHOWN else reason[: 2 * SHOWN] + "..."
        raise _Bad("generator", f"is not a valid generator configuration ({reason})") from None
    return str(config.source)


def _listing(key: str, value: Any) -> None:
    """``{"root", "description", "files": [[name, bytes, sha256 or null], ...]}``."""
    if not isinstance(value, dict):
        raise _Bad(key, f"must be a mapping, got {_shown(value)}")
    for part in ("root", "description"):
        _text(f"{key}.{part}", value.get(part, ""))
    files = value.get("files")
    if not isinstance(files, list) or len(files) > MAX_POOL:
        raise _Bad(f"{key}.files", f"must be a list of at most {MAX_POOL:,} files")
    for k, entry in enumerate(files):
        where = f"{key}.files[{k}]"
        if not isinstance(entry, list) or len(entry) != 3:
            raise _Bad(where, f"must be [name, bytes, sha256], got {_shown(entry)}")
        name, size, digest = entry
        _text(where, name)
        if type(size) is not int or size < -1:
            raise _Bad(where, f"has a byte count that is not an integer >= -1: {_shown(size)}")
        if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise _Bad(where, f"has a sha256 that is not 64 hex digits: {_shown(digest)}")


def _check_pools(attrs: Mapping[str, Any], listings: Mapping[str, Any]) -> None:
    pools = attrs.get("pools")
    if not isinstance(pools, dict) or NORMALS not in pools or not set(pools) <= set(POOLS):
        raise _Bad("pools", f"must map 'normals' (and 'textures') to counts, got {_shown(pools)}")
    for pool, count in pools.items():
        listing = listings[pool]
        slots = len(listing["files"]) if isinstance(listing, dict) else None
        if type(count) is not int or count != slots:
            raise _Bad(f"pools.{pool}", f"must equal the {slots} files listed, got {_shown(count)}")
        if f"{pool}_count" in attrs:
            _int(attrs, f"{pool}_count", 0, count)
    if TEXTURES in pools and listings[TEXTURES] is None:
        raise _Bad("pools.textures", "counts textures that 'textures' does not list")
    if listings[TEXTURES] is not None and TEXTURES not in pools:
        raise _Bad("pools", "has no 'textures' count for the textures listed")
    _check_skipped(attrs.get("skipped", []), sum(pools.values()))


def _check_skipped(skipped: Any, slots: int) -> None:
    if not isinstance(skipped, list) or len(skipped) > slots:
        raise _Bad("skipped", f"must be a list of at most {slots} records")
    checks: dict[str, Callable[[str, Any], None]] = {"pool": _pool_name, "name": _text}
    checks["reason"] = _text
    for k, record in enumerate(skipped):
        if not isinstance(record, dict):
            raise _Bad(f"skipped[{k}]", f"must be a mapping, got {_shown(record)}")
        for field, check in checks.items():
            check(f"skipped[{k}].{field}", record.get(field))


def _pool_name(key: str, value: Any) -> None:
    if value not in POOLS:
        raise _Bad(key, f"must be one of {', '.join(POOLS)}, got {_shown(value)}")
