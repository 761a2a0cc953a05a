"""What a folder holds, for byte-for-byte comparisons of stores in tests."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: its path relative to it (POSIX) and its sha256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
