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
from anomalygen.fundus import load_fundus
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
    result = predict(detector, [photos / "sub" / "c.png"], out, save_maps=True, progress=False)
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
