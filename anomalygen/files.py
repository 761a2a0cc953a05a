"""Opening files a user names (photographs, list files, labels CSVs): regular files only.

A FIFO, a socket or a device node given where a photograph is expected must never be opened for
reading: opening a FIFO blocks until some other process writes to it (forever, for a render),
and reading a device has its own effects. :func:`open_regular` checks what the path is before
opening it, opens it without blocking, and checks the opened descriptor again (the path may be
swapped in between), so that only a regular file is ever read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from anomalygen.errors import one_line

__all__ = ["NotRegularFile", "file_kind", "open_regular", "regular_file_problem", "sha256_file"]

#: Bytes read at a time when hashing (1 MiB: large reads, bounded memory).
HASH_BLOCK = 1 << 20


class NotRegularFile(OSError):
    """The path exists but is not a regular file (a FIFO, socket, device or folder)."""


def file_kind(mode: int) -> str:
    """What ``st_mode`` describes, in words: ``"a FIFO"``, ``"a socket"``, ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """None if ``path`` is a regular file (links followed); else why not, in words
    (``"is a FIFO (named pipe), not a regular file"``). Nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as err:
        return f"cannot read ({one_line(err)})"
    if stat.S_ISREG(mode):
        return None
    return f"is {file_kind(mode)}, not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for reading in binary mode if it is a regular file.

    Raises :class:`NotRegularFile` (an ``OSError`` whose ``strerror`` says what the path is)
    for anything else, without reading from it; ``FileNotFoundError`` and the other
    ``OSError`` s as ``open`` would.
    """
    problem = regular_file_problem(path)
    if problem is not None and problem != "file not found" and not problem.startswith("cannot"):
        raise NotRegularFile(0, problem, str(path))
    # O_NONBLOCK: should the path have become a FIFO since the check, open returns at once
    # instead of waiting for a writer; fstat then refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(0, f"is {file_kind(mode)}, not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a regular file's content (:func:`open_regular`)."""
    digest = hashlib.sha256()
    with open_regular(Path(path)) as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
