"""Finding source images: folders, list files, EyeQ-style labels CSV with --where filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomalygen.errors import ConfigError
from anomalygen.sources import find_sources, parse_where


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_is_searched_recursively_in_sorted_order(tmp_path: Path) -> None:
    for rel in ["b.png", "a.JPG", "sub/c.tif", "sub/deeper/d.jpeg", "z.webp"]:
        _touch(tmp_path / rel, b"12345")
    # Not images, or hidden: ignored.
    for rel in ["notes.txt", "labels.csv", ".hidden.png", "._a.jpg", ".git/x.png"]:
        _touch(tmp_path / rel)
    found = find_sources(tmp_path)
    assert [f.name for f in found.files] == [
        "a.JPG",
        "b.png",
        "sub/c.tif",
        "sub/deeper/d.jpeg",
        "z.webp",
    ]
    assert all(f.bytes == 5 for f in found.files)
    assert found.files[2].path == tmp_path / "sub" / "c.tif"


def test_list_file_relative_absolute_comments_and_missing(tmp_path: Path) -> None:
    _touch(tmp_path / "imgs" / "one.png")
    other = _touch(tmp_path / "elsewhere" / "two.png")
    listing = tmp_path / "imgs" / "list.txt"
    listing.write_text(f"# normals\n\none.png\n{other}\nmissing.png\none.png\n")
    found = find_sources(listing)
    names = [f.name for f in found.files]
    assert names == sorted(names)
    assert set(names) == {"one.png", "missing.png", other.as_posix()}
    missing = next(f for f in found.files if f.name == "missing.png")
    assert missing.bytes == -1  # reported as a bad file by the render, not here


def _eyeq_layout(root: Path) -> Path:
    """An EyeQ-like layout: all grades in one folder, labels in a CSV with an index column."""
    rows = [
        # image, quality (0 good / 1 usable / 2 reject), DR_grade
        ("10_left.jpeg", 0, 0),
        ("10_right.jpeg", 1, 0),
        ("13_left.jpeg", 0, 2),
        ("15_left.jpeg", 0, 0),
        ("16_right.jpeg", 2, 0),
        ("99_left.jpeg", 0, 0),  # listed but absent on disk
    ]
    folder = root / "train"
    for name, _, _ in rows[:-1]:
        # The files are PNGs after a conversion: CSV names must still match by stem.
        _touch(folder / name.replace(".jpeg", ".png"))
    _touch(folder / "17_left.png")  # on disk but not in the CSV
    csv = root / "Label_EyeQ_train.csv"
    lines = [",image,quality,DR_grade"]
    lines += [f"{k},{name},{q},{g}" for k, (name, q, g) in enumerate(rows)]
    csv.write_text("\n".join(lines) + "\n")
    return csv


def test_eyeq_csv_filters(tmp_path: Path) -> None:
    csv = _eyeq_layout(tmp_path)
    found = find_sources(tmp_path / "train", labels=csv, where=["DR_grade=0", "quality=0"])
    assert [f.name for f in found.files] == ["10_left.png", "15_left.png"]
    assert found.missing_from_labels == ("99_left.jpeg",)
    assert found.excluded == 4  # 10_right, 13_left, 16_right, 17_left

    # Same column twice: either value; numbers compare as numbers.
    found = find_sources(tmp_path / "train", labels=csv, where=["quality=0.0", "quality=1"])
    assert [f.name for f in found.files] == [
        "10_left.png",
        "10_right.png",
        "13_left.png",
        "15_left.png",
    ]
    # No filter: every CSV row that has a file.
    assert len(find_sources(tmp_path / "train", labels=csv)) == 5
    # Column names match case-insensitively, as in resynth evaluate's EyeQ reader.
    found = find_sources(
        tmp_path / "train", labels=csv, where=["dr_grade=0", "QUALITY=0"], labels_column="Image"
    )
    assert [f.name for f in found.files] == ["10_left.png", "15_left.png"]


def test_csv_names_match_with_or_without_extension(tmp_path: Path) -> None:
    _touch(tmp_path / "imgs" / "a.jpg")
    _touch(tmp_path / "imgs" / "b.png")
    _touch(tmp_path / "imgs" / "c.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("image,grade\na,0\nb.png,0\nc.jpeg,1\n")
    found = find_sources(tmp_path / "imgs", labels=csv, where=["grade=0"])
    assert [f.name for f in found.files] == ["a.jpg", "b.png"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": "LABELS", "where": ["grade=0"]}, "no column 'grade' (columns: image, quality"),
        ({"labels": "LABELS", "where": ["quality"]}, "--where: expected COLUMN=VALUE"),
        ({"where": ["quality=0"]}, "--where: filters need a labels CSV"),
        ({"labels": "nope.csv"}, "--labels: nope.csv does not exist"),
        ({"labels": "LABELS", "labels_column": "file"}, "--labels: Label_EyeQ_train.csv has no"),
    ],
)
def test_bad_filters_are_one_line_config_errors(tmp_path: Path, kwargs, message) -> None:
    csv = _eyeq_layout(tmp_path)
    if kwargs.get("labels") == "LABELS":
        kwargs["labels"] = csv
    with pytest.raises(ConfigError) as err:
        find_sources(tmp_path / "train", **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_src_and_image_file_src(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--src: .*does not exist"):
        find_sources(tmp_path / "nothing")
    image = _touch(tmp_path / "one.png")
    with pytest.raises(ConfigError, match="is an image file"):
        find_sources(image)
    binary = _touch(tmp_path / "list.bin", b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match="neither a folder nor a text file"):
        find_sources(binary)


def test_parse_where() -> None:
    assert parse_where(" DR_grade = 0 ") == ("DR_grade", "0")
    assert parse_where("name=a=b") == ("name", "a=b")
    with pytest.raises(ConfigError):
        parse_where("=0")
