"""The anomalygen store, format version 1: layout constants, writer helpers and the reader.

``docs/store-format.md`` is the contract; this module is the only code that knows the store's
array names and attributes. One Zarr v3 group holds:

- the *pools* the renderer draws from, prepared once in phase 1: ``normals`` (+ ``normals_fov``)
  and, in texture mode, ``textures``; one slot per listed source file, in source-list order;
- the synthetic samples ``image`` / ``mask`` (I_G, M_G) and their per-sample metadata;
- per-shard completion flags, each flag its own object, written after the shard's data.

Every array is sharded with one sample per inner chunk and one writer per shard: a writer buffers
a whole shard and writes it with one assignment per array (Zarr rewrites a whole shard on every
partial write, so two writers of one shard would lose data).

:func:`open_store` returns a :class:`SampleStore`, the reading API for training and other
projects: random access by index, picklable, and safe in forked or spawned DataLoader workers.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from anomalygen.errors import AnomalygenError, ConfigError, StoreError, one_line

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_SHARD_SIZE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "POOL_SHARD_SIZE",
    "NormalsView",
    "PoolCache",
    "SampleStore",
    "StoreLocation",
    "open_store",
    "parse_storage_options",
    "store_info",
]

#: The value of the ``format`` attribute that marks a group as an anomalygen store.
FORMAT_NAME = "anomalygen-store"
#: The version this code writes; readers refuse any version not in ``READABLE_VERSIONS``.
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)

# Array names (see docs/store-format.md). Pools: "<pool>", "<pool>_fov" (normals only),
# "<pool>_info" (one JSON record per slot) and "<pool>_done" (one flag per pool shard).
IMAGE = "image"
MASK = "mask"
TARGET = "target"
SOURCE = "source"
AREA = "area"
LESIONS = "lesions"
META = "meta"
DONE = "done"
#: The arrays that hold the samples themselves (what "bytes per sample" counts; not the pools).
SAMPLE_ARRAYS = (IMAGE, MASK, TARGET, SOURCE, AREA, LESIONS, META)
NORMALS = "normals"
TEXTURES = "textures"
POOLS = (NORMALS, TEXTURES)
ARRAY_NAMES = frozenset(
    [IMAGE, MASK, TARGET, SOURCE, AREA, LESIONS, META, DONE]
    + [f"{pool}{suffix}" for pool in POOLS for suffix in ("", "_fov", "_info", "_done")]
)

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
)


# ------------------------------------------------------------------------------------------
# Where a store lives
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreLocation:
    """A store's address: a local path (plain or ``file://``) or any fsspec URL zarr accepts.

    Local paths use zarr's ``LocalStore`` (atomic writes: a chunk file is written to a temporary
    name and renamed); other URLs use ``FsspecStore`` with ``storage_options``.
    """

    url: str
    storage_options: dict[str, Any] | None = None

    @property
    def protocol(self) -> str:
        scheme = urlsplit(self.url).scheme
        # One-letter "schemes" are Windows drive letters.
        return scheme.lower() if len(scheme) > 1 else "file"

    @property
    def local_path(self) -> Path | None:
        """The filesystem path for local stores, else None."""
        if self.protocol != "file":
            return None
        if self.url.startswith("file://"):
            return Path(urlsplit(self.url).path)
        return Path(self.url).expanduser()

    @property
    def in_memory(self) -> bool:
        """True for ``memory://`` stores, which live in this process only."""
        return self.protocol == "memory"

    def __str__(self) -> str:
        return self.url

    def zarr_store(self, *, read_only: bool) -> Any:
        from zarr.storage import FsspecStore, LocalStore

        path = self.local_path
        if path is not None:
            return LocalStore(path, read_only=read_only)
        try:
            return FsspecStore.from_url(
                self.url, storage_options=self.storage_options, read_only=read_only
            )
        except (ImportError, ValueError) as err:
            raise StoreError(f"{self.url}: cannot open this URL ({one_line(err)})") from None

    def fs(self) -> tuple[Any, str]:
        """``(fsspec filesystem, path)`` of a non-local store."""
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.url, **(self.storage_options or {}))
        except (ImportError, ValueError) as err:  # e.g. s3:// without s3fs installed
            raise StoreError(f"{self.url}: cannot open this URL ({one_line(err)})") from None

    def is_empty(self) -> bool:
        """True if nothing or an empty folder is at this address."""
        path = self.local_path
        if path is not None:
            return not path.exists() or (path.is_dir() and not any(path.iterdir()))
        fs, root = self.fs()
        return not fs.exists(root) or not fs.ls(root)

    def list_keys(self, prefix: str) -> set[str]:
        """Keys (paths relative to the store, ``/``-separated) of the objects under ``prefix``."""
        path = self.local_path
        if path is not None:
            base = path / prefix if prefix else path
            if not base.exists():
                return set()
            out = set()
            for folder, _, files in os.walk(base):
                rel = Path(folder).relative_to(path).as_posix()
                for name in files:
                    out.add(name if rel == "." else f"{rel}/{name}")
            return out
        fs, root = self.fs()
        root = root.rstrip("/")
        target = f"{root}/{prefix}".rstrip("/") if prefix else root
        if not fs.exists(target):
            return set()
        return {p[len(root) + 1 :] for p in fs.find(target)}

    def bytes_on_disk(self) -> int:
        """Total size of the store's objects (for local stores, of its files)."""
        path = self.local_path
        if path is not None:
            total = 0
            for folder, _, files in os.walk(path):
                for name in files:
                    try:
                        total += os.path.getsize(os.path.join(folder, name))
                    except OSError:  # a temporary file renamed meanwhile
                        pass
            return total
        fs, root = self.fs()
        return int(fs.du(root)) if fs.exists(root) else 0


_CREDENTIAL_WORDS = (
    "credential",
    "accessdenied",
    "access denied",
    "forbidden",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "expiredtoken",
    "permission",
)


def access_hint(loc: StoreLocation, err: BaseException) -> str:
    """A hint to append to an error reaching a URL store: how to pass credentials, where the
    error looks like missing or refused ones (``""`` otherwise, and for local stores)."""
    if loc.local_path is not None:
        return ""
    text = f"{type(err).__name__} {err}".lower()
    if not any(word in text for word in _CREDENTIAL_WORDS):
        return ""
    return (
        "; give credentials with --storage-option (e.g. key=... secret=..., or profile=NAME) "
        "or in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in "
        "~/.aws) where the command and every worker run"
    )


def access_error(loc: StoreLocation, err: BaseException, doing: str) -> StoreError:
    """A one-line :class:`StoreError` for an exception raised while ``doing`` something to the
    store at ``loc`` (fsspec and cloud SDKs raise their own types, not only OSError)."""
    return StoreError(f"{loc}: cannot {doing} ({one_line(err)}){access_hint(loc, err)}")


@contextlib.contextmanager
def access_errors(loc: StoreLocation, doing: str) -> Iterator[None]:
    """Turn anything but our own errors raised inside into :func:`access_error`."""
    try:
        yield
    except AnomalygenError:
        raise
    except Exception as err:
        raise access_error(loc, err, doing) from None


#: ``--storage-option`` keys whose values stay strings even when they look like JSON numbers:
#: credentials and names (a secret of digits must not become an int).
STRING_OPTIONS = frozenset(
    {"key", "secret", "token", "password", "username", "profile", "endpoint_url", "region_name"}
)


def parse_storage_options(items: Sequence[str] | None) -> dict[str, Any] | None:
    """``["KEY=VALUE", ...]`` (``--storage-option``) -> fsspec storage options, or None if
    there are none.

    A VALUE that parses as JSON is used as such (``anon=true``, ``default_block_size=5242880``,
    ``client_kwargs={"region_name": "eu-west-1"}``), any other as a string
    (``endpoint_url=http://minio:9000``); keys in ``STRING_OPTIONS`` always keep a string.
    Raises :class:`ConfigError` for an item without ``=``.
    """
    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--storage-option: expected KEY=VALUE, got {item!r}")
        if key in STRING_OPTIONS:
            options[key] = value
            continue
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options or None


def shard_key(name: str, shard: int, *, ndim: int) -> str:
    """The object key of shard ``shard`` (along the first axis) of array ``name``: zarr v3's
    default chunk key encoding, ``<name>/c/<shard>/0/0...``."""
    return "/".join([name, "c", str(shard), *["0"] * (ndim - 1)])


def location(url: str | os.PathLike | StoreLocation, storage_options=None) -> StoreLocation:
    if isinstance(url, StoreLocation):
        return url
    return StoreLocation(os.fspath(url), storage_options)


# ------------------------------------------------------------------------------------------
# Creating a store (the render's coordinator, once)
# ------------------------------------------------------------------------------------------


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


def create_store(
    loc: StoreLocation,
    attrs: dict[str, Any],
    *,
    n: int,
    size: int,
    shard_size: int,
    codec: str,
    pools: dict[str, int],
) -> None:
    """Create the group, its arrays (empty) and attributes ``attrs`` at ``loc``.

    ``pools`` maps a pool name (``normals``, ``textures``) to its number of slots.
    The caller holds the render lock and has checked that nothing else is at ``loc``.
    """
    import zarr

    # Not mode "w": zarr would delete and recreate the folder, and with it the render's lock
    # (held on the folder itself). The caller has emptied it with clear_store.
    group = zarr.open_group(store=loc.zarr_store(read_only=False), mode="w-")
    comp = compressors(codec)
    n_shards = -(-n // shard_size)

    def images(
        name: str, count: int, shard: int, channels: bool, dims: tuple[str, ...], codecs=comp
    ) -> None:
        shape = (count, size, size, 3) if channels else (count, size, size)
        chunk = (1, *shape[1:])
        group.create_array(
            name,
            shape=shape,
            dtype="uint8",
            chunks=chunk,
            shards=(min(shard, max(count, 1)), *shape[1:]),
            compressors=codecs,
            fill_value=0,
            dimension_names=dims,
        )

    def per_item(name: str, count: int, chunk: int, dtype: Any, dim: str) -> None:
        group.create_array(
            name,
            shape=(count,),
            dtype=dtype,
            chunks=(min(chunk, max(count, 1)),),
            compressors=comp,
            fill_value="" if dtype is str else 0,
            dimension_names=(dim,),
        )

    def flags(name: str, count: int, dim: str) -> None:
        # One object per flag: different writers never touch the same object.
        group.create_array(
            name,
            shape=(count,),
            dtype="uint8",
            chunks=(1,),
            compressors=None,
            fill_value=0,
            dimension_names=(dim,),
        )

    images(IMAGE, n, shard_size, True, ("sample", "y", "x", "rgb"))
    images(MASK, n, shard_size, False, ("sample", "y", "x"))
    per_item(TARGET, n, shard_size, "int32", "sample")
    per_item(SOURCE, n, shard_size, "int32", "sample")
    per_item(AREA, n, shard_size, "int32", "sample")
    per_item(LESIONS, n, shard_size, "uint16", "sample")
    per_item(META, n, shard_size, str, "sample")
    flags(DONE, n_shards, "shard")
    for pool, count in pools.items():
        dim = pool[:-1]  # "normal", "texture"
        raw = compressors(POOL_CODEC)
        images(pool, count, POOL_SHARD_SIZE, True, (dim, "y", "x", "rgb"), raw)
        if pool == NORMALS:
            images(f"{pool}_fov", count, POOL_SHARD_SIZE, False, (dim, "y", "x"), raw)
        per_item(f"{pool}_info", count, POOL_SHARD_SIZE, str, dim)
        flags(f"{pool}_done", -(-count // POOL_SHARD_SIZE), f"{dim}_shard")
    group.update_attributes(attrs)  # one write (attrs.update writes once per key)


def clear_store(loc: StoreLocation) -> None:
    """Delete everything in the store at ``loc`` (the folder itself stays, with its lock)."""
    path = loc.local_path
    if path is not None:
        import shutil

        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        return
    fs, root = loc.fs()
    if fs.exists(root):
        for child in fs.ls(root, detail=False):
            fs.rm(child, recursive=True)


def remove_partial_files(loc: StoreLocation) -> int:
    """Delete the temporary ``*.partial`` files that zarr's local store leaves behind when a
    writer is killed mid-write (it writes to a temporary name, then renames). Local stores only;
    call with the render lock held. Returns how many were removed."""
    path = loc.local_path
    if path is None or not path.is_dir():
        return 0
    removed = 0
    for folder, _, files in os.walk(path):
        for name in files:
            if name.endswith(".partial"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def read_attrs(loc: StoreLocation) -> dict[str, Any] | None:
    """The attributes of the store at ``loc``, format checked.

    None if no Zarr group is there; ``{}`` for a group left by a store creation that was cut
    short (no attributes yet and nothing but this format's arrays). Raises :class:`StoreError`
    for any other group (not an anomalygen store, or a version this code does not read).
    """
    import zarr

    try:
        group = zarr.open_group(store=loc.zarr_store(read_only=True), mode="r")
    except Exception:  # zarr raises several types for "no group here"
        return None
    attrs = dict(group.attrs)
    if not attrs:
        names = {key.split("/")[0] for key in loc.list_keys("")} - {"zarr.json"}
        if all(name in ARRAY_NAMES or name.endswith(".partial") for name in names):
            return {}
    check_format(loc, attrs)
    return attrs


def check_format(loc: StoreLocation | str, attrs: dict[str, Any]) -> None:
    """Raise :class:`StoreError` unless ``attrs`` mark a store of a readable format version."""
    if attrs.get("format") != FORMAT_NAME:
        raise StoreError(f"{loc}: a Zarr group, but not an anomalygen store (no format attribute)")
    version = attrs.get("format_version")
    if version not in READABLE_VERSIONS:
        from anomalygen import __version__

        known = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise StoreError(
            f"{loc}: store format version {version!r} is not known to anomalygen {__version__} "
            f"(it reads version {known}); use the anomalygen version that wrote it"
        )


def parameter_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two stores' render parameters (``PARAMETER_KEYS``)."""
    out = []
    for key in PARAMETER_KEYS:
        a, b = old.get(key), new.get(key)
        if key in ("sources", "textures"):
            a, b = _file_pairs(a), _file_pairs(b)
            if a != b:
                out.append(_list_difference(key, a, b))
        elif a == b:
            continue
        elif key == "generator" and isinstance(a, dict) and isinstance(b, dict):
            out.extend(f"generator.{d}" for d in _dict_differences(a, b))
        else:
            out.append(f"{key} {json.dumps(a)} -> {json.dumps(b)}")
    return out


def _file_pairs(listing: dict | None) -> list[tuple[str, int]]:
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


# ------------------------------------------------------------------------------------------
# Writing one shard (a worker, once per shard)
# ------------------------------------------------------------------------------------------


class StoreWriter:
    """Open arrays of a store for writing whole shards. One per worker process."""

    def __init__(self, loc: StoreLocation) -> None:
        import zarr

        self.loc = loc
        self._group = zarr.open_group(store=loc.zarr_store(read_only=False), mode="r+")
        self._arrays: dict[str, Any] = {}

    def array(self, name: str) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            # Writers send whole chunks; the empty-chunk test would cost a full compare each.
            arr = self._group[name].with_config({"write_empty_chunks": True})
            self._arrays[name] = arr
        return arr

    def write_samples(
        self,
        shard: int,
        start: int,
        images: np.ndarray,
        masks: np.ndarray,
        targets: Sequence[int],
        sources: Sequence[int],
        metas: Sequence[dict],
    ) -> None:
        """Write samples ``start .. start + len(images)`` (shard ``shard``), then its flag."""
        stop = start + len(images)
        sel = slice(start, stop)
        self.array(IMAGE)[sel] = images
        self.array(MASK)[sel] = masks
        self.array(TARGET)[sel] = np.asarray(targets, dtype=np.int32)
        self.array(SOURCE)[sel] = np.asarray(sources, dtype=np.int32)
        self.array(AREA)[sel] = np.asarray([m["area"] for m in metas], dtype=np.int32)
        self.array(LESIONS)[sel] = np.asarray([len(m["lesions"]) for m in metas], dtype=np.uint16)
        self.array(META)[sel] = np.asarray([_dumps(m) for m in metas], dtype=object)
        self.array(DONE)[shard] = 1  # last: a shard without its flag is rendered again

    def write_pool(
        self,
        pool: str,
        shard: int,
        start: int,
        images: np.ndarray,
        fovs: np.ndarray | None,
        infos: Sequence[dict],
    ) -> None:
        """Write slots ``start .. start + len(infos)`` (pool shard ``shard``), then its flag."""
        sel = slice(start, start + len(infos))
        self.array(pool)[sel] = images
        if fovs is not None:
            self.array(f"{pool}_fov")[sel] = fovs
        self.array(f"{pool}_info")[sel] = np.asarray([_dumps(i) for i in infos], dtype=object)
        self.array(f"{pool}_done")[shard] = 1

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        """Only the coordinator calls this (one writer of the group's ``zarr.json``)."""
        self._group = self._group.update_attributes(attrs)  # one write, not one per key


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def open_store(url: str | os.PathLike, storage_options: dict | None = None) -> SampleStore:
    """Open a rendered store for reading: ``store[i] -> (image, mask)``.

    ``url`` is a local path or any URL zarr's fsspec store accepts (``file://``, ``memory://``,
    ``s3://`` with ``storage_options``). Raises :class:`StoreError` for a missing store, a group
    that is not an anomalygen store, or a format version this code does not know.
    """
    return SampleStore(url, storage_options)


class _Arrays:
    """The zarr group and arrays, opened in one process."""

    def __init__(self, loc: StoreLocation) -> None:
        import zarr

        try:
            self.group = zarr.open_group(store=loc.zarr_store(read_only=True), mode="r")
        except Exception as err:
            if isinstance(err, StoreError):
                raise
            if isinstance(err, FileNotFoundError) or type(err).__name__ in (
                "GroupNotFoundError",
                "NodeNotFoundError",
            ):
                raise StoreError(f"{loc}: no store there") from None
            raise access_error(loc, err, "open the store") from None
        self._cache: dict[str, Any] = {}
        self.loc = loc

    def __getitem__(self, name: str) -> Any:
        arr = self._cache.get(name)
        if arr is None:
            try:
                arr = self.group[name]
            except KeyError:
                raise StoreError(f"{self.loc}: array {name!r} is missing") from None
            self._cache[name] = arr
        return arr


class SampleStore:
    """A rendered store: ``len(store)``, ``store[i] -> (image, mask)``, ``store.normals[j]``.

    ``image`` is I_G, (H, W, 3) uint8 RGB; ``mask`` is M_G, (H, W) uint8 in {0, 1}. Reading a
    sample of a shard that is not complete raises :class:`StoreError` (it would read as zeros).

    Picklable and safe in forked or spawned DataLoader workers: only the address travels, and
    zarr is (re)opened lazily in each process (keyed on ``os.getpid()``).
    """

    def __init__(self, url: str | os.PathLike | StoreLocation, storage_options=None) -> None:
        self.loc = location(url, storage_options)
        self._pid: int | None = None
        self._arrays: _Arrays | None = None
        self._complete: set[int] = set()
        self._pool_slots: dict[str, np.ndarray] = {}
        self.attrs: dict[str, Any] = dict(self._open().group.attrs)
        check_format(self.loc, self.attrs)
        try:
            self.size: int = int(self.attrs["size"])
            self.seed: int = int(self.attrs["seed"])
            self.shard_size: int = int(self.attrs["shard_size"])
            self._n: int = int(self.attrs["n"])
        except (KeyError, TypeError, ValueError):
            raise StoreError(
                f"{self.loc}: the store's attributes are incomplete (is a render still "
                "creating it?)"
            ) from None
        self.n_shards: int = -(-self._n // self.shard_size)

    # pickling: the address only; zarr objects are per process
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _arrays=None, _complete=set())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _open(self) -> _Arrays:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = _Arrays(self.loc)
            self._pid = os.getpid()
        return self._arrays

    @property
    def url(self) -> str:
        return self.loc.url

    def __repr__(self) -> str:
        return f"SampleStore({self.loc.url!r}, n={self._n}, size={self.size})"

    # --- samples --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def _index(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"sample index must be an integer, got {type(i).__name__}")
        i = int(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"sample index {i} out of range for a store of {self._n}")
        shard = i // self.shard_size
        if shard not in self._complete:
            self._complete = set(self.complete_shards())
            if shard not in self._complete:
                raise StoreError(
                    f"{self.loc}: sample {i} is in shard {shard}, which is not rendered yet "
                    "(resume the render to complete it)"
                )
        return i

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        i = self._index(i)
        arrays = self._open()
        return arrays[IMAGE][i], arrays[MASK][i]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(self._n):
            yield self[i]

    def shard_range(self, s: int) -> range:
        """The sample indices of shard ``s``."""
        if not 0 <= s < self.n_shards:
            raise IndexError(f"shard {s} out of range (the store has {self.n_shards})")
        return range(s * self.shard_size, min((s + 1) * self.shard_size, self._n))

    def complete_shards(self) -> list[int]:
        """Indices of the shards whose data are complete (their flag is set)."""
        if self.attrs.get("completed"):
            # Set by the render once every flag is; saves reading one object per shard
            # (3,125 for 200,000 samples) in every DataLoader worker.
            return list(range(self.n_shards))
        return [int(s) for s in np.flatnonzero(self._open()[DONE][:])]

    def sample_bytes(self) -> int:
        """Bytes stored for the samples (image, mask and their metadata), pools excluded."""
        arrays = self._open()
        return int(sum(arrays[name].nbytes_stored() for name in SAMPLE_ARRAYS))

    def read_shard(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """All images and masks of shard ``s`` at once (one read per array: fast sequential)."""
        r = self.shard_range(s)
        self._index(r.start)
        arrays = self._open()
        return arrays[IMAGE][r.start : r.stop], arrays[MASK][r.start : r.stop]

    # --- metadata -------------------------------------------------------------------------
    @property
    def config(self):  # -> GeneratorConfig (imported lazily: anomalygen.generator pulls OpenCV)
        from anomalygen.config import from_dict
        from anomalygen.generator import GeneratorConfig

        return from_dict(GeneratorConfig, self.attrs["generator"])

    @property
    def source_pool(self) -> str:
        """The pool that lesion sources come from: ``normals`` or ``textures``."""
        return TEXTURES if self.attrs["generator"].get("source") == "texture" else NORMALS

    def meta(self, i: int) -> dict[str, Any]:
        """Sample ``i``'s metadata: the generator's meta plus where its images came from.

        ``{"index", "target" (index into store.normals), "source" (index into the source pool),
        "source_pool" ("normals" or "textures"), "normal", "area", "lesions": [{"target_box",
        "source_box", "ops", "area"}]}``; boxes are ``[y0, x0, y1, x1]`` in pixels.
        """
        i = self._index(i)
        arrays = self._open()
        meta = json.loads(str(arrays[META][i]))
        return {
            "index": i,
            "target": int(arrays[TARGET][i]),
            "source": int(arrays[SOURCE][i]),
            "source_pool": self.source_pool,
            **meta,
        }

    def lesion_sources(self, i: int) -> list[dict[str, Any]]:
        """For each lesion of sample ``i``: its source crop C_s before augmentation.

        A list of ``{"source_pool", "source", "source_box", "target_box", "ops", "crop"}`` with
        ``crop`` the (h, w, 3) uint8 pixels of the source image inside ``source_box`` (what the
        augmentations were applied to). For contact sheets such as ``anomalygen preview``.
        """
        from anomalygen.generator import tile_to  # OpenCV: only when a preview needs it

        meta = self.meta(i)
        if not meta["lesions"]:
            return []
        view = self.textures if meta["source_pool"] == TEXTURES else self.normals
        source = view[meta["source"]][0]
        out = []
        for lesion in meta["lesions"]:
            y0, x0, y1, x1 = lesion["source_box"]
            if meta["source_pool"] == TEXTURES:  # boxes are in the tiled texture (generator)
                crop = tile_to(source, y1, x1)[y0:y1, x0:x1]
            else:
                crop = source[y0:y1, x0:x1]
            out.append(
                {
                    "source_pool": meta["source_pool"],
                    "source": meta["source"],
                    "source_box": lesion["source_box"],
                    "target_box": lesion["target_box"],
                    "ops": lesion["ops"],
                    "crop": np.ascontiguousarray(crop),
                }
            )
        return out

    # --- pools ----------------------------------------------------------------------------
    @property
    def normals(self) -> NormalsView:
        """The prepared normal photographs: ``len()``, ``[j] -> (image, fov)``."""
        return NormalsView(self, NORMALS)

    @property
    def textures(self) -> NormalsView:
        """Texture mode only: the prepared textures, ``[j] -> (image, None)``."""
        if TEXTURES not in self.attrs.get("pools", {}):
            raise StoreError(
                f"{self.loc}: this store has no textures (not rendered in texture mode)"
            )
        return NormalsView(self, TEXTURES)

    def pool_slots(self, pool: str) -> np.ndarray:
        """Slots of ``pool`` that hold a usable image, in order (index j -> slot)."""
        slots = self._pool_slots.get(pool)
        if slots is None:
            arrays = self._open()
            count = int(self.attrs.get("pools", {}).get(pool, 0))
            done = arrays[f"{pool}_done"][:] if count else np.zeros(0, np.uint8)
            if count and not done.all():
                raise StoreError(
                    f"{self.loc}: the {pool} are not all prepared yet (resume the render)"
                )
            infos = arrays[f"{pool}_info"][:] if count else []
            usable = [k for k, text in enumerate(infos) if json.loads(str(text)).get("usable")]
            slots = np.asarray(usable, dtype=np.int64)
            self._pool_slots[pool] = slots
        return slots

    def pool_info(self, pool: str) -> list[dict[str, Any]]:
        """One record per slot of ``pool``: ``{"name", "bytes", "sha256", "usable", "reason"}``."""
        return [json.loads(str(t)) for t in self._open()[f"{pool}_info"][:]]


def store_info(url: str | os.PathLike, storage_options: dict | None = None) -> dict[str, Any]:
    """A JSON-compatible summary of the store at ``url`` (what ``anomalygen info`` prints):
    counts, shapes, codec, size on disk and per sample, completion, config, sources."""
    store = open_store(url, storage_options)
    attrs = store.attrs
    arrays = store._open()
    complete = store.complete_shards()
    samples_done = sum(len(store.shard_range(s)) for s in complete)
    on_disk = store.loc.bytes_on_disk()
    area = arrays[AREA][:]
    done_mask = np.zeros(len(store), bool)
    for s in complete:
        r = store.shard_range(s)
        done_mask[r.start : r.stop] = True
    anomalous = int(np.count_nonzero(area[done_mask] > 0))
    pools = {}
    for pool, slots in attrs.get("pools", {}).items():
        pools[pool] = {"slots": int(slots), "usable": attrs.get(f"{pool}_count")}
    image = arrays[IMAGE]
    return {
        "url": store.url,
        "format_version": attrs.get("format_version"),
        "anomalygen_version": attrs.get("anomalygen_version"),
        "created": attrs.get("created"),
        "completed": attrs.get("completed"),
        "n": len(store),
        "samples_complete": samples_done,
        "shards": store.n_shards,
        "shards_complete": len(complete),
        "shard_size": store.shard_size,
        "image_shape": list(image.shape),
        "mask_shape": list(arrays[MASK].shape),
        "size": store.size,
        "seed": store.seed,
        "codec": attrs.get("codec"),
        "clahe": attrs.get("clahe"),
        "bytes_on_disk": on_disk,
        "bytes_per_sample": store.sample_bytes() / samples_done if samples_done else None,
        "anomalous_fraction": anomalous / samples_done if samples_done else None,
        "mean_lesion_area_px": float(area[done_mask & (area > 0)].mean()) if anomalous else None,
        "pools": pools,
        "skipped": attrs.get("skipped", []),
        "sources": {
            k: v for k, v in (attrs.get("sources") or {}).items() if k in ("root", "description")
        },
        "generator": attrs.get("generator"),
    }


class NormalsView:
    """The usable images of a pool, indexed 0 .. len-1 (skipped source files are left out).

    ``view[j] -> (image (H, W, 3) uint8, fov (H, W) uint8 in {0, 1})``; textures have no FOV
    and return ``(image, None)``. The per-sample ``target`` / ``source`` indices index this view.
    """

    def __init__(self, store: SampleStore, pool: str) -> None:
        self._store = store
        self.pool = pool

    @property
    def slots(self) -> np.ndarray:
        return self._store.pool_slots(self.pool)

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, j: int) -> tuple[np.ndarray, np.ndarray | None]:
        slots = self.slots
        if isinstance(j, bool) or not isinstance(j, int | np.integer):
            raise TypeError(f"{self.pool} index must be an integer, got {type(j).__name__}")
        if not -len(slots) <= j < len(slots):
            raise IndexError(f"{self.pool} index {j} out of range for {len(slots)}")
        slot = int(slots[j])
        arrays = self._store._open()
        image = arrays[self.pool][slot]
        fov = arrays[f"{self.pool}_fov"][slot] if self.pool == NORMALS else None
        return image, fov

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for j in range(len(self)):
            yield self[j]

    def __repr__(self) -> str:
        return f"NormalsView({self.pool!r}, {len(self)} images)"

    def name(self, j: int) -> str:
        """The source file (relative name) that item ``j`` was prepared from."""
        slot = int(self.slots[j])
        return json.loads(str(self._store._open()[f"{self.pool}_info"][slot]))["name"]


class PoolCache:
    """Pool images (image, fov) read through :class:`NormalsView`, kept while they fit in
    ``max_bytes`` (the least recently used go first; the last one read is always kept).

    Render workers and ``verify`` read the same few normals many times: a normal at 768 px is
    2.4 MB, and a read costs about 5 ms.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    def get(self, view: NormalsView, j: int) -> tuple[np.ndarray, np.ndarray | None]:
        key = (view.pool, j)
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
            return entry[0]
        item = view[j]
        nbytes = sum(a.nbytes for a in item if a is not None)
        self._items[key] = (item, nbytes)
        self._bytes += nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, (_, size) = self._items.popitem(last=False)
            self._bytes -= size
        return item

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0
