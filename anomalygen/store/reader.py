"""Reading a store: :func:`open_store` returns a :class:`SampleStore`, the reading API for
training and other projects (random access by index, picklable, safe in forked or spawned
DataLoader workers); :func:`read_attrs` reads the group attributes alone."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from anomalygen.errors import StoreError
from anomalygen.store.checked import CheckedArrays, StoreArrays, repair_hint
from anomalygen.store.compact import DEFAULT_CACHE_BYTES, CompactSamples, NormalCache
from anomalygen.store.format import (
    ARRAY_NAMES,
    BOXES,
    COMPACT,
    DONE,
    IMAGE,
    MASK,
    META,
    NORMALS,
    PATCHES,
    POOL_SHARD_SIZE,
    SAMPLE_ARRAYS,
    SOURCE,
    TARGET,
    TEXTURES,
    RenderSpec,
    layout_of,
)
from anomalygen.store.location import StoreLocation, location
from anomalygen.store.patches import box_rows, row_bytes
from anomalygen.store.schema import check_attrs

if TYPE_CHECKING:  # pragma: no cover
    from anomalygen.generator import GeneratorConfig

__all__ = ["NormalsView", "SampleStore", "StoreArrays", "json_record", "open_store", "read_attrs"]


def open_store(url: str | os.PathLike, storage_options: dict | None = None) -> SampleStore:
    """Open a rendered store for reading: ``store[i] -> (image, mask)``.

    ``url`` is a local path or any URL zarr's fsspec store accepts (``file://``, ``memory://``,
    ``s3://`` with ``storage_options``). Raises :class:`StoreError` for a missing store, a group
    that is not an anomalygen store, or a format version this code does not know.
    """
    return SampleStore(url, storage_options)


class SampleStore:
    """A rendered store: ``len(store)``, ``store[i] -> (image, mask)``, ``store.normals[j]``.

    ``image`` is I_G, (H, W, 3) uint8 RGB; ``mask`` is M_G, (H, W) uint8 in {0, 1}. Reading a
    sample of a shard that is not complete raises :class:`StoreError` (it would read as zeros).

    Picklable and safe in forked or spawned DataLoader workers: only the address travels, and
    zarr is (re)opened lazily in each process (keyed on ``os.getpid()``).

    A compact store (``layout``) composes each sample from its patches and its target normal
    (``anomalygen.store.compact``); ``cache_bytes`` bounds the target photographs kept for it.
    """

    #: Memory for the target photographs a compact store's samples are composed with.
    cache_bytes: int = DEFAULT_CACHE_BYTES

    def __init__(self, url: str | os.PathLike | StoreLocation, storage_options=None) -> None:
        self.loc = location(url, storage_options)
        self._pid: int | None = None
        self._arrays: StoreArrays | None = None
        self._checked: CheckedArrays | None = None
        self._compact: CompactSamples | None = None
        self._complete: set[int] = set()
        self._pool_slots: dict[str, np.ndarray] = {}
        self.attrs: dict[str, Any] = dict(self.arrays().group.attrs)
        check_attrs(self.loc, self.attrs)  # before anything is computed from them
        self.size: int = self.attrs["size"]
        self.seed: int = self.attrs["seed"]
        self.shard_size: int = self.attrs["shard_size"]
        self._n: int = self.attrs["n"]
        self.n_shards: int = -(-self._n // self.shard_size)
        self.layout: str = layout_of(self.attrs)
        self._check_shapes()

    def _check_shapes(self) -> None:
        """The attributes must describe the arrays that are there (the attributes could be
        another store's, or edited): the sample images, the flags and the normals."""
        arrays, size = self.arrays(), self.size
        count = self.attrs["pools"][NORMALS]
        ps = self.attrs.get("pool_shard_size", POOL_SHARD_SIZE)
        k = min(self.shard_size, self._n)
        expected = {
            IMAGE: ((self._n, size, size, 3), (k, size, size, 3)),
            DONE: ((self.n_shards,), None),
            NORMALS: ((count, size, size, 3), (min(ps, max(count, 1)), size, size, 3)),
        }
        if self.layout == COMPACT:
            del expected[IMAGE]
            rows = box_rows(self.attrs["generator"]["lesions"][1])
            width = row_bytes(k, size)
            expected[PATCHES] = ((self.n_shards, width), (1, width))
            expected[BOXES] = ((self._n, rows, 4), None)
        for name, (shape, shards) in expected.items():
            arr = arrays[name]
            found = (tuple(arr.shape), tuple(arr.shards) if arr.shards else None)
            if found != (shape, shards):
                raise StoreError(
                    f"{self.loc}: the attributes (n {self._n}, size {size}, shard_size "
                    f"{self.shard_size}, {count} normals) disagree with array {name!r} (shape "
                    f"{found[0]}, shards {found[1]}): the store's zarr.json does not belong to "
                    "these arrays"
                )

    # pickling: the address only; zarr objects are per process
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _arrays=None, _checked=None, _compact=None, _complete=set())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def arrays(self) -> StoreArrays:
        """The zarr group and arrays, opened in this process (reopened after a fork)."""
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = StoreArrays(self.loc)
            self._checked = None
            self._compact = None
            self._pid = os.getpid()
        return self._arrays

    def checked(self) -> CheckedArrays:
        """Items read and checked against their digests (``anomalygen.store.checked``)."""
        arrays = self.arrays()
        if self._checked is None:
            self._checked = CheckedArrays(
                arrays,
                version=self.attrs["format_version"],
                shard_size=self.shard_size,
                pool_shard_size=self.attrs.get("pool_shard_size", POOL_SHARD_SIZE),
                compact=self.layout == COMPACT,
            )
        return self._checked

    def _samples(self) -> CompactSamples:
        """A compact store's samples, composed on read (made once per process)."""
        checked = self.checked()
        if self._compact is None or self._compact.checked is not checked:
            cache = NormalCache(self._normal_image, self.cache_bytes)
            self._compact = CompactSamples(checked, self.shard_size, cache)
        return self._compact

    def _normal_image(self, j: int) -> np.ndarray:
        """Usable normal ``j``'s image alone (checked), for composing compact samples."""
        slots = self.pool_slots(NORMALS)
        if not 0 <= j < len(slots):
            raise StoreError(f"{self.loc}: a sample's target {j} is not a usable normal")
        return self.checked().item(NORMALS, int(slots[j]), pool=NORMALS)

    def composed(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` as stored, not checked against its digests: ``(image, mask)`` read
        (full layout) or composed (compact). For checkers that report instead of raising."""
        i = self._index(i)
        if self.layout == COMPACT:
            return self._samples().sample(i, self.shard_range(i // self.shard_size))
        arrays = self.arrays()
        return arrays[IMAGE][i], arrays[MASK][i]

    def _pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` (an index checked by ``_index``), checked against its digests."""
        checked = self.checked()
        if self.layout != COMPACT:
            return checked.item(IMAGE, i), checked.item(MASK, i)
        image, mask = self._samples().sample(i, self.shard_range(i // self.shard_size))
        checked.check(IMAGE, range(i, i + 1), [image])
        checked.check(MASK, range(i, i + 1), [mask])
        return image, mask

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

    def __getitem__(
        self, i: int | slice | Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``store[i] -> (image (S, S, 3), mask (S, S))``; a slice or a sequence of indices
        (``store[10:20]``, ``store[[3, 1, 4]]``) gives them stacked, ``(k, S, S, 3), (k, S, S)``,
        in the order asked for."""
        if isinstance(i, slice | list | tuple | np.ndarray):
            return self._stacked(i)
        return self._pair(self._index(i))

    def _stacked(self, key: slice | Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``key`` (a slice or integer indices) stacked; each is checked as ``[i]`` is."""
        if isinstance(key, slice):
            picks: Any = range(*key.indices(self._n))
        else:
            picks = np.asarray(key).ravel()
            if picks.size and not np.issubdtype(picks.dtype, np.integer):
                raise TypeError(f"sample indices must be integers, got {picks.dtype}")
        rows = [self._index(int(i)) for i in picks]
        checked = self.checked()
        if self.layout == COMPACT:
            size = self.size
            pairs = [self._pair(i) for i in rows]
            images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, size, size, 3))
            masks = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, size, size))
            return images.astype(np.uint8, copy=False), masks.astype(np.uint8, copy=False)
        if isinstance(picks, range) and picks.step == 1:  # one read per array
            return checked.items(IMAGE, picks), checked.items(MASK, picks)
        chosen = np.asarray(rows, dtype=np.int64)
        return checked.picked(IMAGE, chosen), checked.picked(MASK, chosen)

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
        return [int(s) for s in np.flatnonzero(self.arrays()[DONE][:])]

    def sample_bytes(self) -> int:
        """Bytes stored for the samples (image, mask and their metadata), pools excluded."""
        sizes = self.loc.sizes()
        return sum(sizes.get(name, 0) for name in SAMPLE_ARRAYS)

    def read_shard(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """All images and masks of shard ``s`` at once (one read per array: fast sequential)."""
        r = self.shard_range(s)
        self._index(r.start)
        checked = self.checked()
        if self.layout == COMPACT:
            images, masks = self._samples().shard(r)
            checked.check(IMAGE, r, images)
            checked.check(MASK, r, masks)
            return images, masks
        return checked.items(IMAGE, r), checked.items(MASK, r)

    # --- metadata -------------------------------------------------------------------------
    @property
    def spec(self) -> RenderSpec:
        """The parameters the store was rendered with (imports the generator: OpenCV)."""
        try:
            return RenderSpec.from_attrs(self.attrs)
        except StoreError as err:
            raise StoreError(f"{self.loc}: {err}") from None

    @property
    def config(self) -> GeneratorConfig:
        """The generator configuration the samples were made with."""
        return self.spec.generator

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
        checked = self.checked()
        meta = json_record(self.loc, checked.item(META, i), f"sample {i}'s meta")
        return {
            "index": i,
            "target": int(checked.item(TARGET, i)),
            "source": int(checked.item(SOURCE, i)),
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
            arrays = self.arrays()
            count = int(self.attrs.get("pools", {}).get(pool, 0))
            done = arrays[f"{pool}_done"][:] if count else np.zeros(0, np.uint8)
            if count and not done.all():
                raise StoreError(
                    f"{self.loc}: the {pool} are not all prepared yet (resume the render)"
                )
            usable = [k for k, info in enumerate(self.pool_info(pool)) if info.get("usable")]
            slots = np.asarray(usable, dtype=np.int64)
            self._pool_slots[pool] = slots
        return slots

    def pool_info(self, pool: str) -> list[dict[str, Any]]:
        """One record per slot of ``pool``: ``{"name", "bytes", "sha256", "usable", "reason"}``."""
        count = int(self.attrs["pools"].get(pool, 0))
        infos = self.checked().items(f"{pool}_info", range(count), pool=pool) if count else []
        return [
            json_record(self.loc, text, f"{pool} slot {k}'s record") for k, text in enumerate(infos)
        ]


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
        checked = self._store.checked()
        image = checked.item(self.pool, slot, pool=self.pool)
        fov = (
            checked.item(f"{self.pool}_fov", slot, pool=self.pool) if self.pool == NORMALS else None
        )
        return image, fov

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for j in range(len(self)):
            yield self[j]

    def __repr__(self) -> str:
        return f"NormalsView({self.pool!r}, {len(self)} images)"

    def name(self, j: int) -> str:
        """The source file (relative name) that item ``j`` was prepared from."""
        slot = int(self.slots[j])
        text = self._store.checked().item(f"{self.pool}_info", slot, pool=self.pool)
        return str(json_record(self._store.loc, text, f"{self.pool} slot {slot}'s record")["name"])


def json_record(loc: StoreLocation, text: Any, what: str) -> dict[str, Any]:
    """A JSON record read from the store (``meta``, ``<pool>_info``), or one StoreError line:
    a version-2 store's records are checked against their digests already, not version 1's."""
    try:
        record = json.loads(str(text))
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise StoreError(f"{loc}: {what} is not a JSON record; {repair_hint(loc)}")
    return record


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
    check_attrs(loc, attrs)
    return attrs
