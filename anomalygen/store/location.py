"""Where a store lives: a local path or URL, and the few operations on its objects.

:class:`StoreLocation` turns an address into a zarr ``Store`` (``LocalStore`` for paths, whose
writes go to a temporary name and are renamed; ``FsspecStore`` for any other URL). Listing,
reading, deleting and sizes go through zarr's Store API, so they work the same on a disk, in
memory and in an object store.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from anomalygen.errors import StoreError, one_line

__all__ = ["StoreLocation", "location"]

#: Size requests in flight at once (an object store answers each with a round trip).
SIZE_REQUESTS = 16


@dataclass(frozen=True)
class StoreLocation:
    """A store's address: a local path (plain or ``file://``) or any fsspec URL zarr accepts,
    with the fsspec ``storage_options`` for it."""

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

    def resolved(self) -> StoreLocation:
        """The same store with an absolute path (for workers that start in another folder)."""
        path = self.local_path
        return self if path is None else replace(self, url=str(path.resolve()))

    def beside(self, suffix: str) -> tuple[StoreLocation, str]:
        """``(the folder holding this store, key)`` of an object named as the store plus
        ``suffix``, next to it (``synth.zarr.lock`` beside ``synth.zarr``)."""
        path = self.local_path
        if path is not None:
            return replace(self, url=str(path.parent)), path.name + suffix
        scheme, _, rest = self.url.rstrip("/").partition("://")
        parent, sep, name = rest.rpartition("/")
        if not sep or not parent:
            raise StoreError(f"{self}: a store needs a folder above it (give a path in a bucket)")
        return replace(self, url=f"{scheme}://{parent}"), name + suffix

    def zarr_store(self, *, read_only: bool) -> Any:
        """A zarr ``Store`` for this address."""
        from zarr.storage import FsspecStore, LocalStore

        path = self.local_path
        if path is not None:
            return LocalStore(path, read_only=read_only)
        try:
            return FsspecStore.from_url(
                self.url, storage_options=self.storage_options, read_only=read_only
            )
        except (ImportError, ValueError) as err:  # e.g. s3:// without s3fs installed
            raise StoreError(f"{self.url}: cannot open this URL ({one_line(err)})") from None

    # --- objects, through zarr's Store API -----------------------------------------------
    def list_keys(self, prefix: str = "") -> set[str]:
        """Keys (``/``-separated, relative to the store) of the objects under ``prefix``."""
        return set(_run(_keys(self.zarr_store(read_only=True), prefix)))

    def is_empty(self) -> bool:
        """True if nothing, or an empty folder, is at this address."""
        return not _run(_children(self.zarr_store(read_only=True)))

    def read(self, key: str) -> bytes | None:
        """The object ``key``, or None if there is none. Other errors (access refused, no
        credentials) are raised as the storage reports them."""
        return _run(_read(self.zarr_store(read_only=True), key))

    def exists(self, key: str) -> bool:
        """Whether object ``key`` is there."""
        return bool(_run(_exists(self.zarr_store(read_only=True), key)))

    def write(self, key: str, data: bytes) -> None:
        """Write (or replace) object ``key`` whole."""
        _run(_write(self.zarr_store(read_only=False), key, data))

    def delete(self, key: str) -> None:
        """Delete object ``key`` (nothing if it is not there)."""
        _run(self.zarr_store(read_only=False).delete(key))

    def clear(self) -> None:
        """Delete everything in the store; the folder itself stays (a render's lock is held on
        it), unlike zarr's ``LocalStore.clear``."""
        _run(_clear(self.zarr_store(read_only=False)))

    def sizes(self) -> dict[str, int]:
        """Bytes stored under each top-level name (each array, ``zarr.json``), in one listing.
        Objects that vanish meanwhile (a temporary file renamed) are left out."""
        return _run(_sizes(self.zarr_store(read_only=True)))

    def bytes_on_disk(self) -> int:
        """Total size of the store's objects."""
        return sum(self.sizes().values())

    # --- links (local stores) --------------------------------------------------------------
    def escaping_link(self) -> tuple[str, str] | None:
        """For a local store: the first link inside its folder whose target lies outside it,
        as ``(key, target)``; None if there is none (and for URLs, which have no links)."""
        root = self.local_path
        if root is None or not root.is_dir():
            return None
        real_root = root.resolve()
        for folder, dirs, files in os.walk(root):  # links to folders are listed, not entered
            for name in sorted(dirs) + sorted(files):
                path = Path(folder) / name
                if path.is_symlink() and not _inside(path.resolve(), real_root):
                    return path.relative_to(root).as_posix(), os.readlink(path)
        return None

    def check_writable_key(self, key: str) -> None:
        """Raise :class:`StoreError` if writing object ``key`` of a local store would go
        through a link to somewhere outside the store's folder (nothing to check for URLs)."""
        root = self.local_path
        if root is None:
            return
        real_root = root.resolve()
        path = root / key
        # The folders the object goes into, and the object itself if it is a link.
        target = path.resolve() if path.is_symlink() else path.parent.resolve() / path.name
        if not _inside(target, real_root):
            raise StoreError(
                f"{self}: {key} would be written at {target}, outside the store, through a "
                "link; remove the link (a render never writes outside its store)"
            )


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def location(url: str | os.PathLike | StoreLocation, storage_options=None) -> StoreLocation:
    """``url`` as a :class:`StoreLocation` (returned as it is if it is one already)."""
    if isinstance(url, StoreLocation):
        return url
    return StoreLocation(os.fspath(url), storage_options)


def _run(coro: Any) -> Any:
    """Run a coroutine on zarr's event loop (where zarr runs its own store calls)."""
    from zarr.core.sync import sync

    return sync(coro)


async def _keys(store: Any, prefix: str) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return [key async for key in store.list_prefix(prefix)]
    return []


async def _children(store: Any) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return [name async for name in store.list_dir("")]
    return []


async def _read(store: Any, key: str) -> bytes | None:
    from zarr.core.buffer import default_buffer_prototype

    try:
        value = await store.get(key, prototype=default_buffer_prototype())
    except FileNotFoundError:  # a local store's folder is missing
        return None
    return None if value is None else value.to_bytes()


async def _exists(store: Any, key: str) -> bool:
    try:
        return await store.exists(key)
    except FileNotFoundError:  # a local store's folder is missing
        return False


async def _write(store: Any, key: str, data: bytes) -> None:
    from zarr.core.buffer import default_buffer_prototype

    await store.set(key, default_buffer_prototype().buffer.from_bytes(data))


async def _clear(store: Any) -> None:
    files = {key for key in await _keys(store, "") if "/" not in key}
    for name in await _children(store):
        if name in files:
            await store.delete(name)
        else:
            await store.delete_dir(name)


async def _sizes(store: Any) -> dict[str, int]:
    import asyncio

    limit = asyncio.Semaphore(SIZE_REQUESTS)

    async def size(key: str) -> int:
        async with limit:
            try:
                return await store.getsize(key)
            except FileNotFoundError:
                return 0

    keys = await _keys(store, "")
    sizes: dict[str, int] = {}
    for key, nbytes in zip(keys, await asyncio.gather(*map(size, keys)), strict=True):
        top = key.split("/", 1)[0]
        sizes[top] = sizes.get(top, 0) + nbytes
    return sizes
