"""The render lock: one contract that every :class:`~anomalygen.render.lock.Lock` passes (as
zarr's stores pass its ``StoreTests``), then what only the object lock does (heartbeats, stale
locks taken over, a lock lost to another render noticed)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from anomalygen.errors import StoreError
from anomalygen.render.lock import FileLock, Lock, ObjectLock, lock_for
from anomalygen.store.location import StoreLocation, location
from tests.contracts import implementations, qualname


class LockContract:
    """What the coordinator relies on. Subclasses name the ``implementation`` they test and give
    ``make_lock``: a factory of locks on one store (each call a new lock object, as a second
    render would make)."""

    implementation: type

    @pytest.fixture()
    def make_lock(self, tmp_path: Path) -> Callable[[], Lock]:
        raise NotImplementedError

    def test_a_second_render_is_refused_while_the_first_holds_it(self, make_lock) -> None:
        first, second = make_lock(), make_lock()
        first.acquire()
        try:
            with pytest.raises(StoreError, match="another render") as err:
                second.acquire()
            assert "\n" not in str(err.value)
            first.check()  # still held
        finally:
            first.release()

    def test_released_it_can_be_taken_again(self, make_lock) -> None:
        first = make_lock()
        first.acquire()
        first.release()
        second = make_lock()
        second.acquire()
        second.check()
        second.release()
        first.acquire()  # the same object, again
        first.release()

    def test_release_is_idempotent(self, make_lock) -> None:
        lock = make_lock()
        lock.release()  # never acquired
        lock.acquire()
        lock.release()
        lock.release()

    def test_check_passes_while_held(self, make_lock) -> None:
        lock = make_lock()
        lock.acquire()
        try:
            for _ in range(3):
                lock.check()
        finally:
            lock.release()


class TestFileLock(LockContract):
    implementation = FileLock

    @pytest.fixture()
    def make_lock(self, tmp_path: Path) -> Callable[[], Lock]:
        path = tmp_path / "s.zarr"
        return lambda: FileLock(location(path), path)

    def test_a_file_in_the_way_is_refused(self, tmp_path: Path) -> None:
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        with pytest.raises(StoreError, match="exists and is not a folder"):
            FileLock(location(blocker), blocker).acquire()


class TestObjectLockInMemory(LockContract):
    implementation = ObjectLock

    @pytest.fixture()
    def make_lock(self) -> Callable[[], Lock]:
        loc = location(f"memory://anomalygen-lock-test/{uuid.uuid4().hex}/s.zarr")
        return lambda: ObjectLock(loc, heartbeat=0.05)


class TestObjectLockOnAFolder(LockContract):
    """An object lock works on any storage the Store API reaches, a shared folder too."""

    implementation = ObjectLock

    @pytest.fixture()
    def make_lock(self, tmp_path: Path) -> Callable[[], Lock]:
        return lambda: ObjectLock(location(tmp_path / "s.zarr"), heartbeat=0.05)


def test_every_lock_passes_the_contract() -> None:
    """Each class in anomalygen with a Lock's methods has a LockContract suite here."""
    tested = {qualname(suite.implementation) for suite in LockContract.__subclasses__()}
    found = implementations(Lock)
    assert {qualname(FileLock), qualname(ObjectLock)} <= found
    assert found == tested, f"locks without a contract suite: {sorted(found - tested)}"


def test_lock_for_picks_by_address(tmp_path: Path) -> None:
    assert isinstance(lock_for(location(tmp_path / "s.zarr")), FileLock)
    assert isinstance(lock_for(location("memory://x/s.zarr")), ObjectLock)


def _plant(loc: StoreLocation, owner: str, age: float) -> None:
    folder, key = loc.beside(".lock")
    folder.write(key, json.dumps({"owner": owner, "heartbeat": time.time() - age}).encode())


def test_a_stale_object_lock_is_taken_over_and_removed_after() -> None:
    loc = location(f"memory://anomalygen-lock-test/{uuid.uuid4().hex}/s.zarr")
    _plant(loc, "host:123:abc", age=1.0)
    with pytest.raises(StoreError, match=r"another render \(host:123:abc\) is writing"):
        ObjectLock(loc).acquire()
    _plant(loc, "host:123:abc", age=3600.0)
    lock = ObjectLock(loc)
    lock.acquire()
    assert lock.holder()["owner"] == lock.owner
    lock.release()
    assert lock.holder() is None


def test_an_object_lock_taken_over_is_noticed() -> None:
    """A render that stalled past the stale limit and lost its lock stops instead of writing
    beside the render that took over; the new owner's lock is left alone."""
    loc = location(f"memory://anomalygen-lock-test/{uuid.uuid4().hex}/taken.zarr")
    lock = ObjectLock(loc, heartbeat=0.02)
    lock.acquire()
    try:
        lock.check()
        _plant(loc, "elsewhere:1:x", age=0.0)
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                lock.check()
            except StoreError:
                break
            time.sleep(0.02)
        with pytest.raises(StoreError, match=r"another render \(elsewhere:1:x\) took over"):
            lock.check()
        assert lock.holder()["owner"] == "elsewhere:1:x"  # no heartbeat written over it
    finally:
        lock.release()
    assert lock.holder()["owner"] == "elsewhere:1:x"
