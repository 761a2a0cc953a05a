"""Finding source images: a folder (searched recursively), or a text file listing image paths,
optionally filtered through a labels CSV (EyeQ-style) with ``--where COLUMN=VALUE`` filters.

The result is a :class:`SourceList`, sorted by relative name so that the order (and so the
store's ``normals`` and every sample drawn from them) does not depend on the filesystem.
Nothing is decoded here: unusable files are found, and reported, when phase 1 prepares them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from anomalygen.errors import ConfigError, one_line
from anomalygen.files import open_regular

__all__ = [
    "IMAGE_SUFFIXES",
    "LabelsTable",
    "SourceFile",
    "SourceList",
    "find_sources",
    "parse_where",
    "read_labels",
]

#: File name endings (lower case) taken as images when a folder is searched.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm"}
)
#: The CSV column holding the image name when ``labels_column`` is not given: EyeQ's
#: ``Label_EyeQ_train.csv`` calls it ``image``.
DEFAULT_LABELS_COLUMN = "image"


@dataclass(frozen=True)
class SourceFile:
    """One candidate source image."""

    path: Path  # where to read it
    name: str  # relative name (POSIX separators): what stores and reports show
    bytes: int  # file size (-1 where the file is missing or unreadable)


@dataclass(frozen=True)
class SourceList:
    """The candidate source images, sorted by name, and what was left out while finding them."""

    root: str  # the --src argument, resolved
    files: tuple[SourceFile, ...]
    # Names the labels CSV selected for which no file exists (a note, not an error).
    missing_from_labels: tuple[str, ...] = ()
    # Files that the CSV filters excluded.
    excluded: int = 0
    description: str = field(default="")

    def __len__(self) -> int:
        return len(self.files)


def parse_where(expr: str) -> tuple[str, str]:
    """``"COL=VALUE"`` -> ``("COL", "VALUE")``; raises :class:`ConfigError` otherwise."""
    col, sep, value = expr.partition("=")
    if not sep or not col.strip():
        raise ConfigError(f"--where: expected COLUMN=VALUE, got {expr!r}")
    return col.strip(), value.strip()


def find_sources(
    src: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    where: Sequence[str] = (),
    labels_column: str | None = None,
) -> SourceList:
    """The source images at ``src``: a folder (recursive; hidden files and folders ignored) or a
    text file with one path per line (relative paths are relative to the list file's folder;
    blank lines and ``#`` comments ignored).

    With ``labels`` (a CSV file), only files named in its ``labels_column`` (default ``image``)
    are kept, and each ``where`` filter ``COL=VALUE`` keeps rows whose ``COL`` equals ``VALUE``
    (numbers compare as numbers, so ``0`` matches ``0.0``). Filters on the same column are ORed,
    filters on different columns ANDed: ``--where DR_grade=0 --where quality=0``. CSV names match
    files with or without their extension, by relative name or by file name.

    Raises :class:`ConfigError` with a one-line message for a missing ``src``, a bad CSV or filter.
    """
    if where and labels is None:
        raise ConfigError("--where: filters need a labels CSV (--labels FILE)")
    root = Path(src).expanduser()
    if not root.exists():
        raise ConfigError(f"--src: {src} does not exist")
    if root.is_dir():
        files = _walk(root)
        description = f"folder {root}"
    elif root.suffix.lower() in IMAGE_SUFFIXES:
        raise ConfigError(
            f"--src: {src} is an image file; give a folder of images or a text file listing them"
        )
    else:
        files = _read_list(root)
        description = f"list {root}"

    excluded = 0
    missing: tuple[str, ...] = ()
    if labels is not None:
        selected = _labels_names(Path(labels).expanduser(), where, labels_column)
        keys = {k for name in selected for k in (name, _stem(name))}
        kept = [f for f in files if _file_keys(f.name) & keys]
        excluded = len(files) - len(kept)
        found = set().union(*(_file_keys(f.name) for f in kept))
        missing = tuple(sorted(n for n in selected if not {n, _stem(n)} & found))
        files = kept
        description += f" filtered by {Path(labels).name}"
        if where:
            description += " where " + " and ".join(where)
    files.sort(key=lambda f: f.name)
    return SourceList(
        root=str(root.resolve()),
        files=tuple(files),
        missing_from_labels=missing,
        excluded=excluded,
        description=description,
    )


def _walk(root: Path) -> list[SourceFile]:
    out = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .git, .ipynb_checkpoints
        for name in names:
            # "._x.jpg" (macOS metadata) and other hidden files are not photographs.
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            out.append(SourceFile(path=path, name=rel, bytes=_size(path)))
    return out


def _read_list(list_file: Path) -> list[SourceFile]:
    try:
        with open_regular(list_file) as fh:  # a FIFO would block: never opened
            text = fh.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(
            f"--src: {list_file} is neither a folder nor a text file listing image paths"
        ) from None
    except OSError as err:
        raise ConfigError(f"--src: cannot read {list_file} ({err.strerror or err})") from None
    base = list_file.parent
    seen: dict[str, SourceFile] = {}
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = base / path
        try:
            name = path.relative_to(base).as_posix()
        except ValueError:
            name = path.as_posix()
        seen.setdefault(name, SourceFile(path=path, name=name, bytes=_size(path)))
    return list(seen.values())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1  # phase 1 reports it as a bad file, with the reason


def _stem(name: str) -> str:
    p = PurePosixPath(name)
    return str(p.with_suffix("")) if p.suffix.lower() in IMAGE_SUFFIXES else name


def _file_keys(rel: str) -> set[str]:
    """The names a CSV may use for the file at relative name ``rel``."""
    base = PurePosixPath(rel).name
    return {rel, _stem(rel), base, _stem(base)}


@dataclass(frozen=True)
class LabelsTable:
    """A labels CSV (EyeQ's ``Label_EyeQ_*.csv``, IDRiD's grading CSVs...): its header and rows
    with surrounding spaces stripped. Column names match case-insensitively everywhere."""

    path: Path
    header: tuple[str, ...]
    rows: tuple[tuple[int, dict[str, str]], ...]  # (line number, {column: cell})

    def column(self, name: str, what: str = "--labels") -> str:
        """The header's spelling of column ``name``; ConfigError (prefixed ``what``) if absent."""
        for col in self.header:
            if col.lower() == name.strip().lower():
                return col
        shown = ", ".join(h for h in self.header if h) or "none"
        raise ConfigError(f"{what}: {self.path.name} has no column {name!r} (columns: {shown})")


def read_labels(path: str | os.PathLike, what: str = "--labels") -> LabelsTable:
    """Read a labels CSV; ConfigError (prefixed ``what``) if it is missing or unreadable.
    Blank rows are skipped; an unnamed first column (a pandas index) is kept as ``""``."""
    path = Path(path).expanduser()
    try:
        with io.TextIOWrapper(open_regular(path), encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = tuple(h.strip() for h in next(reader, []))
            rows = []
            for cells in reader:
                if any(c.strip() for c in cells):
                    row = {
                        h: (cells[k].strip() if k < len(cells) else "")
                        for k, h in enumerate(header)
                    }
                    rows.append((reader.line_num, row))
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{what}: cannot read {path} as CSV ({one_line(err)})") from None
    return LabelsTable(path, header, tuple(rows))


def _labels_names(path: Path, where: Sequence[str], column: str | None) -> set[str]:
    """The image names of the rows of the CSV at ``path`` that pass the ``where`` filters."""
    table = read_labels(path)
    name_col = table.column(column or DEFAULT_LABELS_COLUMN)
    filters: dict[str, list[str]] = {}
    for expr in where:
        col, value = parse_where(expr)
        filters.setdefault(table.column(col, "--where"), []).append(value)
    names: set[str] = set()
    for _, row in table.rows:
        if all(any(_equal(row[c], v) for v in values) for c, values in filters.items()):
            name = row[name_col].replace("\\", "/")
            if name:
                names.add(name)
    return names


def _equal(cell: str, value: str) -> bool:
    if cell == value:
        return True
    try:
        return float(cell) == float(value)
    except ValueError:
        return False
