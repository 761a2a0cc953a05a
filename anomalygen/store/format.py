"""The store format (version 3): names, layout constants, the render's parameters. No I/O.

``docs/store-format.md`` is the contract; this module is the only code that knows the store's
array names and attributes. :class:`RenderSpec` is what a render is asked to make (the keys a
resumed render must match) and converts to and from the group attributes;
:func:`parameter_differences` is the diff that a refused resume reports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anomalygen.errors import StoreError

if TYPE_CHECKING:  # pragma: no cover
    from anomalygen.generator import GeneratorConfig

__all__ = [
    "CODECS",
    "COMPACT",
    "COMPACT_SINCE",
    "DEFAULT_CODEC",
    "DEFAULT_LAYOUT",
    "DEFAULT_SHARD_SIZE",
    "DIGESTS",
    "DIGESTS_SINCE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FULL",
    "LAYOUTS",
    "MAX_N",
    "MAX_POOL",
    "MAX_SEED",
    "MAX_SHARD_SIZE",
    "MAX_SIZE",
    "MIN_SIZE",
    "POOL_SHARD_SIZE",
    "TEXT_ROWS_SINCE",
    "Listing",
    "RenderSpec",
    "check_format",
    "compressors",
    "layout_of",
    "parameter_differences",
    "record_arrays",
    "shard_key",
]

#: The value of the ``format`` attribute that marks a group as an anomalygen store.
FORMAT_NAME = "anomalygen-store"
#: The version this code writes; readers refuse any version not in ``READABLE_VERSIONS``.
#: Version 2 adds the content digests (``digests``, ``<pool>_digests``) written with every
#: shard; version-1 stores have none and stay readable. Version 3 stores the JSON records
#: (``meta``, ``<pool>_info``) as NUL-padded UTF-8 rows of uint8 (``anomalygen.store.text``),
#: a core Zarr v3 data type, instead of zarr-python's ``string`` extension, and gives the
#: digests arrays' columns their own dimension names (xarray opens the whole group).
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: The first version whose shards carry digests.
DIGESTS_SINCE = 2
#: The first version whose records are uint8 rows (versions 1 and 2: zarr-python strings).
TEXT_ROWS_SINCE = 3

# Array names (see docs/store-format.md). Pools: "<pool>", "<pool>_fov" (normals only),
# "<pool>_info" (one JSON record per slot), "<pool>_digests" (version 2) and "<pool>_done"
# (one flag per pool shard).
IMAGE = "image"
MASK = "mask"
TARGET = "target"
SOURCE = "source"
AREA = "area"
LESIONS = "lesions"
META = "meta"
DONE = "done"
DIGESTS = "digests"
#: The compact layout's arrays, in place of ``image`` and ``mask`` (``anomalygen.store.patches``).
BOXES = "boxes"
PATCH_BYTES = "patch_bytes"
PATCHES = "patches"
#: The arrays that hold the samples themselves (what "bytes per sample" counts; not the pools).
SAMPLE_ARRAYS = (
    *(IMAGE, MASK, TARGET, SOURCE, AREA, LESIONS, META, DIGESTS),
    *(BOXES, PATCH_BYTES, PATCHES),
)
NORMALS = "normals"
TEXTURES = "textures"
POOLS = (NORMALS, TEXTURES)
POOL_SUFFIXES = ("", "_fov", "_info", "_digests", "_done")
ARRAY_NAMES = frozenset(
    [IMAGE, MASK, TARGET, SOURCE, AREA, LESIONS, META, DIGESTS, DONE, BOXES, PATCH_BYTES, PATCHES]
    + [f"{pool}{suffix}" for pool in POOLS for suffix in POOL_SUFFIXES]
)
#: The group's metadata object (its attributes live in it).
GROUP_METADATA = "zarr.json"

#: Store layouts (``--layout``, the ``layout`` attribute; a store without one is ``full``):
#: ``full`` stores every sample's image and mask; ``compact`` only the pixels inside its
#: lesion boxes, composed with its target normal on read (format version 3 and later).
FULL = "full"
COMPACT = "compact"
LAYOUTS = (FULL, COMPACT)
#: What ``render`` writes unless told otherwise: compact, 1/132 of the bytes and about twice the
#: samples per second of full at 768 px (README, "Speed and size"); every reader composes it.
DEFAULT_LAYOUT = COMPACT
#: The first version that may be compact.
COMPACT_SINCE = 3

#: Codec names accepted by ``--codec``. Every chunk also carries a CRC32C checksum, so that
#: ``anomalygen verify`` catches any corrupted byte (zstd alone misses many bit flips).
CODECS = ("zstd", "blosc-lz4", "none")
#: zstd level 1: 2.4x smaller than raw at 768 px for about 7 ms per image on one core here;
#: level 3 saves another 11% for twice the time (measurements in docs/store-format.md).
DEFAULT_CODEC = "zstd"
ZSTD_LEVEL = 1
#: Samples per shard: 64 samples at 768 px make shard objects of about 60 MB (image) and
#: 1 MB (mask), few enough objects for 200,000 samples (3,125 per array) and a shard buffer of
#: 150 MB per worker. Write speed is flat from 16 to 128 (docs/store-format.md).
DEFAULT_SHARD_SIZE = 64
#: Slots per pool shard: small, so that phase 1 spreads a few dozen photographs over workers.
POOL_SHARD_SIZE = 8

# Bounds of the parameters, checked by the renderer before it creates anything and by readers
# on every store they open (anomalygen.store.schema), before anything is computed from them.
#: Smallest image side (px): the generator needs room for its crops.
MIN_SIZE = 32
#: Largest image side (px): 5x the paper's 768, larger than the prepared side of any fundus
#: camera's photograph we know of (IDRiD: 4288 x 2848). One image is 48 MiB at 4096 px.
MAX_SIZE = 4096
#: Most samples in a store: 500 times the paper's 200,000 (ours).
MAX_N = 100_000_000
#: Most samples per shard (a worker holds a whole shard in memory: 3 GiB at 4096 px and 64).
MAX_SHARD_SIZE = 4096
#: Most slots in a pool (source photographs or textures): 35 times EyeQ's 28,792 photographs.
MAX_POOL = 1_000_000
#: Seeds are unsigned 64-bit integers (numpy's SeedSequence takes any, we record this many).
MAX_SEED = 2**64 - 1
#: Pools are stored uncompressed (with checksums), whatever ``--codec`` says: every sample reads
#: two pool images, and with thousands of source photographs most of those reads miss a worker's
#: cache. A zstd-compressed normal costs about 12 ms to read at 768 px, an uncompressed one about
#: 5 ms (docs/store-format.md); the pools are a small part of a store (M << N).
POOL_CODEC = "none"

#: Keys of the group attributes that define a render's content: a resumed render must match
#: them all. ``sources`` / ``textures`` are compared by file names and sizes only (the content
#: hashes are filled in by phase 1; the folder may move).
PARAMETER_KEYS = (
    "n",
    "size",
    "seed",
    "shard_size",
    "pool_shard_size",
    "codec",
    "clahe",
    "generator",
    "sources",
    "textures",
    "layout",
)


def record_arrays(pools: Sequence[str] = POOLS) -> tuple[str, ...]:
    """The arrays of JSON records: ``meta`` and each pool's ``<pool>_info``."""
    return (META, *(f"{pool}_info" for pool in pools))


def shard_key(name: str, shard: int, *, ndim: int) -> str:
    """The object key of shard ``shard`` (along the first axis) of array ``name``: zarr v3's
    default chunk key encoding, ``<name>/c/<shard>/0/0...``."""
    return "/".join([name, "c", str(shard), *["0"] * (ndim - 1)])


def compressors(codec: str) -> list[Any]:
    """The zarr v3 bytes-to-bytes codecs for ``codec``, each chunk ending in a CRC32C."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if codec == "zstd":
        return [ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec()]
    if codec == "blosc-lz4":
        # uint8 pixels: byte shuffling has nothing to reorder.
        return [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"), Crc32cCodec()]
    if codec == "none":
        return [Crc32cCodec()]
    raise StoreError(f"--codec: unknown codec {codec!r} (choose from {', '.join(CODECS)})")


def check_format(where: object, attrs: Mapping[str, Any]) -> None:
    """Raise :class:`StoreError` unless ``attrs`` mark a store of a readable format version;
    ``where`` names the store in the message."""
    if attrs.get("format") != FORMAT_NAME:
        raise StoreError(
            f"{where}: a Zarr group, but not an anomalygen store (no format attribute)"
        )
    version = attrs.get("format_version")
    # type(): JSON's true is Python's True, which equals 1.
    if type(version) is not int or version not in READABLE_VERSIONS:
        from anomalygen import __version__

        known = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise StoreError(
            f"{where}: store format version {version!r} is not known to anomalygen "
            f"{__version__} (it reads version {known}); use the anomalygen version that wrote it"
        )


# ------------------------------------------------------------------------------------------
# The render's parameters
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """A pool's source files in slot order: ``(name relative to root, bytes)`` each."""

    root: str
    description: str
    files: tuple[tuple[str, int], ...]

    def to_attrs(self, hashes: Sequence[str | None] | None = None) -> dict[str, Any]:
        """The ``sources`` / ``textures`` attribute: ``files`` as ``[name, bytes, sha256]``
        (``hashes`` are filled in by phase 1; ``None`` before)."""
        hashes = [None] * len(self.files) if hashes is None else hashes
        files = [[name, size, h] for (name, size), h in zip(self.files, hashes, strict=True)]
        return {"root": self.root, "description": self.description, "files": files}

    @classmethod
    def from_attrs(cls, data: Mapping[str, Any]) -> Listing:
        files = tuple((str(f[0]), int(f[1])) for f in data.get("files", []))
        return cls(str(data.get("root", "")), str(data.get("description", "")), files)


@dataclass(frozen=True)
class RenderSpec:
    """What a render makes: the store's parameters (``PARAMETER_KEYS``), checked on resume."""

    n: int
    size: int
    seed: int
    shard_size: int
    codec: str
    clahe: bool
    generator: GeneratorConfig
    sources: Listing
    textures: Listing | None = None
    pool_shard_size: int = POOL_SHARD_SIZE
    layout: str = FULL  # as a store without the attribute (layout_of); render() passes its own

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_range(self, shard: int) -> range:
        """The sample indices of shard ``shard``."""
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.n))

    @property
    def pools(self) -> dict[str, Listing]:
        """``{"normals": sources}``, and ``"textures"`` in texture mode."""
        pools = {NORMALS: self.sources}
        if self.textures is not None:
            pools[TEXTURES] = self.textures
        return pools

    @property
    def source_pool(self) -> str:
        """The pool that lesion sources come from: ``textures`` in texture mode."""
        return TEXTURES if self.generator.source == "texture" else NORMALS

    def to_attrs(self) -> dict[str, Any]:
        """The parameter attributes (``PARAMETER_KEYS``, in that order; ``layout`` only for a
        compact store, so that a full render writes the attributes it always wrote)."""
        from anomalygen.config import to_dict

        layout = {"layout": self.layout} if self.layout != FULL else {}
        return {
            "n": self.n,
            "size": self.size,
            "seed": self.seed,
            "shard_size": self.shard_size,
            "pool_shard_size": self.pool_shard_size,
            "codec": self.codec,
            "clahe": self.clahe,
            "generator": to_dict(self.generator),
            "sources": self.sources.to_attrs(),
            "textures": self.textures.to_attrs() if self.textures is not None else None,
            **layout,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> RenderSpec:
        """The spec a store was rendered with; raises :class:`StoreError` if keys are missing."""
        from anomalygen.generator import config_from_record  # OpenCV: only when asked for

        try:
            textures = attrs.get("textures")
            return cls(
                n=int(attrs["n"]),
                size=int(attrs["size"]),
                seed=int(attrs["seed"]),
                shard_size=int(attrs["shard_size"]),
                codec=str(attrs["codec"]),
                clahe=bool(attrs["clahe"]),
                generator=config_from_record(attrs["generator"]),
                sources=Listing.from_attrs(attrs["sources"]),
                textures=Listing.from_attrs(textures) if textures else None,
                pool_shard_size=int(attrs.get("pool_shard_size", POOL_SHARD_SIZE)),
                layout=layout_of(attrs),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"the store's attributes are incomplete ({err})") from None


def layout_of(attrs: Mapping[str, Any]) -> str:
    """The layout of a store with attributes ``attrs`` (``full`` where none is recorded)."""
    return str(attrs.get("layout", FULL))


def parameter_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two stores' render parameters (``PARAMETER_KEYS``)."""
    out = []
    for key in PARAMETER_KEYS:
        a, b = old.get(key), new.get(key)
        if key == "layout":
            a, b = layout_of(old), layout_of(new)
        if key in ("sources", "textures"):
            a, b = _file_pairs(a), _file_pairs(b)
            if a != b:
                out.append(_list_difference(key, a, b))
        elif a == b:
            continue
        elif key == "generator" and isinstance(a, dict) and isinstance(b, dict):
            a, b = _as_recorded(a), _as_recorded(b)
            if a == b:
                continue
            out.extend(f"generator.{d}" for d in _dict_differences(a, b))
        else:
            out.append(f"{key} {json.dumps(a)} -> {json.dumps(b)}")
    return out


def _as_recorded(generator: dict) -> dict:
    """A recorded generator config with the fields it predates filled in as it was made."""
    from anomalygen.config import to_dict
    from anomalygen.generator import config_from_record

    try:
        return to_dict(config_from_record(generator))
    except (ValueError, TypeError):  # ConfigError is a ValueError: compare as recorded
        return generator


def _file_pairs(listing: Mapping[str, Any] | None) -> list[tuple[str, int]]:
    if not listing:
        return []
    return [(str(f[0]), int(f[1])) for f in listing.get("files", [])]


def _dict_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out.extend(_dict_differences(x, y, f"{prefix}{key}."))
        elif x != y:
            out.append(f"{prefix}{key} {json.dumps(x)} -> {json.dumps(y)}")
    return out


def _list_difference(key: str, a: list[tuple[str, int]], b: list[tuple[str, int]]) -> str:
    sizes_a, sizes_b = dict(a), dict(b)
    gone = sorted(set(sizes_a) - set(sizes_b))
    new = sorted(set(sizes_b) - set(sizes_a))
    changed = sorted(k for k in set(sizes_a) & set(sizes_b) if sizes_a[k] != sizes_b[k])
    parts = [f"{len(a)} -> {len(b)} files"]
    for label, names in (("missing", gone), ("new", new), ("changed size", changed)):
        if names:
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            parts.append(f"{label}: {names[0]}{more}")
    return f"{key} ({', '.join(parts)})"
