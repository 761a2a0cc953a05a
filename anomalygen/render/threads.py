"""Thread limits in a render worker: W workers use W cores.

OpenCV runs its own thread pool, and zarr encodes chunks with ``asyncio.to_thread`` on its
event loop, whose default executor has min(32, CPUs + 4) threads (zarr 3.1 ignores its
``threading.max_workers`` setting there); zstd releases the GIL, so one worker would otherwise
compress on several cores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["limit_opencv_threads", "limit_zarr_threads"]


def limit_opencv_threads(n: int) -> Callable[[], None]:
    """Run OpenCV on ``n`` threads in this process; returns a function that restores it."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    return lambda: cv2.setNumThreads(before)


def limit_zarr_threads(n: int) -> Callable[[], None]:
    """Run zarr's codecs (zstd, blosc, crc32c) on at most ``n`` threads in this process.
    Returns a function that gives zarr's loop an executor of the default size back."""
    from zarr.core.sync import sync

    loop = sync(_running_loop())  # zarr's own event loop, found from inside it
    limited = ThreadPoolExecutor(max_workers=n, thread_name_prefix="anomalygen_zarr")
    loop.set_default_executor(limited)

    def restore() -> None:
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="zarr_pool"))
        limited.shutdown(wait=False)

    return restore


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()
