"""The anomaly generator (anomalygen.generator): contracts, determinism, ablations, config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anomalygen.augment import AugmentConfig
from anomalygen.config import from_dict, to_dict
from anomalygen.errors import ConfigError, ImageError
from anomalygen.generator import (
    MIN_CROP_PX,
    AnomalyGenerator,
    GeneratorConfig,
    SyntheticSample,
    generator_preset,
    sample_rng,
)
from anomalygen.perlin import PerlinConfig
from anomalygen.selfmix import distance_weights
from tests.synthetic import make_fundus

SIZE = 96
ROOT = Path(__file__).resolve().parents[1]


def disc_fov(h: int, w: int, radius: float = 0.46) -> np.ndarray:
    """The FOV of tests.synthetic.make_fundus (a centred disc), as uint8 {0, 1}."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (np.hypot(yy - h / 2, xx - w / 2) <= radius * h).astype(np.uint8)


TARGET = make_fundus(SIZE, seed=1)
SOURCE = make_fundus(SIZE, seed=2)
FOV = disc_fov(SIZE, SIZE)
ANOMALOUS = GeneratorConfig(p_normal=0.0)
PAPER = generator_preset("paper")


def _digest(sample: SyntheticSample) -> str:
    h = hashlib.sha256(sample.image.tobytes())
    h.update(sample.mask.tobytes())
    h.update(json.dumps(sample.meta, sort_keys=True).encode())
    return h.hexdigest()


def check_contract(sample: SyntheticSample, target: np.ndarray, fov: np.ndarray | None) -> None:
    """Everything architecture.md promises about a SyntheticSample."""
    image, mask, meta = sample.image, sample.mask, sample.meta
    assert image.shape == target.shape and image.dtype == np.uint8
    assert mask.shape == target.shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert np.array_equal(image[mask == 0], target[mask == 0])
    if fov is not None:
        assert not (mask & (fov == 0)).any(), "lesion outside the FOV"
    assert json.loads(json.dumps(meta)) == meta
    assert meta["area"] == int(mask.sum())
    if meta["normal"]:
        assert meta["lesions"] == [] and not mask.any()
        assert np.array_equal(image, target)
        return
    assert mask.any() and meta["lesions"]
    H, W = mask.shape
    union = np.zeros_like(mask)
    for lesion in meta["lesions"]:
        y0, x0, y1, x1 = lesion["target_box"]
        assert 0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W
        sy0, sx0, sy1, sx1 = lesion["source_box"]
        assert (sy1 - sy0, sx1 - sx0) == (y1 - y0, x1 - x0)
        assert lesion["area"] >= 1
        assert all(isinstance(op["op"], str) for op in lesion["ops"])
        union[y0:y1, x0:x1] = 1
    assert not (mask & (union == 0)).any(), "mask pixels outside every lesion box"
    assert sum(lesion["area"] for lesion in meta["lesions"]) >= meta["area"]


def test_sample_rng_is_the_documented_construction() -> None:
    ours = sample_rng(7, 123).random(4)
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, 123]))).random(4)
    assert np.array_equal(ours, ref)
    assert not np.array_equal(sample_rng(7, 124).random(4), ours)


@pytest.mark.parametrize(("seed", "index"), [(-1, 0), (0, -5), (1.5, 0), (True, 0), ("3", 0)])
def test_sample_rng_rejects_bad_seeds(seed, index) -> None:
    with pytest.raises(ConfigError):
        sample_rng(seed, index)


def test_same_seed_and_index_give_identical_bytes() -> None:
    a = AnomalyGenerator(ANOMALOUS).generate(TARGET, SOURCE, sample_rng(3, 9), FOV, FOV)
    b = AnomalyGenerator(ANOMALOUS).generate(TARGET, SOURCE, sample_rng(3, 9), FOV, FOV)
    assert _digest(a) == _digest(b)
    others = {
        _digest(AnomalyGenerator(ANOMALOUS).generate(TARGET, SOURCE, sample_rng(3, i), FOV, FOV))
        for i in range(10, 20)
    }
    assert len(others) == 10 and _digest(a) not in others


_CHILD = """
import hashlib, json, sys
import cv2, numpy as np
cv2.setNumThreads(int(sys.argv[1]))
from anomalygen.generator import AnomalyGenerator, GeneratorConfig, sample_rng
from tests.synthetic import make_fundus
from tests.test_generator import disc_fov
t, s, fov = make_fundus(128, seed=1), make_fundus(128, seed=2), disc_fov(128, 128)
g = AnomalyGenerator(GeneratorConfig(p_normal=0.25))
h = hashlib.sha256()
for i in range(12):
    out = g.generate(t, s, sample_rng(5, i), fov, fov)
    h.update(out.image.tobytes() + out.mask.tobytes() + json.dumps(out.meta).encode())
print(h.hexdigest())
"""


def test_bytes_do_not_depend_on_process_or_threads() -> None:
    """Two fresh interpreters (different hash seeds, 1 vs 4 OpenCV threads) agree."""

    def run(threads: int, hashseed: str) -> str:
        env = {"PYTHONHASHSEED": hashseed, "PATH": "/usr/bin:/bin"}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(threads)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    assert run(1, "1") == run(4, "2")


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    index=st.integers(0, 10**6),
    blend=st.sampled_from(["selfmix", "paste"]),
    mask=st.sampled_from(["perlin", "crop"]),
    p_normal=st.sampled_from([0.0, 0.5]),
)
def test_contract_holds(seed: int, index: int, blend: str, mask: str, p_normal: float) -> None:
    config = GeneratorConfig(p_normal=p_normal, blend=blend, mask=mask)
    target, source = TARGET.copy(), SOURCE.copy()
    fov, source_fov = FOV.copy(), FOV.copy()
    sample = AnomalyGenerator(config).generate(target, source, sample_rng(seed, index), fov, FOV)
    check_contract(sample, TARGET, FOV)
    # inputs untouched
    assert np.array_equal(target, TARGET) and np.array_equal(source, SOURCE)
    assert np.array_equal(fov, FOV) and np.array_equal(source_fov, FOV)
    assert not np.shares_memory(sample.image, target)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(8, 80),
    w=st.integers(8, 80),
    sh=st.integers(8, 80),
    sw=st.integers(8, 80),
)
def test_contract_holds_for_odd_sizes(seed: int, h: int, w: int, sh: int, sw: int) -> None:
    """Non-square targets, a source of another size, FOVs that are not discs."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    source = rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
    fov = disc_fov(h, w, radius=0.5)
    fov[: h // 3] = 0  # a cut disc, like HRF photographs
    source_fov = disc_fov(sh, sw)
    sample = AnomalyGenerator(ANOMALOUS).generate(
        target, source, sample_rng(seed, 0), fov, source_fov
    )
    check_contract(sample, target, fov)


def test_lesions_sit_inside_both_fovs() -> None:
    gen = AnomalyGenerator(dataclasses.replace(ANOMALOUS, placement="inside"))
    for i in range(30):
        sample = gen.generate(TARGET, SOURCE, sample_rng(0, i), FOV, FOV)
        for lesion in sample.meta["lesions"]:
            y0, x0, y1, x1 = lesion["source_box"]
            assert FOV[y0:y1, x0:x1].all(), "source crop not fully inside the source FOV"
            y0, x0, y1, x1 = lesion["target_box"]
            assert FOV[y0:y1, x0:x1].all(), "target crop not fully inside the target FOV"


def test_centre_placement_reaches_the_fov_rim() -> None:
    """placement "centre": C_t's centre is a FOV pixel, the box may cross the FOV's border, M_G
    stays inside the FOV, and lesion pixels come as near the rim as the FOV's own pixels do."""
    fov = disc_fov(192, 192)
    target, source = make_fundus(192, seed=1), make_fundus(192, seed=2)
    depth = cv2.distanceTransform(fov, cv2.DIST_L2, 5)
    rim = depth < 0.2 * depth.max()  # the outer fifth of the FOV's depth
    shares, crossed = {}, 0
    for placement in ("inside", "centre"):
        gen = AnomalyGenerator(dataclasses.replace(ANOMALOUS, placement=placement))
        lesion_px = rim_px = 0
        for i in range(40):
            sample = gen.generate(target, source, sample_rng(3, i), fov, fov)
            check_contract(sample, target, fov)
            lesion_px += int(sample.mask.sum())
            rim_px += int(sample.mask[rim].sum())
            for lesion in sample.meta["lesions"]:
                y0, x0, y1, x1 = lesion["target_box"]
                assert fov[(y0 + y1) // 2, (x0 + x1) // 2] or placement == "inside"
                crossed += placement == "centre" and not fov[y0:y1, x0:x1].all()
        shares[placement] = rim_px / lesion_px
    assert shares["inside"] < 0.1 < shares["centre"], shares
    assert crossed > 10


def test_without_fov_lesions_go_anywhere() -> None:
    sample = AnomalyGenerator(ANOMALOUS).generate(TARGET, SOURCE, sample_rng(1, 1))
    check_contract(sample, TARGET, None)


def test_normal_samples() -> None:
    gen = AnomalyGenerator(GeneratorConfig(p_normal=1.0))
    for i in range(5):
        sample = gen.generate(TARGET, SOURCE, sample_rng(0, i), FOV, FOV)
        assert sample.meta == {"normal": True, "area": 0, "lesions": []}
        assert not sample.mask.any() and np.array_equal(sample.image, TARGET)
        assert sample.image is not TARGET
    half = AnomalyGenerator(GeneratorConfig(p_normal=0.5))
    normal = [half.generate(TARGET, SOURCE, sample_rng(0, i)).meta["normal"] for i in range(200)]
    assert 70 < sum(normal) < 130


def test_lesion_count_and_ops_follow_config() -> None:
    config = GeneratorConfig(p_normal=0.0, lesions=(3, 3), augment=AugmentConfig(n_ops=2))
    for i in range(10):
        meta = AnomalyGenerator(config).generate(TARGET, SOURCE, sample_rng(0, i)).meta
        assert len(meta["lesions"]) == 3  # no FOV: no lesion can be dropped
        for lesion in meta["lesions"]:
            names = [op["op"] for op in lesion["ops"]]
            assert len(names) == 2 and len(set(names)) == 2


def test_crop_sizes_follow_config() -> None:
    lo, hi = 0.1, 0.3
    config = GeneratorConfig(p_normal=0.0, crop_size=(lo, hi), aspect=(0.5, 2.0))
    sides = []
    for i in range(60):
        for lesion in (
            AnomalyGenerator(config).generate(TARGET, SOURCE, sample_rng(2, i)).meta["lesions"]
        ):
            y0, x0, y1, x1 = lesion["target_box"]
            h, w = y1 - y0, x1 - x0
            geo = math.sqrt(h * w) / SIZE  # aspect cancels in the geometric mean
            assert lo - 0.02 <= geo <= hi + 0.02
            assert 0.5 / 1.2 <= h / w <= 2.0 * 1.2
            sides.append(geo)
    assert min(sides) < 0.13 and max(sides) > 0.25  # the whole range is used


def test_tiny_crops_respect_the_minimum() -> None:
    config = GeneratorConfig(p_normal=0.0, crop_size=(0.001, 0.002))
    meta = AnomalyGenerator(config).generate(TARGET, SOURCE, sample_rng(0, 0), FOV, FOV).meta
    for lesion in meta["lesions"]:
        y0, x0, y1, x1 = lesion["target_box"]
        assert y1 - y0 == MIN_CROP_PX and x1 - x0 == MIN_CROP_PX


def test_hard_paste_of_whole_crop_copies_the_source() -> None:
    """Ablation blend=paste, mask=crop, no augmentation: the lesion is the source crop itself."""
    config = dataclasses.replace(
        PAPER,
        p_normal=0.0,
        lesions=(1, 1),
        blend="paste",
        mask="crop",
        augment=AugmentConfig(n_ops=0),
    )
    for i in range(5):
        sample = AnomalyGenerator(config).generate(TARGET, SOURCE, sample_rng(0, i))
        (lesion,) = sample.meta["lesions"]
        y0, x0, y1, x1 = lesion["target_box"]
        sy0, sx0, sy1, sx1 = lesion["source_box"]
        assert np.array_equal(sample.image[y0:y1, x0:x1], SOURCE[sy0:sy1, sx0:sx1])
        assert sample.mask.sum() == (y1 - y0) * (x1 - x0) == lesion["area"]


def test_self_mix_of_whole_crop_fades_to_its_edge() -> None:
    config = dataclasses.replace(
        PAPER,
        p_normal=0.0,
        lesions=(1, 1),
        mask="crop",
        crop_size=(0.2, 0.2),
        augment=AugmentConfig(n_ops=0),
    )
    sample = AnomalyGenerator(config).generate(TARGET, SOURCE, sample_rng(0, 4))
    (lesion,) = sample.meta["lesions"]
    y0, x0, y1, x1 = lesion["target_box"]
    sy0, sx0, sy1, sx1 = lesion["source_box"]
    C, C_s, C_t = sample.image[y0:y1, x0:x1], SOURCE[sy0:sy1, sx0:sx1], TARGET[y0:y1, x0:x1]
    W = distance_weights(np.ones(C.shape[:2], np.uint8), 0.7)
    assert np.array_equal(C[W == 1.0], C_s[W == 1.0])  # full weight at the centre
    edge = np.zeros(C.shape[:2], bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    expected = W[..., None] * C_s + (1 - W[..., None]) * C_t
    assert np.abs(C[edge] - expected[edge]).max() <= 0.51  # a blend of both, not a paste


def test_texture_source() -> None:
    """Ablation source=texture: any RGB texture, tiled where smaller than the crop."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    config = dataclasses.replace(PAPER, p_normal=0.0, source="texture", crop_size=(0.1, 0.3))
    for texture in (small, large):
        for i in range(5):
            sample = AnomalyGenerator(config).generate(
                TARGET, texture, sample_rng(0, i), FOV, source_fov=np.zeros((1, 1))
            )
            check_contract(sample, TARGET, FOV)
    paste_cfg = dataclasses.replace(
        config, blend="paste", mask="crop", lesions=(1, 1), augment=AugmentConfig(n_ops=0)
    )
    sample = AnomalyGenerator(paste_cfg).generate(TARGET, small, sample_rng(0, 0))
    (lesion,) = sample.meta["lesions"]
    y0, x0, y1, x1 = lesion["target_box"]
    sy0, sx0, sy1, sx1 = lesion["source_box"]
    tiled = np.tile(small, (40, 40, 1))
    assert np.array_equal(sample.image[y0:y1, x0:x1], tiled[sy0:sy1, sx0:sx1])


def test_a_tiny_fov_still_gets_a_lesion() -> None:
    fov = np.zeros((SIZE, SIZE), np.uint8)
    fov[40:42, 70:72] = 1  # four pixels
    config = GeneratorConfig(p_normal=0.0, placement_tries=2)
    for i in range(10):
        sample = AnomalyGenerator(config).generate(TARGET, SOURCE, sample_rng(0, i), fov, FOV)
        check_contract(sample, TARGET, fov)


def test_an_empty_fov_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="field of view is empty"):
        AnomalyGenerator(ANOMALOUS).generate(
            TARGET, SOURCE, sample_rng(0, 0), np.zeros((SIZE, SIZE), np.uint8)
        )


@pytest.mark.parametrize(
    ("target", "source", "fov", "source_fov"),
    [
        (TARGET.astype(np.float32), SOURCE, None, None),
        (TARGET[..., 0], SOURCE, None, None),
        (TARGET, SOURCE[..., :2], None, None),
        (TARGET, SOURCE, FOV[:50], None),
        (TARGET, SOURCE, None, FOV[:, :50]),
        (TARGET, "not an image", None, None),
    ],
)
def test_bad_arrays_are_image_errors(target, source, fov, source_fov) -> None:
    with pytest.raises(ImageError):
        AnomalyGenerator(ANOMALOUS).generate(target, source, sample_rng(0, 0), fov, source_fov)


def test_config_round_trip_through_json() -> None:
    for config in (
        GeneratorConfig(),
        GeneratorConfig(
            lesions=(2, 5),
            p_normal=0.1,
            crop_size=(0.02, 0.3),
            source="texture",
            blend="paste",
            mask="crop",
            perlin=PerlinConfig(threshold=0.4, rotate=False),
            augment=AugmentConfig(n_ops=2, ops=("gamma", "hue", "sharpen")),
        ),
    ):
        text = json.dumps(to_dict(config))
        back = from_dict(GeneratorConfig, json.loads(text))
        assert back == config
        assert hash(back) == hash(config)


def test_config_from_lists_becomes_tuples() -> None:
    config = GeneratorConfig(lesions=[1, 2], crop_size=[0.05, 0.1])
    assert config.lesions == (1, 2) and config.crop_size == (0.05, 0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lesions": (0, 2)},
        {"lesions": (3, 2)},
        {"lesions": (1.5, 2)},
        {"lesions": 3},
        {"p_normal": 1.5},
        {"p_normal": -0.1},
        {"crop_size": (0.0, 0.1)},
        {"crop_size": (0.3, 0.1)},
        {"crop_size": (0.1, 1.5)},
        {"aspect": (0.0, 1.0)},
        {"alpha": 1.2},
        {"source": "dtd"},
        {"blend": "poisson"},
        {"mask": "circle"},
        {"placement_tries": 0},
        {"placement": "border"},
        {"perlin": {"threshold": 0.5}},
        {"p_normal": "often"},
    ],
)
def test_invalid_configs_raise(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        GeneratorConfig(**kwargs)


def test_invalid_config_dicts_raise() -> None:
    with pytest.raises(ConfigError):
        from_dict(GeneratorConfig, {"blend": "poisson"})
    with pytest.raises(ConfigError):
        from_dict(GeneratorConfig, {"augment": {"ops": ["gamma", "blur"]}})
    with pytest.raises(ConfigError):
        from_dict(GeneratorConfig, {"perlin": {"threshold": 3}})
    with pytest.raises(ConfigError):
        AnomalyGenerator({"p_normal": 0.5})  # type: ignore[arg-type]


def test_real_photographs(shared_data: Path) -> None:
    """The contract on real fundus photographs (simply resized; FOV by a red-channel threshold)."""
    import cv2

    paths = sorted((shared_data / "fundus-normal").glob("*"))[:3]
    assert paths, "no photographs in fundus-normal"
    images = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(
            cv2.resize(bgr, (128, 128), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
        )
        images.append((rgb, (rgb[..., 0] > 20).astype(np.uint8)))
    gen = AnomalyGenerator(ANOMALOUS)
    for i in range(6):
        (t, t_fov), (s, s_fov) = images[i % len(images)], images[(i + 1) % len(images)]
        check_contract(gen.generate(t, s, sample_rng(0, i), t_fov, s_fov), t, t_fov)


def test_draw_pair_blocks_share_photographs_but_stay_uniform() -> None:
    from anomalygen.generator import PAIR_BLOCK, PAIR_POOL, draw_pair

    n = 1000
    pairs = [draw_pair(7, i, sample_rng(7, i), n) for i in range(40 * PAIR_BLOCK)]
    assert all(t != s and 0 <= t < n and 0 <= s < n for t, s in pairs)
    for b in range(40):  # a block reads at most PAIR_POOL photographs
        block = pairs[b * PAIR_BLOCK : (b + 1) * PAIR_BLOCK]
        assert len({x for pair in block for x in pair}) <= PAIR_POOL
    # over many blocks every photograph can be drawn: targets spread over the whole range
    targets = np.array([t for t, _ in pairs])
    assert len(np.unique(targets)) > 400
    assert np.histogram(targets, bins=4, range=(0, n))[0].min() > 0.15 * len(targets)
    # few photographs: every sample draws from all of them, and a rerun draws the same
    small = [draw_pair(7, i, sample_rng(7, i), 5) for i in range(200)]
    assert {t for t, _ in small} == set(range(5))
    assert small == [draw_pair(7, i, sample_rng(7, i), 5) for i in range(200)]
    # texture mode: the source comes from the textures
    assert all(0 <= s < 3 for _, s in (draw_pair(1, i, sample_rng(1, i), n, 3) for i in range(50)))


def test_presets_and_records_of_older_stores() -> None:
    from anomalygen.augment import OPS
    from anomalygen.generator import ADDED_FIELDS, PAPER_GENERATOR, config_from_record

    paper = generator_preset("paper")
    assert paper.lesions == (1, 4) and paper.p_normal == 0.5 and paper.alpha_range is None
    assert paper.tone.mode == "source" and paper.perlin.taper == 0.0
    assert paper.augment.ops == tuple(OPS)  # the paper's seven
    assert generator_preset("default") == GeneratorConfig()
    assert GeneratorConfig().tone.mode == "shift"
    with pytest.raises(ConfigError, match="--preset"):
        generator_preset("best")
    # A record written before the new fields existed reads as the generator it was made with.
    old = {k: v for k, v in to_dict(paper).items() if k not in ("alpha_range", "tone", "placement")}
    del old["perlin"]["taper"], old["perlin"]["max_anisotropy"]
    assert config_from_record(old) == paper
    assert set(ADDED_FIELDS) <= set(PAPER_GENERATOR)
    assert config_from_record(to_dict(GeneratorConfig())) == GeneratorConfig()
