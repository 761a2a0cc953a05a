"""Which classes implement a Protocol, read from the source with :mod:`ast` (nothing imported):
the contract suites (tests/test_runners.py, tests/test_lock.py) check that every implementation
has its suite, so a new runner or lock cannot skip the contract."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "anomalygen"


def implementations(protocol: type) -> set[str]:
    """``module.Class`` of every class in anomalygen that defines all the public methods of
    ``protocol`` (a typing.Protocol), the Protocol itself left out."""
    methods = {
        name
        for name, value in vars(protocol).items()
        if callable(value) and not name.startswith("_")
    }
    assert methods, f"{protocol.__name__} has no public methods"
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.parse(path.read_text(), str(path)).body:
            if not isinstance(node, ast.ClassDef):
                continue
            defined = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
            qualname = f"{module}.{node.name}"
            if methods <= defined and qualname != f"{protocol.__module__}.{protocol.__name__}":
                found.add(qualname)
    return found


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"
