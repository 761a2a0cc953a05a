"""The consistent anomaly generator (paper section 3.3): one synthetic sample (I_G, M_G, meta).

For each lesion the generator

1. draws a crop size (log-uniform fraction of the image side) and a place for the source crop
   C_s inside the source's field of view (FOV);
2. makes the Perlin mask P of the crop's size;
3. picks the place of the target crop C_t: inside the target's FOV, or centred on a FOV pixel
   (``placement``); P is ANDed with the FOV there, so a lesion never leaves the retina;
4. applies three distinct operations from the augmentation pool to C_s;
5. fuses C_s into C_t with the distance weights W (self-mix, Eqs. 3 and 4) and writes the result
   into the synthetic image I_G and P into the mask M_G.

The paper augments the whole source image and then cuts C_s. We cut first and do all per-pixel
work (augmentation, W, fusion) on P's bounding box inside the crop, which is all that can
change: no full-image work except the one copy of the target. Every operation but
auto-contrast is pointwise or 3x3-local (the box is widened by a pixel for those), so the
lesion's pixels are the same as with whole-image augmentation; auto-contrast stretches the
lesion region's own range, which makes somewhat stronger lesions.

All randomness comes from the ``numpy.random.Generator`` passed in; :func:`sample_rng` is THE
definition of the generator for sample ``index`` of a render seeded with ``seed``, so a sample
depends on (seed, index) alone, whatever the number of workers, and is byte-identical run to run.
No draw depends on a pixel, so a sample is drawn whole first (:func:`draw_lesions`: a
:class:`Lesion` per lesion, from the image shapes and FOVs) and then painted
(:func:`paint_lesions`, pure); its metadata records every drawn value but the masks P, which is
how :mod:`anomalygen.rebuild` replays a sample from its metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from anomalygen.augment import OPS, AugmentConfig, apply_ops, draw_ops
from anomalygen.config import from_dict, to_dict
from anomalygen.errors import ConfigError, ImageError
from anomalygen.perlin import PerlinConfig, perlin_mask
from anomalygen.selfmix import distance_weights, edge_fade, paste, self_mix
from anomalygen.tone import ToneConfig, apply_tone, draw_tone

SOURCES = ("fundus", "texture")
BLENDS = ("selfmix", "paste")
MASKS = ("perlin", "crop")
PLACEMENTS = ("inside", "centre")

# Ours: no crop side below this many pixels (and never above the image), so a lesion crop has
# a centre and room for a Perlin blob even on tiny test images.
MIN_CROP_PX = 3


@dataclass(frozen=True)
class GeneratorConfig:
    """How synthetic lesions are made. Field comments say where each default comes from."""

    # Lesions per anomalous sample, drawn uniformly from this inclusive range. Ours: the 30
    # IDRiD photographs of ../shared/data/idrid-512 show a median of 92 lesion components each
    # at 256 px (benchmarks/lesion_stats.py); 1-12 crops, each with one or several Perlin
    # blobs, give 11 (the paper's preset: 1-4 crops, 4 components). Matching the real count
    # does not help: real-lesion AUROC / AUPR on idrid-512 (benchmarks/bench_detect.py, small
    # preset) 0.803 / 0.253 at 1-12, 0.815 / 0.239 at 1-6, 0.783 / 0.239 at 4-24.
    lesions: tuple[int, int] = (1, 12)
    # Probability that a sample stays normal (empty mask, image == target). DRAEM and the
    # paper's preset: 0.5. Ours: 0.2; the pixels around the lesions are normal examples too,
    # and a short CPU run learns faster with more lesion pixels (benchmarks/bench_detect.py).
    p_normal: float = 0.2
    # Crop side as a fraction of the image side, drawn log-uniformly. Ours: real lesions range
    # from microaneurysms of a few pixels to haemorrhages about a tenth of the FOV disc across
    # (~77 px at 768). A Perlin mask at threshold 0.5 covers ~5% of its crop and its largest
    # blob spans ~0.3 of the crop side (median; up to the whole side for streaks; measured).
    # At 768 px, crops of 12-192 px thus give lesions from 2-5 px (microaneurysms) up to about
    # 55 px (median) at the largest crops and over 100 px in their tail (large haemorrhages,
    # exudate clusters). Log-uniform because small lesions are the common ones. Ours: up to
    # 0.35 (the paper's preset: 0.25), because the edge taper (PerlinConfig.taper) keeps blobs
    # off the crop border and real haemorrhages reach 700 px at 256 px (30 px across).
    crop_size: tuple[float, float] = (0.015, 0.35)
    # Crop height/width ratio, drawn log-uniformly (ours: mildly elongated crops; the Perlin
    # mask adds the shape diversity).
    aspect: tuple[float, float] = (0.5, 2.0)
    # The self-mix scaling factor of Eq. 3. Paper: 0.7.
    alpha: float = 0.7
    # Ours: draw alpha per lesion, uniformly from this range, instead of the constant above
    # (None: the paper's constant). A low alpha fades a lesion into the retina over its outer
    # pixels (W = D / max D at alpha 0), as real haemorrhages and soft exudates do at 256 px;
    # the paper's 0.7 leaves a step of 70 % of the lesion's contrast at its edge.
    alpha_range: tuple[float, float] | None = (0.0, 0.7)
    # Ours, off by default: the width in pixels, drawn uniformly per lesion from this range,
    # over which a lesion's opacity fades in from its edge (selfmix.edge_fade); None: the
    # paper's edge (a step of alpha at P's border). Real lesions at 256 px fade over 1-3 px,
    # but (0.5, 3.0) lowered real-lesion AUPR on idrid-512 from 0.253 to 0.199 (1,000 stage-2
    # steps, benchmarks/bench_detect.py): labelled pixels that barely change teach the network
    # to doubt.
    edge: tuple[float, float] | None = None
    # Table 4 ablations. source: "fundus" (paper: normal training images) or "texture" (DRAEM's
    # external texture images, e.g. DTD). blend: "selfmix" (Eq. 4) or "paste" (hard paste, W = 1).
    # mask: "perlin" (P from thresholded Perlin noise) or "crop" (P = the whole crop).
    source: Literal["fundus", "texture"] = "fundus"
    blend: Literal["selfmix", "paste"] = "selfmix"
    mask: Literal["perlin", "crop"] = "perlin"
    # Ours: random positions tried for a crop fully inside the FOV before settling for the
    # position with the most FOV pixels (a disc filling its square accepts ~75% of positions).
    placement_tries: int = 16
    # Where C_t may lie in the target. "inside" (the paper's preset, and every store written
    # before this field): the whole crop box inside the FOV, which keeps lesions off the FOV's
    # rim: 5% of their pixels lie in the outer fifth of the FOV's depth (distance to its
    # border over the largest), against 29% of the real lesion pixels of idrid-512 and 32% of
    # the FOV's own pixels (benchmarks/lesion_stats.py, 256 px). "centre" (ours): the crop's
    # centre is a uniform FOV pixel and P is cut by the FOV, as real lesions at the rim are:
    # 25% of the lesion pixels then lie in that outer fifth. Real-lesion AUROC / AUPR on
    # idrid-512 (benchmarks/bench_detect.py, small preset, round blobs): 0.824 / 0.264 at
    # "inside", 0.856 / 0.268 at "centre".
    placement: Literal["inside", "centre"] = "centre"
    perlin: PerlinConfig = field(default_factory=PerlinConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # The lesion's colour relative to the retina it lies on (anomalygen.tone); mode "source" is
    # the paper's (C_s's own colours).
    tone: ToneConfig = field(default_factory=ToneConfig)

    def __post_init__(self) -> None:
        for name in ("alpha_range", "edge"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("lesions", "crop_size", "aspect"):  # JSON lists -> hashable tuples
            value = getattr(self, name)
            if isinstance(value, list | tuple) and len(value) == 2:
                object.__setattr__(self, name, tuple(value))
            else:
                raise ConfigError(f"generator.{name}: expected a pair (low, high), got {value!r}")
        try:
            self._validate()
        except TypeError as err:  # e.g. a string where a number belongs
            raise ConfigError(f"generator: wrong type of value ({err})") from None

    def _validate(self) -> None:
        lo, hi = self.lesions
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 1000):
            raise ConfigError(f"generator.lesions: need integers 1 <= low <= high, got {lo}, {hi}")
        if not 0.0 <= self.p_normal <= 1.0:
            raise ConfigError(f"generator.p_normal: must lie in [0, 1], got {self.p_normal}")
        lo, hi = self.crop_size
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"generator.crop_size: need 0 < low <= high <= 1, got {lo}, {hi}")
        lo, hi = self.aspect
        if not 0.0 < lo <= hi:
            raise ConfigError(f"generator.aspect: need 0 < low <= high, got {lo}, {hi}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"generator.alpha: must lie in [0, 1], got {self.alpha}")
        if self.edge is not None and not 0.0 < self.edge[0] <= self.edge[1] <= 100.0:
            raise ConfigError(f"generator.edge: need 0 < low <= high <= 100 px, got {self.edge}")
        if self.alpha_range is not None:
            lo, hi = self.alpha_range
            if not 0.0 <= lo <= hi <= 1.0:
                raise ConfigError(
                    f"generator.alpha_range: need 0 <= low <= high <= 1, got {lo}, {hi}"
                )
        for name, allowed in (
            ("source", SOURCES),
            ("blend", BLENDS),
            ("mask", MASKS),
            ("placement", PLACEMENTS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"generator.{name}: must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, name)!r}"
                )
        if not (isinstance(self.placement_tries, int) and self.placement_tries >= 1):
            raise ConfigError(
                f"generator.placement_tries: must be an integer >= 1, got {self.placement_tries}"
            )
        if not isinstance(self.perlin, PerlinConfig):
            raise ConfigError("generator.perlin: expected a PerlinConfig")
        if not isinstance(self.augment, AugmentConfig):
            raise ConfigError("generator.augment: expected an AugmentConfig")
        if not isinstance(self.tone, ToneConfig):
            raise ConfigError("generator.tone: expected a ToneConfig")


@dataclass(frozen=True, eq=False)
class SyntheticSample:
    """One generated sample."""

    image: np.ndarray  # I_G, (H, W, 3) uint8; equals target exactly wherever mask == 0
    mask: np.ndarray  # M_G, (H, W) uint8 in {0, 1}; inside the target FOV; non-empty unless normal
    # JSON-compatible: {"normal": bool, "area": int, "lesions": [{"target_box": [y0, x0, y1, x1],
    #   "source_box": [y0, x0, y1, x1], "ops": [{"op": name, ...}], "area": int}]}.
    # The boxes are the crops C_t (in the target) and C_s (in the source), end-exclusive; the
    # lesion lies inside them. "area" is the lesion's pixel count (lesions may overlap; the
    # sample's "area" counts M_G). In texture mode source_box is in the texture tiled with
    # np.tile, so it can run past a texture smaller than the crop. "ops" are in applied order,
    # with every value they apply. A lesion also has "tone", "alpha" and "edge" where they were
    # drawn (Lesion.meta): everything drawn but P, which anomalygen.rebuild draws again.
    meta: dict


@dataclass(frozen=True, eq=False)
class Lesion:
    """Everything drawn for one lesion: with the target and source pixels, all that
    :func:`paint_lesion` needs. :meth:`meta` is its record in a sample's metadata, which holds
    every field but P (thousands of Perlin gradients; :mod:`anomalygen.rebuild` draws P again)."""

    target_box: tuple[int, int, int, int]  # C_t in the target: y0, x0, y1, x1 (end-exclusive)
    source_box: tuple[int, int, int, int]  # C_s in the source (tiled texture in texture mode)
    P: np.ndarray  # (h, w) uint8 in {0, 1}: the lesion in its crop, inside the target FOV
    ops: list[dict]  # [{"op": name, **values}] in applied order (anomalygen.augment.draw_ops)
    tone: dict | None = None  # anomalygen.tone.draw_tone's values; None: C_s's own colours
    alpha: float | None = None  # drawn per lesion (alpha_range); None: the config's alpha
    edge: float | None = None  # the soft edge's width in pixels (edge); None: no soft edge

    def meta(self) -> dict:
        """``{"target_box", "source_box", "ops", "area"}`` plus ``tone``, ``alpha`` and
        ``edge`` where drawn (JSON-compatible)."""
        record = {
            "target_box": list(self.target_box),
            "source_box": list(self.source_box),
            "ops": self.ops,
            "area": int(np.count_nonzero(self.P)),
        }
        for name in ("tone", "alpha", "edge"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        return record

    @classmethod
    def from_meta(cls, record: dict, P: np.ndarray) -> Lesion:
        """The lesion that :meth:`meta` recorded, with its mask ``P`` (which the record lacks).
        Raises ValueError when the record's boxes do not have P's shape."""
        target_box = tuple(int(v) for v in record["target_box"])
        source_box = tuple(int(v) for v in record["source_box"])
        for name, box in (("target_box", target_box), ("source_box", source_box)):
            if len(box) != 4 or (box[2] - box[0], box[3] - box[1]) != P.shape:
                raise ValueError(f"lesion {name} {list(box)} does not fit its P of {P.shape}")
        return cls(
            target_box,  # type: ignore[arg-type]
            source_box,  # type: ignore[arg-type]
            P,
            [dict(op) for op in record["ops"]],
            record.get("tone"),
            record.get("alpha"),
            record.get("edge"),
        )


#: The paper's generator (section 3.3, with DRAEM's values where the paper gives none), every
#: field that differs from our defaults written out: ``anomalygen render --preset paper``.
PAPER_GENERATOR = {
    "lesions": (1, 4),
    "p_normal": 0.5,
    "crop_size": (0.015, 0.25),
    "alpha_range": None,
    "edge": None,
    "placement": "inside",
    "perlin": {"taper": 0.0, "max_anisotropy": None},
    "augment": {"ops": list(OPS)},
    "tone": {"mode": "source"},
}

#: Fields added to GeneratorConfig after the first stores were written (anomalygen 0.1.0, whose
#: generator was the paper's), with the values that reproduce those stores: a store's record
#: that lacks one is read with this value, never with today's default.
ADDED_FIELDS = {
    "alpha_range": None,
    "edge": None,
    "placement": "inside",
    "perlin": {"taper": 0.0, "max_anisotropy": None},
    "tone": {"mode": "source"},
}


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value  # fmt: skip
    return out


#: ``anomalygen render --preset``: our defaults, or the paper's generator.
GENERATOR_PRESETS = ("default", "paper")


def with_changes(base: GeneratorConfig, changes: dict) -> GeneratorConfig:
    """``base`` with the fields of ``changes`` (a partial ``to_dict`` record, nested dicts
    merged field by field) replaced."""
    return from_dict(GeneratorConfig, _merged(to_dict(base), changes))


def generator_preset(name: str) -> GeneratorConfig:
    """``"default"`` (ours) or ``"paper"`` (:data:`PAPER_GENERATOR`)."""
    if name == "default":
        return GeneratorConfig()
    if name == "paper":
        return with_changes(GeneratorConfig(), PAPER_GENERATOR)
    raise ConfigError(f"--preset: must be one of {', '.join(GENERATOR_PRESETS)}, got {name!r}")


def config_from_record(data: dict) -> GeneratorConfig:
    """The generator a store or run recorded (``to_dict`` of its config): fields it lacks take
    the value of :data:`ADDED_FIELDS`, the generator it was made with, not today's default."""
    if not isinstance(data, dict):
        raise ConfigError(f"generator: expected a mapping, got {type(data).__name__}")
    return from_dict(GeneratorConfig, _merged(ADDED_FIELDS, data))


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """THE random generator of sample ``index`` in a render seeded with ``seed``.

    PCG64 seeded by ``SeedSequence([seed, index])``: independent streams per index, so sample i
    is the same whichever worker makes it and in whatever order.
    """
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ConfigError(f"{name}: must be a non-negative integer, got {value!r}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))


#: Consecutive samples share photographs in blocks: the samples of block ``index // PAIR_BLOCK``
#: draw their target and source from one random subset of ``PAIR_POOL`` photographs. Each
#: sample's target and source stay uniform over all photographs, but a render worker, which makes
#: whole shards of consecutive samples, reads 16 photographs per 64 samples instead of up to 128:
#: with thousands of sources (EyeQ's 6,324) nearly every read would otherwise miss its cache
#: (ours, measured with benchmarks/bench_render.py; the figures are in the README).
PAIR_BLOCK = 64
PAIR_POOL = 16


def _block_subset(seed: int, block: int, n: int, pool: int) -> np.ndarray:
    """The photographs (indices into ``n``) that the samples of ``block`` draw from: all of them
    when there are at most ``PAIR_POOL``, else a random subset of that size."""
    if n <= PAIR_POOL:
        return np.arange(n)
    # Three entropy words: never the stream of a sample (two words, sample_rng).
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, block, pool])))
    return rng.choice(n, size=PAIR_POOL, replace=False)


def draw_pair(
    seed: int, index: int, rng: np.random.Generator, n_normals: int, n_textures: int | None = None
) -> tuple[int, int]:
    """Target and source indices of sample ``index``: the first draws of its ``rng``
    (``sample_rng(seed, index)``), within its block's photographs (see :data:`PAIR_BLOCK`).

    The target is one of ``n_normals``; the source is another normal (when there are at least
    two), or in texture mode one of ``n_textures``.
    """
    block = index // PAIR_BLOCK
    normals = _block_subset(seed, block, n_normals, 0)
    t_local = int(rng.integers(len(normals)))
    t = int(normals[t_local])
    if n_textures is not None:
        textures = _block_subset(seed, block, n_textures, 1)
        return t, int(textures[int(rng.integers(len(textures)))])
    if len(normals) < 2:
        return t, t
    s_local = int(rng.integers(len(normals) - 1))
    return t, int(normals[s_local + (s_local >= t_local)])


def _check_image(name: str, img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", type(img).__name__)
        raise ImageError(f"{name}: expected an (H, W, 3) RGB image array, got {shape}")
    if img.dtype != np.uint8:
        raise ImageError(f"{name}: expected dtype uint8, got {img.dtype}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ImageError(f"{name}: image is empty, shape {img.shape}")


def _check_fov(name: str, fov: np.ndarray | None, shape: tuple[int, int]) -> None:
    if fov is not None and (not isinstance(fov, np.ndarray) or fov.shape != shape):
        got = getattr(fov, "shape", type(fov).__name__)
        raise ImageError(f"{name}: expected an FOV mask of shape {shape}, got {got}")


def _place(
    fov: np.ndarray | None,
    shape: tuple[int, int],
    size: tuple[int, int],
    rng: np.random.Generator,
    tries: int,
) -> tuple[int, int]:
    """Top-left corner of an (h, w) box in an image of ``shape``: uniform over positions whose box
    lies fully inside ``fov``; after ``tries`` misses, the tried position with most FOV pixels."""
    (H, W), (h, w) = shape, size
    tried = []
    for _ in range(tries):
        # floor(n * u): uniform over 0..n-1 up to 2**-53 bias, and 6x cheaper than rng.integers
        y0 = int(rng.random() * (H - h + 1))
        x0 = int(rng.random() * (W - w + 1))
        if fov is None:
            return y0, x0
        y1, x1 = y0 + h - 1, x0 + w - 1
        if fov[y0, x0] and fov[y0, x1] and fov[y1, x0] and fov[y1, x1]:  # cheap rejection first
            if np.count_nonzero(fov[y0 : y1 + 1, x0 : x1 + 1]) == h * w:
                return y0, x0
        tried.append((y0, x0))
    coverage = [np.count_nonzero(fov[y : y + h, x : x + w]) for y, x in tried]
    return tried[int(np.argmax(coverage))]  # the first of the best


def _place_centre(
    fov: np.ndarray | None,
    shape: tuple[int, int],
    size: tuple[int, int],
    rng: np.random.Generator,
    tries: int,
) -> tuple[int, int]:
    """Top-left corner of an (h, w) box centred on a pixel drawn uniformly from ``fov``
    (rejection, ``tries`` draws, then a draw from the FOV's pixel list), moved just enough to
    stay in the image. The box may overlap the FOV's border; the caller cuts P by the FOV."""
    H, W = shape
    cy, cx = 0, 0
    for _ in range(tries):
        cy, cx = int(rng.random() * H), int(rng.random() * W)
        if fov is None or fov[cy, cx]:
            break
    else:
        inside = np.flatnonzero(fov)
        if inside.size:
            cy, cx = divmod(int(inside[int(rng.random() * inside.size)]), W)
    return _centred_on((cy, cx), shape, size)


def _centred_on(
    pixel: tuple[int, int], shape: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int]:
    """Top-left corner of an (h, w) box centred on ``pixel``, moved just enough to stay inside
    an image of ``shape``."""
    (H, W), (h, w) = shape, size
    return min(max(pixel[0] - h // 2, 0), H - h), min(max(pixel[1] - w // 2, 0), W - w)


def _tiled_shape(shape: tuple[int, int], h: int, w: int) -> tuple[int, int]:
    """The shape :func:`tile_to` gives a texture of ``shape`` for an (h, w) crop."""
    th, tw = shape
    if th >= h and tw >= w:
        return th, tw
    return th * max(1, -(-h // th)), tw * max(1, -(-w // tw))


def tile_to(texture: np.ndarray, h: int, w: int) -> np.ndarray:
    """Repeat a texture smaller than (h, w) until it covers it (texture-mode source boxes are in
    this tiled image's coordinates)."""
    th, tw = texture.shape[:2]
    if th >= h and tw >= w:
        return texture
    return np.tile(texture, (max(1, -(-h // th)), max(1, -(-w // tw)), 1))


def check_inputs(
    target: np.ndarray,
    source: np.ndarray,
    fov: np.ndarray | None,
    source_fov: np.ndarray | None,
    mode: str = "fundus",
) -> np.ndarray | None:
    """Raise :class:`ImageError` for images or FOV masks that :meth:`AnomalyGenerator.generate`
    cannot use; return the source FOV it uses (None in texture ``mode``, where it is ignored)."""
    _check_image("target", target)
    _check_image("source", source)
    _check_fov("fov", fov, (target.shape[0], target.shape[1]))
    if mode != "fundus":
        return None
    _check_fov("source_fov", source_fov, source.shape[:2])
    return source_fov


# --- drawing: every random value of a sample, from shapes and FOVs (no pixels) ----------------


def draw_lesions(
    rng: np.random.Generator,
    config: GeneratorConfig,
    shape: tuple[int, int],
    source_shape: tuple[int, int],
    fov: np.ndarray | None = None,
    source_fov: np.ndarray | None = None,
) -> list[Lesion]:
    """Every draw of one sample, in the generator's order: its lesions, [] for a normal sample.

    No draw depends on a pixel (only on the image ``shape``, the source's ``source_shape`` and
    the FOVs), so a sample is drawn whole and then painted by :func:`paint_lesions`.
    """
    if rng.random() < config.p_normal:
        return []
    lesions = []
    for _ in range(int(rng.integers(config.lesions[0], config.lesions[1] + 1))):
        lesion = draw_lesion(rng, config, shape, source_shape, fov, source_fov)
        if lesion is not None:
            lesions.append(lesion)
    if not lesions:  # every lesion fell outside a small or ragged FOV: one on a FOV pixel
        inside = np.flatnonzero(fov) if fov is not None else np.arange(shape[0] * shape[1])
        if inside.size == 0:
            raise ImageError("fov: the target's field of view is empty; no lesion can be placed")
        anchor = divmod(int(inside[int(rng.integers(inside.size))]), shape[1])
        lesion = draw_lesion(rng, config, shape, source_shape, fov, source_fov, anchor=anchor)
        assert lesion is not None  # P keeps the anchor pixel, which lies in the FOV
        lesions.append(lesion)
    return lesions


def draw_lesion(
    rng: np.random.Generator,
    config: GeneratorConfig,
    shape: tuple[int, int],
    source_shape: tuple[int, int],
    fov: np.ndarray | None,
    source_fov: np.ndarray | None,
    anchor: tuple[int, int] | None = None,
) -> Lesion | None:
    """One lesion's draws, or None if P does not meet the target FOV (nothing more is drawn).

    With ``anchor`` (a FOV pixel) the crop has the minimum size, is centred on the anchor and P
    keeps that pixel.
    """
    cfg = config
    H, W = shape
    if cfg.source == "fundus":
        limit = (min(H, source_shape[0]), min(W, source_shape[1]))
    else:
        limit = (H, W)
    if anchor is None:
        h, w = _crop_size(rng, cfg, min(H, W), limit)
    else:
        h, w = min(MIN_CROP_PX, limit[0]), min(MIN_CROP_PX, limit[1])

    # Where C_s comes from (inside the source FOV) and where C_t goes (inside the target FOV).
    if cfg.source == "texture":
        sy, sx = _place(None, _tiled_shape(source_shape, h, w), (h, w), rng, 1)
    else:
        sy, sx = _place(source_fov, source_shape, (h, w), rng, cfg.placement_tries)
    if cfg.mask == "perlin":
        P = perlin_mask((h, w), rng, cfg.perlin)
    else:
        P = np.ones((h, w), dtype=np.uint8)
    if anchor is None:
        place = _place_centre if cfg.placement == "centre" else _place
        ty, tx = place(fov, (H, W), (h, w), rng, cfg.placement_tries)
    else:
        ty, tx = _centred_on(anchor, (H, W), (h, w))
    if fov is not None:
        P = P & (fov[ty : ty + h, tx : tx + w] != 0).view(np.uint8)
    if anchor is not None:
        P[anchor[0] - ty, anchor[1] - tx] = 1
    if not P.any():
        return None

    ops = draw_ops(rng, cfg.augment)
    tone = draw_tone(rng, cfg.tone) if cfg.tone.mode == "shift" else None
    alpha = edge = None
    if cfg.blend == "selfmix":
        if cfg.alpha_range is not None:
            lo, hi = cfg.alpha_range
            alpha = lo + (hi - lo) * float(rng.random())
        if cfg.edge is not None:
            lo, hi = cfg.edge
            edge = lo + (hi - lo) * float(rng.random())
    target_box, source_box = (ty, tx, ty + h, tx + w), (sy, sx, sy + h, sx + w)
    return Lesion(target_box, source_box, P, ops, tone, alpha, edge)


def _crop_size(
    rng: np.random.Generator, config: GeneratorConfig, side: int, limit: tuple[int, int]
) -> tuple[int, int]:
    """(h, w): side log-uniform in ``crop_size`` * ``side``, aspect h/w log-uniform,
    at least MIN_CROP_PX and at most ``limit``."""
    lo, hi = config.crop_size
    s = side * lo * math.pow(hi / lo, float(rng.random()))
    a_lo, a_hi = config.aspect
    root = math.sqrt(a_lo * math.pow(a_hi / a_lo, float(rng.random())))
    h = min(max(round(s * root), MIN_CROP_PX), limit[0])
    w = min(max(round(s / root), MIN_CROP_PX), limit[1])
    return h, w


# --- painting: pure given the draws ------------------------------------------------------------


def paint_lesions(
    target: np.ndarray,
    source: np.ndarray,
    lesions: list[Lesion],
    config: GeneratorConfig,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> SyntheticSample:
    """The sample (I_G, M_G, meta) that ``lesions`` make on a copy of ``target`` (none: a normal
    sample). Pure: draws nothing, modifies no input. ``out``: (H, W, 3) and (H, W) uint8 arrays
    to make I_G and M_G in (a render's shard buffers: one copy of the target instead of two)."""
    if out is None:
        image, mask = target.copy(), np.zeros(target.shape[:2], dtype=np.uint8)
    else:
        image, mask = out
        np.copyto(image, target)
        mask[...] = 0
    if not lesions:
        return SyntheticSample(image, mask, {"normal": True, "area": 0, "lesions": []})
    area = 0  # counted lesion by lesion: no full-image pass
    for lesion in lesions:
        area += paint_lesion(image, mask, source, lesion, config)
    meta = {"normal": False, "area": area, "lesions": [lesion.meta() for lesion in lesions]}
    return SyntheticSample(image, mask, meta)


def paint_lesion(
    image: np.ndarray, mask: np.ndarray, source: np.ndarray, lesion: Lesion, config: GeneratorConfig
) -> int:
    """Write ``lesion`` into ``image`` (I_G so far) and its P into ``mask`` (M_G so far); return
    the number of mask pixels it newly set."""
    ty, tx, _, _ = lesion.target_box
    sy, sx, _, _ = lesion.source_box
    h, w = lesion.P.shape
    if config.source == "texture":
        source = tile_to(source, h, w)
    # Only P's bounding box (y0:y1, x0:x1 in the crop) can change, so the per-pixel work is
    # done there: W on the box equals W on the whole crop (the ring around a tight box is
    # background, and the nearest background pixel is never farther out), and C_s is
    # augmented on the box widened by one pixel so that 3x3 operations see real neighbours.
    bx, by, bw, bh = cv2.boundingRect(lesion.P)
    y0, x0, y1, x1 = by, bx, by + bh, bx + bw
    ay0, ax0, ay1, ax1 = max(y0 - 1, 0), max(x0 - 1, 0), min(y1 + 1, h), min(x1 + 1, w)
    window = source[sy + ay0 : sy + ay1, sx + ax0 : sx + ax1]
    C_s = apply_ops(window, lesion.ops)[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
    P = lesion.P[y0:y1, x0:x1]

    # Fuse C_s into C_t (Eq. 4) and record C_m = P in M_G.
    region = (slice(ty + y0, ty + y1), slice(tx + x0, tx + x1))
    image[region] = _fuse(C_s, image[region], P, lesion, config)
    before = int(np.count_nonzero(mask[region]))
    mask[region] |= P
    return int(np.count_nonzero(mask[region])) - before


def _fuse(
    C_s: np.ndarray, C_t: np.ndarray, P: np.ndarray, lesion: Lesion, config: GeneratorConfig
) -> np.ndarray:
    """The lesion crop C (Eq. 4) from the augmented C_s and the target's C_t on P's box, after
    the tone step where the lesion has a tone."""
    if lesion.tone is not None:
        tone = lesion.tone
        channels = tone.get("channels", config.tone.channels)
        C_s = apply_tone(
            C_s, C_t, P, tone["delta"], tone["texture"], channels, tone.get("target_texture", 0.0)
        )
    if config.blend == "paste":
        return paste(C_s, C_t, P)
    W = distance_weights(P, config.alpha if lesion.alpha is None else lesion.alpha)
    if lesion.edge is not None:
        W *= edge_fade(P, lesion.edge)
    return self_mix(C_s, C_t, P, W)


class AnomalyGenerator:
    """Makes synthetic samples: ``AnomalyGenerator(config).generate(target, source, rng)``."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()) -> None:
        if not isinstance(config, GeneratorConfig):
            raise ConfigError(f"generator: expected a GeneratorConfig, got {type(config).__name__}")
        self.config = config

    def generate(
        self,
        target: np.ndarray,
        source: np.ndarray,
        rng: np.random.Generator,
        fov: np.ndarray | None = None,
        source_fov: np.ndarray | None = None,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> SyntheticSample:
        """One sample from a target image I_t and a source image I_s.

        ``target`` and ``source`` are (H, W, 3) uint8 RGB prepared fundus images (in texture mode
        ``source`` is any RGB texture, tiled where smaller than a crop, and ``source_fov`` is
        ignored). ``fov`` / ``source_fov`` are (H, W) masks, nonzero inside the field of view;
        None means "everywhere". Inputs are never modified. Raises :class:`ImageError` for
        arrays of the wrong shape or dtype, or when no lesion can be placed because ``fov`` is
        empty.

        The sample is :func:`draw_lesions` (every random draw) then :func:`paint_lesions` (pure;
        ``out``: the arrays it makes I_G and M_G in, which the sample's image and mask are).
        """
        cfg = self.config
        source_fov = check_inputs(target, source, fov, source_fov, cfg.source)
        lesions = draw_lesions(rng, cfg, target.shape[:2], source.shape[:2], fov, source_fov)
        return paint_lesions(target, source, lesions, cfg, out)
