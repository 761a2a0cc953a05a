"""Evaluation datasets: IDRiD, EyeQ and a generic folder layout (paper 4.1), numpy only.

Each adapter lists a dataset as an :class:`EvalSet` of :class:`EvalItem` records (nothing is
decoded); :func:`load_item` then reads one: the photograph prepared exactly as for training
(:func:`anomalygen.fundus.prepare_fundus`: FOV square crop, resize, CLAHE) and, where the dataset
has pixel labels, its lesion mask sent through the same crop and resize (nearest neighbour) and
cut to the field of view (FOV).

- :func:`idrid_items`: IDRiD's official layout. The segmentation images are abnormal; the anomaly
  mask is the union of the lesion masks present (MA, HE, EX, SE; the optic disc is not a lesion).
  Normal test images come from a folder the user names (their masks are empty).
- :func:`eyeq_items`: EyeQ, an image folder and ``Label_EyeQ_test.csv``; good quality only by
  default; DR grade 0 is normal, 1 to 4 abnormal. No pixel labels.
- :func:`folder_items`: ``normal/``, ``abnormal/`` and optional ``masks/`` (matched by stem).

Problems a user should hear about but that do not stop an evaluation (a CSV row whose file is
missing, an abnormal image without a mask) are collected in :attr:`EvalSet.problems`; an unusable
layout raises :class:`~anomalygen.errors.AnomalygenError`, an unreadable image or mask
:class:`~anomalygen.errors.ImageError` from :func:`load_item`.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomalygen.errors import AnomalygenError, ConfigError, ImageError
from anomalygen.fundus import MAX_PIXELS, PreparedFundus, apply_square, prepare_fundus, read_image
from anomalygen.sources import IMAGE_SUFFIXES, read_labels

__all__ = [
    "EYEQ_LABELS_CSV",
    "IDRID_LESIONS",
    "OTHER_LESION",
    "EvalItem",
    "EvalSet",
    "eyeq_items",
    "folder_items",
    "idrid_items",
    "lesion_type",
    "load_item",
    "load_item_by_type",
    "open_eval_set",
    "read_mask",
]

#: IDRiD's lesion ground truths: (folder, file suffix). ``5. Optic Disc`` (``_OD``) is anatomy.
IDRID_LESIONS = (
    ("1. Microaneurysms", "MA"),
    ("2. Haemorrhages", "HE"),
    ("3. Hard Exudates", "EX"),
    ("4. Soft Exudates", "SE"),
)
IDRID_SEGMENTATION = "A. Segmentation"
IDRID_IMAGES = "1. Original Images"
IDRID_GROUNDTRUTHS = "2. All Segmentation Groundtruths"
#: split name -> IDRiD's split folders. The paper's 81 abnormal test images are both splits.
IDRID_SPLITS = {
    "train": ("a. Training Set",),
    "test": ("b. Testing Set",),
    "all": ("a. Training Set", "b. Testing Set"),
}
#: The paper's Table 2 scores all 81 abnormal segmentation images: both IDRiD splits.
IDRID_DEFAULT_SPLIT = "all"
#: EyeQ's test labels (columns ``image``, ``quality`` 0 good / 1 usable / 2 reject, ``DR_grade``).
EYEQ_LABELS_CSV = "Label_EyeQ_test.csv"
EYEQ_QUALITY = {0: "good", 1: "usable", 2: "reject"}


@dataclass(frozen=True)
class EvalItem:
    """One evaluation image (nothing read yet)."""

    name: str  # unique within its set: the file name, with a "normal/"-style prefix where needed
    path: Path
    label: int  # 0 normal, 1 abnormal
    grade: int | None = None  # DR grade 0..4 (EyeQ), else None
    mask_paths: tuple[Path, ...] = ()  # lesion masks whose union is the anomaly mask
    segmented: bool = False  # pixel labels exist: the mask is that union (empty union = all 0)


@dataclass(frozen=True)
class EvalSet:
    """A dataset's evaluation images, sorted by name, and what was left out on the way."""

    kind: str  # "idrid", "eyeq" or "folder"
    root: Path
    items: tuple[EvalItem, ...]
    problems: tuple[str, ...] = ()  # one line each: missing files, masks without images, ...
    description: str = ""  # one line for a report, e.g. "EyeQ ...: 8470 rows, 5000 kept"

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[EvalItem]:
        return iter(self.items)

    def __getitem__(self, index: int) -> EvalItem:
        return self.items[index]

    @property
    def n_normal(self) -> int:
        return sum(item.label == 0 for item in self.items)

    @property
    def n_abnormal(self) -> int:
        return sum(item.label == 1 for item in self.items)

    @property
    def lesion_types(self) -> tuple[str, ...]:
        """The lesion types of the set's masks (:func:`lesion_type`), IDRiD's first, in order."""
        found = {lesion_type(p) for item in self.items for p in item.mask_paths}
        order = [code for _, code in IDRID_LESIONS] + [OTHER_LESION]
        return tuple(t for t in order if t in found)

    @property
    def has_pixel_labels(self) -> bool:
        """Whether any item has a ground-truth mask (pixel metrics can be computed)."""
        return any(item.segmented for item in self.items)


# ---------------------------------------------------------------------------------------------
# Loading one item


def load_item(
    item: EvalItem, size: int = 768, clahe: bool = True
) -> tuple[PreparedFundus, np.ndarray | None]:
    """The prepared photograph and its anomaly mask, or ``None`` where the item has no mask.

    The photograph is prepared as in training (:func:`~anomalygen.fundus.prepare_fundus`, paper
    4.1); the mask (uint8 (size, size) in {0, 1}) is the union of the item's lesion masks, sent
    through the photograph's crop and resize with nearest neighbour and cut to its FOV. Raises
    :class:`ImageError` naming the file for an unreadable photograph or mask, a mask whose size
    differs from the photograph's, or a photograph without a field of view.
    """
    prepared, by_type = load_item_by_type(item, size, clahe)
    if by_type is None:
        return prepared, None
    union = np.zeros(prepared.fov.shape, dtype=np.uint8)
    for mask in by_type.values():
        union |= mask
    return prepared, union


def load_item_by_type(
    item: EvalItem, size: int = 768, clahe: bool = True
) -> tuple[PreparedFundus, dict[str, np.ndarray] | None]:
    """As :func:`load_item`, with one mask per lesion type instead of their union: ``{type:
    (size, size) uint8 mask}`` keyed by :func:`lesion_type` (IDRiD's MA, HE, EX, SE, in that
    order; :data:`OTHER_LESION` for masks of other layouts), ``{}`` for an item with pixel labels
    but no mask file (all normal), ``None`` for an item without pixel labels. Nearest-neighbour
    resizing picks the same source pixel for every mask, so the union of these masks is exactly
    :func:`load_item`'s mask."""
    rgb = read_image(item.path)
    prepared = prepare_fundus(rgb, size, clahe, name=str(item.path))
    if not item.segmented:
        return prepared, None
    full: dict[str, np.ndarray] = {}
    orientation = _exif_orientation(item.path)
    for mask_path in item.mask_paths:
        mask = _upright(read_mask(mask_path), orientation)
        if mask.shape != rgb.shape[:2]:
            raise ImageError(
                f"{mask_path}: mask is {mask.shape[1]} x {mask.shape[0]} pixels but its "
                f"photograph {item.path.name} is {rgb.shape[1]} x {rgb.shape[0]}"
            )
        kind = lesion_type(mask_path)
        full[kind] = full[kind] | mask if kind in full else mask
    by_type = {}
    for kind, mask in full.items():
        small = apply_square(mask, prepared.square, size, nearest=True)
        small &= prepared.fov
        by_type[kind] = small
    return prepared, by_type


def read_mask(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A lesion mask file as an (H, W) uint8 array in {0, 1}: 1 where the stored value is > 0.

    Values are read as stored, not converted to grey: IDRiD's palette TIFFs hold indices 0/1
    (their grey conversion gives 0/76). Colour masks count a pixel where any of R, G, B is > 0
    (alpha is ignored). JPEG masks, whose compression smears the edges, count values >= 128.
    Raises :class:`ImageError` naming the file.
    """
    name = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{name}: mask too large ({width} x {height} pixels, limit "
                        f"{max_pixels / 1e6:.0f} megapixels); refused before decoding"
                    )
                im.load()
                values = np.asarray(im)
                bands = im.getbands()
                lossy = im.format == "JPEG"
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: mask file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image (cannot read the mask)") from None
    except Exception as err:  # Pillow's decoders raise OSError, ValueError, SyntaxError, ...
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ImageError(f"{name}: cannot read the mask ({reason})") from None
    if values.ndim == 3:  # colour (+ alpha): lesion where any colour channel is set
        colour = [i for i, band in enumerate(bands) if band != "A"]
        values = values[..., colour].max(axis=2)
    if values.ndim != 2:
        raise ImageError(f"{name}: unsupported mask layout {values.shape}")
    return (values >= 128 if lossy else values > 0).astype(np.uint8)


_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(path: Path) -> int:
    """The photograph's EXIF orientation (1 = as stored); read_image turns the pixels upright."""
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # read_image has already read the pixels; unreadable EXIF is ignored there
        return 1


def _upright(mask: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a mask drawn on the stored photograph as read_image turns the photograph."""
    if orientation not in _TRANSPOSE:
        return mask
    return np.asarray(Image.fromarray(mask).transpose(_TRANSPOSE[orientation])).copy()


# ---------------------------------------------------------------------------------------------
# Layouts


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; hidden files ignored."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _normal_items(normal_dir: str | Path) -> list[EvalItem]:
    folder = Path(normal_dir).expanduser()
    if not folder.is_dir():
        raise AnomalygenError(f"normal images: {folder} is not a folder")
    paths = _images_in(folder)
    if not paths:
        raise AnomalygenError(f"normal images: no image files in {folder}")
    return [EvalItem(f"normal/{p.name}", p, label=0, segmented=True) for p in paths]


_IDRID_MASK = re.compile(
    r"^(?P<stem>.+)_(?P<code>" + "|".join(code for _, code in IDRID_LESIONS) + r")\.tiff?$",
    re.IGNORECASE,
)

#: The lesion type of a mask that does not name one (the folder layout's single mask per image).
OTHER_LESION = "lesion"


def lesion_type(path: str | Path) -> str:
    """The lesion type a mask file holds: IDRiD's code (MA, HE, EX or SE) from its name, else
    :data:`OTHER_LESION`."""
    match = _IDRID_MASK.match(Path(path).name)
    return match["code"].upper() if match else OTHER_LESION


def idrid_items(
    root: str | Path, split: str = IDRID_DEFAULT_SPLIT, normal_dir: str | Path | None = None
) -> EvalSet:
    """IDRiD's segmentation images (abnormal) with their lesion masks, plus optional normals.

    ``root`` is the dataset's top folder (holding ``A. Segmentation``) or ``A. Segmentation``
    itself. Images: ``1. Original Images/<split folder>/IDRiD_NN.jpg``; masks:
    ``2. All Segmentation Groundtruths/<split folder>/<lesion folder>/IDRiD_NN_<CODE>.tif`` with
    CODE one of MA, HE, EX, SE (an image lacks the types it does not show; ``_OD`` optic-disc
    masks are ignored; masks are found by file name in every folder of the split, so renamed
    lesion folders still work). ``split``: "test" (``b. Testing Set``), "train" or "all" (the
    paper's 81 abnormal test images are both splits). ``normal_dir``: a folder of normal
    photographs (e.g. IDRiD's grade-0 images), label 0 with an empty mask.
    """
    if split not in IDRID_SPLITS:
        raise ConfigError(f"--split: must be one of {', '.join(IDRID_SPLITS)}, got {split!r}")
    top = Path(root).expanduser()
    seg = next(
        (c for c in (top / IDRID_SEGMENTATION, top) if (c / IDRID_IMAGES).is_dir()),
        None,
    )
    if seg is None:
        raise AnomalygenError(
            f"IDRiD layout not found: expected the folder {top / IDRID_SEGMENTATION / IDRID_IMAGES}"
            f" (or {top / IDRID_IMAGES} with the root at {IDRID_SEGMENTATION})"
        )
    items: list[EvalItem] = []
    problems: list[str] = []
    for folder in IDRID_SPLITS[split]:
        image_dir, truth_dir = seg / IDRID_IMAGES / folder, seg / IDRID_GROUNDTRUTHS / folder
        if split == "all" and not image_dir.is_dir() and not truth_dir.is_dir():
            problems.append(f"{folder}: not in this copy of IDRiD ({image_dir} is missing)")
            continue  # a partial copy (one split) still makes an "all" set
        for needed in (image_dir, truth_dir):
            if not needed.is_dir():
                raise AnomalygenError(f"IDRiD layout not found: expected the folder {needed}")
        masks: dict[str, list[Path]] = {}
        for lesion_dir in sorted(d for d in truth_dir.iterdir() if d.is_dir()):
            for path in sorted(lesion_dir.iterdir()):
                match = _IDRID_MASK.match(path.name)
                if match and path.is_file():
                    masks.setdefault(match["stem"].lower(), []).append(path)
        images = _images_in(image_dir)
        if not images:
            raise AnomalygenError(f"IDRiD layout: no images in {image_dir}")
        for path in images:
            found = tuple(sorted(masks.pop(path.stem.lower(), []), key=_lesion_order))
            if not found:
                problems.append(f"{path.name}: no lesion mask in {truth_dir} (its mask is empty)")
            items.append(EvalItem(path.name, path, label=1, mask_paths=found, segmented=True))
        problems += [f"{p}: lesion mask without an image" for ps in masks.values() for p in ps]
    if not items:
        raise AnomalygenError(f"IDRiD layout not found: no split folder under {seg / IDRID_IMAGES}")
    n_abnormal = len(items)
    if normal_dir is not None:
        items += _normal_items(normal_dir)
    description = (
        f"IDRiD {split} ({seg}): {n_abnormal} abnormal images with lesion masks, "
        f"{len(items) - n_abnormal} normal images"
        + (f" from {Path(normal_dir).expanduser()}" if normal_dir is not None else "")
    )
    return EvalSet("idrid", seg, _sorted_unique(items), tuple(problems), description)


def _lesion_order(path: Path) -> int:
    code = _IDRID_MASK.match(path.name)["code"].upper()  # type: ignore[index]
    return [c for _, c in IDRID_LESIONS].index(code)


def eyeq_items(
    root: str | Path,
    labels_csv: str | Path | None = None,
    quality: Sequence[int] = (0,),
    grades: Sequence[int] = (0, 1, 2, 3, 4),
) -> EvalSet:
    """EyeQ test images: ``root`` holds the photographs, ``labels_csv`` (default
    ``root/Label_EyeQ_test.csv``) has the columns ``image``, ``quality`` (0 good, 1 usable,
    2 reject) and ``DR_grade`` (0..4), and maybe an unnamed index column first.

    Keeps the rows whose quality is in ``quality`` (good only, as the paper) and grade in
    ``grades``; grade 0 is normal (label 0), 1 to 4 abnormal. CSV names match files in ``root``
    with or without their extension. Rows whose file is missing are reported in ``problems``.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise AnomalygenError(f"EyeQ: image folder {folder} is not a folder")
    csv_path = Path(labels_csv).expanduser() if labels_csv is not None else folder / EYEQ_LABELS_CSV
    if not csv_path.is_file():
        raise AnomalygenError(
            f"EyeQ: labels file {csv_path} not found (EyeQ's {EYEQ_LABELS_CSV}; give its path)"
        )
    rows = _read_eyeq_csv(csv_path)
    by_name: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for path in _images_in(folder):
        by_name[path.name] = path
        by_stem.setdefault(path.stem, []).append(path)

    items: list[EvalItem] = []
    problems: list[str] = []
    seen: set[Path] = set()
    kept = 0
    for line, image, q, grade in rows:
        if q not in quality or grade not in grades:
            continue
        kept += 1
        where = f"{csv_path.name} line {line}: {image}"
        base = PurePosixPath(image.replace("\\", "/")).name
        candidates = [by_name[base]] if base in by_name else by_stem.get(_stem(base), [])
        if len(candidates) != 1:
            reason = "no such image file" if not candidates else "several files match"
            problems.append(f"{where}: {reason} in {folder}")
            continue
        path = candidates[0]
        if path in seen:
            problems.append(f"{where}: listed more than once; the first row is used")
            continue
        seen.add(path)
        items.append(EvalItem(path.name, path, label=int(grade > 0), grade=grade))
    shown_q = "/".join(EYEQ_QUALITY.get(q, str(q)) for q in quality)
    description = (
        f"EyeQ ({csv_path}): {len(rows)} rows, {kept} of quality {shown_q} and grade in "
        f"{tuple(grades)}, {len(items)} found in {folder}"
    )
    return EvalSet("eyeq", folder, _sorted_unique(items), tuple(problems), description)


def _stem(name: str) -> str:
    suffix = PurePosixPath(name).suffix
    return name[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else name


def _read_eyeq_csv(path: Path) -> list[tuple[int, str, int, int]]:
    """(line number, image, quality, DR grade) per row; raises AnomalygenError on a bad file."""
    table = read_labels(path, what="EyeQ")
    image, quality, grade = (table.column(c, "EyeQ") for c in ("image", "quality", "DR_grade"))
    out = []
    for line, row in table.rows:
        values = []
        for key, allowed in ((quality, range(3)), (grade, range(5))):
            try:
                value = float(row[key])
            except ValueError:
                value = -1.0
            if not value.is_integer() or int(value) not in allowed:
                raise AnomalygenError(
                    f"EyeQ: {path} line {line}: {key} {row[key]!r} is not one of "
                    f"{', '.join(map(str, allowed))}"
                )
            values.append(int(value))
        if not row[image]:
            raise AnomalygenError(f"EyeQ: {path} line {line}: empty image name")
        out.append((line, row[image], values[0], values[1]))
    return out


def folder_items(root: str | Path) -> EvalSet:
    """A generic layout: ``root/normal/`` (label 0), ``root/abnormal/`` (label 1) and optional
    ``root/masks/`` holding one lesion mask per abnormal image, matched by file stem (any
    extension; values > 0 are lesion). With ``masks/``, normal images have empty masks and an
    abnormal image without a mask is kept for the image-level metrics only (and reported).
    """
    top = Path(root).expanduser()
    normal, abnormal, mask_dir = top / "normal", top / "abnormal", top / "masks"
    if not normal.is_dir() and not abnormal.is_dir():
        raise AnomalygenError(
            f"folder layout not found: expected {normal} and {abnormal} (and optionally {mask_dir})"
        )
    has_masks = mask_dir.is_dir()
    masks: dict[str, list[Path]] = {}
    if has_masks:
        for path in _images_in(mask_dir):
            masks.setdefault(path.stem, []).append(path)
    items: list[EvalItem] = []
    problems: list[str] = []
    if normal.is_dir():
        items += [
            EvalItem(f"normal/{p.name}", p, label=0, segmented=has_masks)
            for p in _images_in(normal)
        ]
    for path in _images_in(abnormal) if abnormal.is_dir() else []:
        found = masks.pop(path.stem, [])
        if has_masks and len(found) != 1:
            reason = "no mask" if not found else f"{len(found)} masks with that stem"
            problems.append(
                f"abnormal/{path.name}: {reason} in {mask_dir}; used for image-level metrics only"
            )
        segmented = has_masks and len(found) == 1
        items.append(
            EvalItem(
                f"abnormal/{path.name}",
                path,
                label=1,
                mask_paths=tuple(found) if segmented else (),
                segmented=segmented,
            )
        )
    problems += [
        f"masks/{p.name}: no abnormal image with that stem" for ps in masks.values() for p in ps
    ]
    if not items:
        raise AnomalygenError(f"folder layout: no image files in {normal} or {abnormal}")
    n_normal = sum(item.label == 0 for item in items)
    description = f"folder {top}: {n_normal} normal, {len(items) - n_normal} abnormal images" + (
        f", masks from {mask_dir}" if has_masks else ", no masks"
    )
    return EvalSet("folder", top, _sorted_unique(items), tuple(problems), description)


def _sorted_unique(items: list[EvalItem]) -> tuple[EvalItem, ...]:
    items = sorted(items, key=lambda item: item.name)
    for a, b in itertools.pairwise(items):
        if a.name == b.name:
            raise AnomalygenError(
                f"two evaluation images are both named {a.name}: {a.path}, {b.path}"
            )
    return tuple(items)


def open_eval_set(
    kind: str,
    root: str | Path,
    *,
    normal_dir: str | Path | None = None,
    labels_csv: str | Path | None = None,
    split: str = IDRID_DEFAULT_SPLIT,
) -> EvalSet:
    """The adapter for ``kind`` ("idrid", "eyeq" or "folder"), for command-line shells."""
    if kind == "idrid":
        return idrid_items(root, split=split, normal_dir=normal_dir)
    if normal_dir is not None:
        raise ConfigError(f"a separate folder of normal images is for IDRiD only, not {kind!r}")
    if kind == "eyeq":
        return eyeq_items(root, labels_csv)
    if kind == "folder":
        return folder_items(root)
    raise ConfigError(f"dataset must be one of idrid, eyeq, folder; got {kind!r}")
