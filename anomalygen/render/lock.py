"""One render per store: the :class:`Lock` contract, a file lock and an object lock.

Local stores use an exclusive ``flock`` on the store's folder, which the kernel releases when
the process exits for any reason (kill -9 included), so a crashed render never blocks its
resume. Other URLs use a lock object ``<url>.lock`` beside the store, naming its owner and
refreshed by a heartbeat; one whose heartbeat is older than ``LOCK_STALE_AFTER`` is taken over.
The lock is held by the coordinating process (the command), never by workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from anomalygen.errors import StoreError, one_line
from anomalygen.store.location import StoreLocation

__all__ = [
    "LOCK_HEARTBEAT",
    "LOCK_STALE_AFTER",
    "FileLock",
    "Lock",
    "ObjectLock",
    "lock_for",
    "lock_holder",
]

#: An object lock whose heartbeat is older than this is taken over (seconds). Our choice: eight
#: missed heartbeats, so a render is never taken over for a slow object store alone, while a
#: crashed one blocks its resume for two minutes at most.
LOCK_STALE_AFTER = 120.0
LOCK_HEARTBEAT = 15.0


class Lock(Protocol):
    """Keeps a second render out of a store while one writes it."""

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StoreError` saying who holds it."""
        ...

    def check(self) -> None:
        """Raise :class:`StoreError` if the lock was lost since :meth:`acquire`."""
        ...

    def release(self) -> None:
        """Give the lock up (nothing if it is not held)."""
        ...


def lock_for(loc: StoreLocation) -> Lock:
    """A :class:`FileLock` for a local store, an :class:`ObjectLock` for any other URL."""
    path = loc.local_path
    return FileLock(loc, path) if path is not None else ObjectLock(loc)


class FileLock:
    """An exclusive ``flock`` on the store's folder (created if missing)."""

    def __init__(self, loc: StoreLocation, path: Path) -> None:
        self.loc = loc
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        try:
            if self.path.exists() and not self.path.is_dir():
                raise StoreError(f"{self.loc}: exists and is not a folder; choose another --out")
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as err:
            raise StoreError(f"{self.loc}: cannot create the store ({one_line(err)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"{self.loc}: another render is writing this store; wait for it to finish "
                "(or stop it) and run again"
            ) from None
        self._fd = fd

    def check(self) -> None:
        """The kernel holds a flock until release: it cannot be lost."""

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class ObjectLock:
    """A lock object ``<url>.lock`` naming its owner, refreshed every ``heartbeat`` seconds by
    a thread; one older than ``stale_after`` seconds is taken over. Works wherever the store's
    folder takes objects (object stores, ``memory://``, a shared filesystem)."""

    def __init__(
        self,
        loc: StoreLocation,
        *,
        heartbeat: float = LOCK_HEARTBEAT,
        stale_after: float = LOCK_STALE_AFTER,
    ) -> None:
        self.loc = loc
        self.url = loc.url.rstrip("/") + ".lock"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self._folder, self._key = loc.beside(".lock")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost_to: str | None = None  # set by the heartbeat when another render took over

    def holder(self) -> dict[str, Any] | None:
        """The lock object's content (``{"owner", "heartbeat"}``), None if there is none."""
        try:
            data = self._folder.read(self._key)
        except OSError:
            return {"owner": "unknown", "heartbeat": 0.0}
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return {"owner": "unknown", "heartbeat": 0.0}

    def _write(self) -> None:
        body = {"owner": self.owner, "heartbeat": time.time()}
        self._folder.write(self._key, json.dumps(body).encode())

    def acquire(self) -> None:
        held = self.holder()
        if held is not None and held.get("owner") != self.owner:
            age = time.time() - float(held.get("heartbeat", 0.0))
            if age < self.stale_after:
                raise StoreError(
                    f"{self.loc}: another render ({held.get('owner')}) is writing this store "
                    f"(lock {self.url}, heartbeat {age:.0f}s ago); wait for it to finish"
                )
        try:
            self._write()
        except OSError as err:
            raise StoreError(
                f"{self.loc}: cannot write the lock {self.url} ({one_line(err)})"
            ) from None
        time.sleep(0.05)  # two renders starting together: the last writer wins, the other sees it
        held = self.holder()
        if held is None or held.get("owner") != self.owner:
            raise StoreError(
                f"{self.loc}: another render took the lock {self.url} at the same time"
            )
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="anomalygen-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with contextlib.suppress(Exception):
                held = self.holder()
                if held is not None and held.get("owner") != self.owner:
                    # This render stalled past stale_after and another took over: writing
                    # the heartbeat now would hand the store to two writers.
                    self._lost_to = str(held.get("owner"))
                    return
                self._write()

    def check(self) -> None:
        if self._lost_to is not None:
            raise StoreError(
                f"{self.loc}: another render ({self._lost_to}) took over the lock {self.url} "
                f"after this one stalled for over {self.stale_after:.0f} s; stopping here "
                "(completed shards are kept)"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with contextlib.suppress(Exception):
            held = self.holder()
            if held is not None and held.get("owner") == self.owner:
                self._folder.delete(self._key)


def lock_holder(loc: StoreLocation) -> str | None:
    """Who holds the render lock of ``loc`` now, in words, or None if no render does.

    A local store's ``flock`` is probed with a shared lock, taken and released at once (a
    render that starts in that instant is refused and can simply be run again); an object
    lock is held while its heartbeat is fresher than ``LOCK_STALE_AFTER``.
    """
    path = loc.local_path
    if path is None:
        held = ObjectLock(loc).holder()
        if held is None or time.time() - float(held.get("heartbeat", 0.0)) >= LOCK_STALE_AFTER:
            return None
        return f"render {held.get('owner')}"
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no folder: nobody renders there
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return "a render on this machine"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
