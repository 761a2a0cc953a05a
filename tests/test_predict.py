"""predict: one overlay per photograph, scores.csv, 16-bit maps, bad files skipped."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from anomalygen.errors import AnomalygenError, ConfigError
from anomalygen.fundus import load_fundus, read_image, unapply_square
from resynth_models.evaluate import anomaly_maps
from resynth_models.metrics import image_score
from resynth_models.predict import find_inputs, predict
from tests.synthetic import make_fundus
from tests.test_evaluate import BlueOracle, TinyDetector, lesioned


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """photos/a.png, photos/sub/b.jpg, photos/sub/c.png (lesioned), photos/bad.png (corrupt),
    photos/notes.txt (ignored)."""
    root = tmp_path / "photos"
    _save(root / "a.png", make_fundus(80, 1))
    _save(root / "sub" / "b.jpg", make_fundus(96, 2, width_ratio=1.2))
    _save(root / "sub" / "c.png", lesioned(0)[0])
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "notes.txt").write_text("not an image")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_folder_and_file(photos: Path, tmp_path: Path) -> None:
    single = tmp_path / "a.png"  # same name as photos/a.png: must not overwrite it
    _save(single, make_fundus(72, 5))
    out = tmp_path / "pred"
    messages: list[str] = []
    result = predict(TinyDetector(), [photos, single], out, batch_size=2, progress=False,
                     save_maps=True, log=messages.append)  # fmt: skip
    names = sorted(r.name for r in result.predictions)
    assert names == ["a-2.png", "a.png", "sub/b.jpg", "sub/c.png"]
    assert [s["name"] for s in result.skipped] == ["bad.png"] and any(
        "bad.png" in m for m in messages
    )
    overlays = sorted(p.relative_to(out).as_posix() for p in (out / "overlays").rglob("*.png"))
    assert overlays == ["overlays/a-2.png", "overlays/a.png", "overlays/sub/b.png",
                        "overlays/sub/c.png"]  # fmt: skip
    rows = _rows(out / "scores.csv")
    assert sorted(r["file"] for r in rows) == names
    for row in rows:
        assert 0.0 <= float(row["score"]) <= float(row["max_prob"]) <= 1.0
        assert 0.0 <= float(row["area_above_threshold"]) <= 1.0
        assert (out / row["overlay"]).is_file() and (out / row["map"]).is_file()
    assert _rows(out / "skipped.csv")[0]["file"] == "bad.png"
    # the overlay: two panels side by side (+ colour bar) under a caption
    picture = cv2.imread(str(out / "overlays" / "a.png"))
    assert picture.shape[0] > 64 and picture.shape[1] > 2 * 64


def test_saved_map_is_the_probability(photos: Path, tmp_path: Path) -> None:
    detector = BlueOracle(size=64)
    out = tmp_path / "pred"
    result = predict(detector, [photos / "sub" / "c.png"], out, save_maps=True, progress=False,
                     frame="square")  # fmt: skip
    (row,) = result.predictions
    saved = cv2.imread(str(out / row.map), cv2.IMREAD_UNCHANGED)
    assert saved.dtype == np.uint16 and saved.shape == (64, 64)
    prepared = load_fundus(photos / "sub" / "c.png", 64, clahe=False)
    prob = anomaly_maps(detector, [prepared.image], torch.device("cpu"))[0]
    prob[prepared.fov == 0] = 0
    np.testing.assert_allclose(saved / 65535.0, prob, atol=1e-4)
    assert row.score == pytest.approx(image_score(prob, prepared.fov), abs=1e-6)
    assert row.score > 0.7  # the oracle sees the blue lesion ((230 - 20) / 255)
    assert row.pixels_above > 0 and row.fov_pixels == int(prepared.fov.sum())


def test_inputs_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        find_inputs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        find_inputs([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="no inputs"):
        find_inputs([])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(AnomalygenError, match="no photograph could be scored"):
        predict(TinyDetector(), [bad], tmp_path / "out", progress=False)


def test_cli_predict(photos: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from tests.test_evaluate import make_run, run_cli

    run = make_run(tmp_path / "run")
    out = tmp_path / "pred"
    code, stdout, stderr = run_cli(
        ["predict", photos, "--checkpoint", run, "--out", out, "--device", "cpu", "-q",
         "--threshold", "0.2"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, stderr
    assert "sub/c.png" in stdout and "3 photograph(s) scored" in stdout
    assert "1 photograph(s) skipped" in stderr
    assert len(list((out / "overlays").rglob("*.png"))) == 3
    assert len(_rows(out / "scores.csv")) == 3 and not (out / "maps").exists()
    code, _, stderr = run_cli(
        ["predict", photos / "a.png", "--checkpoint", run, "--out", tmp_path / "square",
         "--device", "cpu", "-q", "--frame", "square", "--save-maps"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, stderr
    assert cv2.imread(str(tmp_path / "square" / "maps" / "a.png"), -1).shape == (64, 64)
    code, _, stderr = run_cli(
        ["predict", tmp_path / "nowhere.jpg", "--checkpoint", run, "--out", out, "-q"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert (
        code == 1 and stderr.strip() == f"error: {tmp_path / 'nowhere.jpg'}: no such file or folder"
    )


def test_inputs_sharing_a_stem_get_distinct_outputs(tmp_path: Path) -> None:
    for name in ("a.jpg", "a.png", "A.tif"):
        (tmp_path / name).write_bytes(b"")
    names = [item.name for item in find_inputs(sorted(tmp_path.iterdir()))]
    stems = [n.rsplit(".", 1)[0].lower() for n in names]
    assert len(set(stems)) == 3, names


def test_maps_and_overlays_in_the_photograph_s_own_frame(tmp_path: Path) -> None:
    """The default frame: maps and overlays at the photograph's size and shape, the lesion where
    it is in the photograph; the scores are the square frame's."""
    rgb = make_fundus(150, 4, width_ratio=1.5)  # 150 x 225: the square crop and padding matter
    mask = np.zeros(rgb.shape[:2], bool)
    mask[60:80, 120:145] = True
    rgb[mask] = (20, 40, 230)
    _save(tmp_path / "wide.png", rgb)
    detector = BlueOracle(size=64)
    kw = {"save_maps": True, "progress": False}
    square = predict(detector, [tmp_path / "wide.png"], tmp_path / "sq", frame="square", **kw)
    own = predict(detector, [tmp_path / "wide.png"], tmp_path / "own", **kw)
    assert own.predictions[0].score == square.predictions[0].score
    saved = cv2.imread(str(tmp_path / "own" / own.predictions[0].map), cv2.IMREAD_UNCHANGED)
    assert saved.shape == rgb.shape[:2] and saved.dtype == np.uint16
    prob = saved / 65535.0
    assert prob[mask].mean() > 0.6 and prob[~mask].max() < 0.6  # the lesion, where it is
    prepared = load_fundus(tmp_path / "wide.png", 64, clahe=False)
    small = cv2.imread(str(tmp_path / "sq" / square.predictions[0].map), cv2.IMREAD_UNCHANGED)
    want = unapply_square(small / 65535.0, prepared.square, rgb.shape[:2], nearest=False)
    fov = unapply_square(prepared.fov, prepared.square, rgb.shape[:2], nearest=True)
    np.testing.assert_allclose(prob, np.where(fov > 0, want, 0), atol=2e-4)
    overlay = cv2.imread(str(tmp_path / "own" / own.predictions[0].overlay))[..., ::-1]
    height = overlay.shape[0]
    assert height > rgb.shape[0] and overlay.shape[1] > 2 * rgb.shape[1]
    np.testing.assert_array_equal(overlay[height - rgb.shape[0] :, : rgb.shape[1]], rgb)
    assert read_image(tmp_path / "wide.png").shape == rgb.shape
    with pytest.raises(ConfigError, match="--frame"):
        predict(detector, [tmp_path / "wide.png"], tmp_path / "x", frame="round", **kw)


def test_predict_help(capsys, monkeypatch) -> None:
    """--threshold says what predict does with it (no balanced accuracy), --frame its choices."""
    from tests.test_help import option_row, render_help

    text = render_help(monkeypatch, capsys, "resynth", "predict")
    assert "balanced accuracy" not in text
    assert "overlays' captions" in text and "the run's own" in text
    assert " original|square " in option_row(text, "--frame")
