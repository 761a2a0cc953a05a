"""evaluate: the paper's metrics on generated layouts and idrid-mini, with tiny detectors.

Two kinds of detector: a tiny untrained ReSynthDetect (the real forward pass, 64 px), and an
"oracle" that marks blue pixels, where the generated abnormal photographs have blue lesions, so
that metrics must come out near 1 (or near 0 when inverted): that catches swapped labels, masks
or FOV handling that random networks would hide.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalygen.errors import AnomalygenError, ConfigError
from resynth_models.datasets import eyeq_items, folder_items, idrid_items, load_item
from resynth_models.devices import resolve_device
from resynth_models.evaluate import anomaly_maps, evaluate, prefetch
from resynth_models.networks import NetworkConfig, build_model
from tests import synthetic
from tests.synthetic import make_fundus

SIZE = 64


class TinyDetector:
    """A Detector (resynth_models.checkpoint contract) around a tiny untrained network."""

    scoring = "localization"

    def __init__(self, size: int = SIZE, clahe: bool = True, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = build_model(NetworkConfig(rec_width=4, rec_depth=3, loc_width=4, loc_depth=3))
        self.model.eval()
        self.size, self.clahe = size, clahe

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.anomaly_map(x)


class BlueOracle:
    """Probability = how much bluer than red a pixel is: the painted lesions, nothing else."""

    scoring = "localization"

    def __init__(self, size: int = SIZE, invert: bool = False) -> None:
        self.size, self.clahe, self.invert = size, False, invert

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        p = (x[:, 2] - x[:, 0]).clamp(0, 1)
        return 1 - p if self.invert else p


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def lesioned(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic fundus with a blue square lesion, and its mask (0/255)."""
    rgb = make_fundus(size, seed)
    mask = np.zeros((size, size), np.uint8)
    y, x = 30 + 5 * seed, 36 + 3 * seed
    mask[y : y + 12, x : x + 12] = 255
    rgb[mask > 0] = (20, 40, 230)
    return rgb, mask


@pytest.fixture()
def folder_layout(tmp_path: Path) -> Path:
    """normal/ (3), abnormal/ (3 with blue lesions + 1 corrupt file) and masks/."""
    root = tmp_path / "set"
    for k in range(3):
        _save(root / "normal" / f"n{k}.png", make_fundus(96 + 8 * k, 10 + k))
        rgb, mask = lesioned(k)
        _save(root / "abnormal" / f"a{k}.png", rgb)
        _save(root / "masks" / f"a{k}.png", mask)
    (root / "abnormal" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    _save(root / "masks" / "broken.png", np.zeros((96, 96), np.uint8))
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _in_unit(value: float | None) -> bool:
    return value is not None and 0.0 <= value <= 1.0


def test_folder_layout_outputs_and_bad_image(folder_layout: Path, tmp_path: Path) -> None:
    eval_set = folder_items(folder_layout)
    out = tmp_path / "eval"
    messages: list[str] = []
    result = evaluate(TinyDetector(), eval_set, out, batch_size=2, progress=False,
                      log=messages.append, workers=2)  # fmt: skip
    for name in ("metrics.json", "metrics.md", "per_image.csv"):
        assert (out / name).is_file()
    # the corrupt file: reported (name + reason) and skipped, the rest scored
    assert [s["name"] for s in result.skipped] == ["abnormal/broken.jpg"]
    assert result.skipped[0]["reason"]
    assert any("broken.jpg" in m for m in messages)
    rows = _read_csv(out / "per_image.csv")
    assert sorted(r["file"] for r in rows) == sorted(
        [f"normal/n{k}.png" for k in range(3)] + [f"abnormal/a{k}.png" for k in range(3)]
    )
    for row in rows:
        assert 0.0 <= float(row["score"]) <= float(row["max_prob"]) <= 1.0
        assert 0.0 <= float(row["area_above_threshold"]) <= 1.0
        assert (row["pixel_aupr"] != "") == row["file"].startswith("abnormal/")
        assert (row["label"] == "1") == row["file"].startswith("abnormal/")
    data = json.loads((out / "metrics.json").read_text())
    assert data["format"] == "resynth-evaluation" and data["n_scored"] == 6
    assert data["skipped"][0]["name"] == "abnormal/broken.jpg"
    assert _in_unit(data["image_level"]["auroc"])
    pixel = data["pixel_level"]
    for key in ("auroc", "aupr", "balanced_accuracy", "best_balanced_accuracy", "best_threshold"):
        assert _in_unit(pixel[key]), key
    assert pixel["threshold"] == 0.5
    md = (out / "metrics.md").read_text()
    assert "| AUROC | ACC | AUPR |" in md and "0.931" in md  # Table 2 layout + paper's row
    assert "broken.jpg" in md
    # overlays: best and worst of the three images with lesions, each shown once
    pngs = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert len(pngs) == 3 and any(p.startswith("best_01_") for p in pngs)
    assert any(p.startswith("worst_01_") for p in pngs)
    assert len(data["overlays"]) == 3


def test_pixel_metrics_match_sklearn_on_the_fov(folder_layout: Path) -> None:
    """The streamed pixel metrics equal scikit-learn on the FOV pixels of the same maps."""
    detector = TinyDetector()
    eval_set = folder_items(folder_layout)
    result = evaluate(detector, eval_set, None, batch_size=3, progress=False)
    scores, truth = [], []
    for item in eval_set:
        if item.name.endswith("broken.jpg"):
            continue
        prepared, mask = load_item(item, SIZE, True)
        prob = anomaly_maps(detector, [prepared.image], torch.device("cpu"))[0]
        fov = prepared.fov.astype(bool)
        scores.append(prob[fov])
        truth.append(mask[fov])
    s, y = np.concatenate(scores), np.concatenate(truth)
    assert result.pixel_level["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-4)
    assert result.pixel_level["aupr"] == pytest.approx(average_precision_score(y, s), abs=1e-4)
    assert result.pixel_level["n_pixels"] == s.size


def test_oracle_gives_perfect_scores_and_inverse_gives_poor(folder_layout: Path) -> None:
    eval_set = folder_items(folder_layout)
    good = evaluate(BlueOracle(), eval_set, None, progress=False)
    assert good.image_level["auroc"] == 1.0
    assert good.pixel_level["auroc"] > 0.98 and good.pixel_level["aupr"] > 0.8
    assert good.pixel_level["best_balanced_accuracy"] > 0.95
    per_image = {r.name: r for r in good.images}
    assert per_image["abnormal/a0.png"].pixel_aupr > 0.8
    assert per_image["normal/n0.png"].pixel_aupr is None
    bad = evaluate(BlueOracle(invert=True), eval_set, None, progress=False)
    assert bad.pixel_level["auroc"] < 0.05


def test_eyeq_table1_and_heatmap_overlays(tmp_path: Path) -> None:
    folder = tmp_path / "eyeq"
    rows = [("0_left.jpeg", 0, 0), ("0_right.jpeg", 0, 0), ("1_left.jpeg", 0, 2),
            ("1_right.jpeg", 0, 4), ("2_left.jpeg", 1, 1), ("3_left.jpeg", 0, 2)]  # fmt: skip
    for k, (name, _, grade) in enumerate(rows):
        rgb = lesioned(k)[0] if grade else make_fundus(96, 20 + k)
        _save(folder / name, rgb)
    lines = ["image,quality,DR_grade"] + [f"{n},{q},{g}" for n, q, g in rows]
    (folder / "Label_EyeQ_test.csv").write_text("\n".join(lines) + "\n")
    eval_set = eyeq_items(folder)  # good quality only: 2_left.jpeg (usable) is left out
    out = tmp_path / "out"
    result = evaluate(BlueOracle(), eval_set, out, progress=False, n_overlays=2)
    assert set(result.image_level) == {"0vs1", "0vs2", "0vs3", "0vs4", "0vsall"}
    assert result.image_level["0vs1"] is None and result.image_level["0vs3"] is None
    assert result.image_level["0vs2"] == 1.0 and result.image_level["0vsall"] == 1.0
    assert result.pixel_level is None and "no ground-truth" in result.pixel_level_note
    md = (out / "metrics.md").read_text()
    assert "| 0vs1 | 0vs2 | 0vs3 | 0vs4 | 0 vs all |" in md and "n/a" in md
    assert "0.722" in md  # the paper's Table 1 row for reference
    rows_out = _read_csv(out / "per_image.csv")
    assert {r["grade"] for r in rows_out} == {"0", "2", "4"}
    kinds = {o["kind"] for o in result.overlays}
    assert kinds <= {"best", "missed", "false-alarm"} and "best" in kinds
    assert all((out / o["file"]).is_file() for o in result.overlays)


def test_undefined_metrics_are_reported_not_raised(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for k in range(2):
        _save(root / "abnormal" / f"a{k}.png", lesioned(k)[0])
    out = tmp_path / "out"
    result = evaluate(TinyDetector(), folder_items(root), out, progress=False)
    assert result.image_level is None and "no normal" in result.image_level_note
    assert result.pixel_level is None and "no ground-truth" in result.pixel_level_note
    md = (out / "metrics.md").read_text()
    assert md.count("Not computed") == 2
    data = json.loads((out / "metrics.json").read_text())
    assert data["image_level"] is None and data["image_level_note"]


def test_all_images_bad_and_bad_options(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "normal").mkdir(parents=True)
    (root / "normal" / "x.png").write_bytes(b"nope")
    with pytest.raises(AnomalygenError, match=r"no image .* could be scored"):
        evaluate(TinyDetector(), folder_items(root), None, progress=False)
    good = tmp_path / "good"
    _save(good / "normal" / "n.png", make_fundus(64, 1))
    with pytest.raises(ConfigError, match="batch-size"):
        evaluate(TinyDetector(), folder_items(good), None, batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="threshold"):
        evaluate(TinyDetector(), folder_items(good), None, threshold=1.5, progress=False)


def test_nan_detector_is_an_error(tmp_path: Path) -> None:
    class NaNDetector(BlueOracle):
        def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full(x.shape[:1] + x.shape[2:], float("nan"))

    _save(tmp_path / "normal" / "n.png", make_fundus(64, 1))
    with pytest.raises(AnomalygenError, match="NaN"):
        evaluate(NaNDetector(), folder_items(tmp_path), None, progress=False)


def test_idrid_mini(shared_data: Path, tmp_path: Path) -> None:
    eval_set = idrid_items(shared_data / "idrid-mini", split="all")
    out = tmp_path / "idrid"
    result = evaluate(TinyDetector(), eval_set, out, progress=False)
    assert result.n_scored == 2 and not result.skipped
    for key in ("auroc", "aupr", "balanced_accuracy"):
        assert _in_unit(result.pixel_level[key])
    assert result.pixel_level["n_lesion_pixels"] > 0
    assert "--normal-dir" in result.pixel_level_note  # the paper's set also has normals
    assert result.image_level is None and "--normal-dir" in result.image_level_note
    assert len(_read_csv(out / "per_image.csv")) == 2
    assert len(list((out / "overlays").glob("*.png"))) == 2


def test_prefetch_keeps_order_and_reports_errors() -> None:
    def load(k: int) -> int:
        if k % 3 == 0:
            raise ValueError(f"bad {k}")
        if k == 4:  # OpenCV's own error type, as an odd image can raise
            cv2.resize(np.zeros((0, 0), np.uint8), (4, 4))
        return k * k

    got = list(prefetch(range(10), load, workers=3))
    assert [item for item, _, _ in got] == list(range(10))
    assert [v for k, v, e in got if e is None] == [k * k for k in range(10) if k % 3 and k != 4]
    errors = [(k, e) for k, _, e in got if e is not None]
    assert [k for k, _ in errors] == [0, 3, 4, 6, 9]
    assert isinstance(errors[2][1], cv2.error) and str(errors[0][1]) == "bad 0"

    def buggy(k: int) -> int:
        raise KeyError(k)  # a bug is not a bad image: it must propagate

    with pytest.raises(KeyError):
        list(prefetch(range(3), buggy, workers=2))


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


# ---------------------------------------------------------------------------------------------
# The command line (in process, through run_app: what a user sees)


def make_run(run: Path, size: int = SIZE, seed: int = 0) -> Path:
    """A run folder as `resynth train` writes it (config.json + stage2.safetensors), with the
    weights of an untrained tiny network: enough to exercise loading and the commands."""
    from anomalygen.config import to_dict
    from resynth_models.checkpoint import (
        CONFIG_FILE,
        RUN_FORMAT,
        RUN_FORMAT_VERSION,
        save_weights,
        stage_weights_path,
        write_json,
    )

    detector = TinyDetector(size, seed=seed)
    network = detector.model.config
    run.mkdir(parents=True, exist_ok=True)
    write_json(
        run / CONFIG_FILE,
        {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
         "network": to_dict(network), "data": {"size": size, "clahe": True}},
    )  # fmt: skip
    save_weights(stage_weights_path(run, 2), detector.model.state_dict(), stage=2, network=network)
    return run


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """``resynth ARGS`` in this process: (exit code, stdout, stderr)."""
    from anomalygen_cli.resynth_cli import main

    return synthetic.run_cli(main, "resynth", monkeypatch, capsys, *args)


def test_cli_evaluate(folder_layout: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    run = make_run(tmp_path / "run")
    out = tmp_path / "eval"
    code, stdout, stderr = run_cli(
        ["evaluate", "--checkpoint", run, "--dataset", "folder", "--root", folder_layout,
         "--out", out, "--device", "cpu", "--batch-size", "2", "--quiet"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, stderr
    assert "| AUROC | ACC | AUPR |" in stdout and "normal vs abnormal" in stdout
    assert "1 image(s) skipped" in stderr
    assert "skipped abnormal/broken.jpg: " in stderr  # named with its reason, even with -q
    data = json.loads((out / "metrics.json").read_text())
    assert data["detector"]["checkpoint"] == str(run) and data["n_scored"] == 6
    assert _in_unit(data["pixel_level"]["aupr"])
    # the default output folder is inside the run
    code, _, stderr = run_cli(
        ["evaluate", "--checkpoint", run, "--dataset", "folder", "--root", folder_layout, "-q"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, stderr
    assert (run / "eval-folder" / "metrics.md").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "kaggle"], "--dataset must be one of idrid, eyeq, folder"),
        (["--split", "test"], "--split is for --dataset idrid"),
        (["--labels", "x.csv"], "--labels is for --dataset eyeq"),
        (["--device", "tpu"], "--device: must be auto, cpu, cuda"),
        (["--root", "/nonexistent/set"], "--root: /nonexistent/set does not exist"),
        (["--checkpoint", "/nonexistent/run"], "--checkpoint: /nonexistent/run does not exist"),
        (["--scoring", "reconstruction"], "no stage-1 weights"),
    ],
)
def test_cli_evaluate_bad_arguments(
    args: list[str], message: str, folder_layout: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    run = make_run(tmp_path / "run")
    base = {"--checkpoint": run, "--dataset": "folder", "--root": folder_layout}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value
    argv = ["evaluate", "-q", *[str(x) for kv in base.items() for x in kv]]
    code, _, stderr = run_cli(argv, capsys, monkeypatch)
    assert code == 1
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], stderr
    assert "Traceback" not in stderr


def test_cli_evaluate_not_a_run_folder(folder_layout: Path, tmp_path: Path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    code, _, stderr = run_cli(
        ["evaluate", "--checkpoint", tmp_path / "empty", "--dataset", "folder", "--root",
         folder_layout, "-q"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 1 and stderr.startswith("error: ") and "Traceback" not in stderr


def test_cli_module_imports_without_torch() -> None:
    """The command modules import torch inside the commands only (fast --help)."""
    import subprocess
    import sys

    code = "import sys, anomalygen_cli.evaluate_cmd; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


# ---------------------------------------------------------------------------------------------
# Per lesion type, curves, the baseline and the detector's own threshold

IDRID_IMAGES = Path("A. Segmentation/1. Original Images/b. Testing Set")
IDRID_TRUTHS = Path("A. Segmentation/2. All Segmentation Groundtruths/b. Testing Set")


def _tif(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), (mask > 0).astype(np.uint8).tobytes())
    im.putpalette([0, 0, 0, 255, 0, 0])
    im.save(path)


@pytest.fixture()
def typed_idrid(tmp_path: Path) -> Path:
    """An IDRiD layout of three images with blue "EX" blocks and dark "HE" blocks (HE only in
    two of them): a blue oracle finds EX and not HE."""
    root = tmp_path / "idrid"
    for k in range(3):
        rgb = make_fundus(96, 20 + k)
        ex = np.zeros((96, 96), np.uint8)
        ex[30 + 4 * k : 42 + 4 * k, 30:42] = 1
        rgb[ex > 0] = (20, 40, 230)
        _save(root / IDRID_IMAGES / f"IDRiD_6{k}.png", rgb)
        _tif(root / IDRID_TRUTHS / "3. Hard Exudates" / f"IDRiD_6{k}_EX.tif", ex)
        if k < 2:
            he = np.zeros((96, 96), np.uint8)
            he[55:63, 50 + 5 * k : 58 + 5 * k] = 1
            rgb[he > 0] = (60, 10, 10)
            _save(root / IDRID_IMAGES / f"IDRiD_6{k}.png", rgb)
            _tif(root / IDRID_TRUTHS / "2. Haemorrhages" / f"IDRiD_6{k}_HE.tif", he)
    return root


def test_per_lesion_type_metrics_match_sklearn(typed_idrid: Path, tmp_path: Path) -> None:
    from resynth_models.datasets import load_item_by_type

    eval_set = idrid_items(typed_idrid, split="test")
    assert eval_set.lesion_types == ("HE", "EX")
    oracle = BlueOracle()
    result = evaluate(oracle, eval_set, tmp_path / "eval", progress=False)
    assert set(result.pixel_by_type) == {"HE", "EX"}
    assert result.pixel_by_type["HE"]["n_images"] == 2
    assert result.pixel_by_type["EX"]["n_images"] == 3
    assert result.pixel_by_type["EX"]["auroc"] > 0.98  # the oracle sees blue lesions...
    assert result.pixel_by_type["HE"]["auroc"] < 0.6  # ...and not dark ones
    # each type: its pixels against the pixels of no lesion, as scikit-learn computes it
    for kind in ("HE", "EX"):
        scores, truth = [], []
        for item in eval_set:
            prepared, masks = load_item_by_type(item, SIZE, False)
            prob = anomaly_maps(oracle, [prepared.image], torch.device("cpu"))[0]
            union = np.zeros(prepared.fov.shape, np.uint8)
            for m in masks.values():
                union |= m
            mine = masks.get(kind, np.zeros_like(union))
            keep = prepared.fov.astype(bool) & ((mine > 0) | (union == 0))
            scores.append(prob[keep])
            truth.append(mine[keep])
        s, y = np.concatenate(scores), np.concatenate(truth)
        got = result.pixel_by_type[kind]
        assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-4)
        assert got["aupr"] == pytest.approx(average_precision_score(y, s), abs=1e-4)
        assert got["n_lesion_pixels"] == int(y.sum())
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "## Pixel level per lesion type" in md
    assert "| haemorrhages (HE) | 2 |" in md and "| hard exudates (EX) | 3 |" in md
    data = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(data["pixel_by_type"]) == {"HE", "EX"}
    # curves: one PNG, and every point in the CSV, for each type and for all
    png = cv2.imread(str(tmp_path / "eval" / "curves.png"))
    assert png is not None and png.shape[1] > png.shape[0] > 200
    rows = _read_csv(tmp_path / "eval" / "curves.csv")
    assert {r["lesions"] for r in rows} == {"HE", "EX", "all"}
    ex = [r for r in rows if r["lesions"] == "EX"]
    assert all(0 <= float(r[k]) <= 1 for r in ex for k in ("fpr", "tpr", "precision", "recall"))
    assert float(ex[-1]["recall"]) == 1.0


def test_curves_agree_with_sklearn() -> None:
    from sklearn.metrics import auc, roc_curve

    from resynth_models.metrics import PixelMetrics

    rng = np.random.default_rng(3)
    y = rng.random(50_000) < 0.03
    p = np.clip(rng.random(50_000) * 0.6 + 0.35 * y, 0, 1).astype(np.float32)
    metrics = PixelMetrics()
    metrics.update(p, y)
    curves = metrics.curves(max_points=500)
    assert len(curves["fpr"]) <= 500
    assert np.all(np.diff(curves["fpr"]) >= 0) and np.all(np.diff(curves["tpr"]) >= 0)
    fpr, tpr, _ = roc_curve(y, p)
    assert auc(np.r_[0, curves["fpr"]], np.r_[0, curves["tpr"]]) == pytest.approx(
        auc(fpr, tpr), abs=2e-3
    )
    # each point's threshold gives that point
    for i in (0, len(curves["tpr"]) // 2, len(curves["tpr"]) - 1):
        t = curves["threshold"][i]
        assert curves["tpr"][i] == pytest.approx((p[y] >= t).mean(), abs=1e-12)


def test_median_baseline_lights_spots_and_cli(typed_idrid: Path, tmp_path: Path, capsys,
                                               monkeypatch) -> None:  # fmt: skip
    from resynth_models.baseline import MedianResidual

    baseline = MedianResidual(64)
    assert baseline.kernel == 9  # 64 / 8, odd
    image = np.full((1, 3, 64, 64), 0.5, dtype=np.float32)
    image[0, 1, 30:33, 30:33] = 0.9  # a bright spot in green
    maps = baseline.anomaly_map(torch.from_numpy(image)).numpy()
    assert maps.shape == (1, 64, 64)
    assert maps[0, 31, 31] == pytest.approx(100 / 255, abs=2 / 255)
    assert maps[0, 5, 5] == 0.0
    code, stdout, stderr = run_cli(
        ["evaluate", "--baseline", "median", "--size", "64", "--dataset", "idrid", "--root",
         typed_idrid, "--out", tmp_path / "base", "-q"], capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, stderr
    data = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert data["detector"]["checkpoint"] == "baseline median" and data["detector"]["size"] == 64
    assert "Pixel level per lesion type" in stdout
    code, _, stderr = run_cli(["evaluate", "--baseline", "median", "--dataset", "idrid", "--root",
                               typed_idrid, "-q"], capsys, monkeypatch)  # fmt: skip
    assert code == 1 and "--baseline needs --out" in stderr
    code, _, stderr = run_cli(["evaluate", "--dataset", "idrid", "--root", typed_idrid, "-q"],
                              capsys, monkeypatch)  # fmt: skip
    assert code == 1 and "give --checkpoint RUN" in stderr


def test_the_detector_threshold_is_used_unless_given(folder_layout: Path, tmp_path: Path) -> None:
    from resynth_models.checkpoint import (
        CheckpointError,
        load_detector,
        save_weights,
        stage_weights_path,
    )

    run = make_run(tmp_path / "run")
    assert load_detector(run).threshold is None  # an older run: no threshold recorded
    network = load_detector(run).network
    model = load_detector(run).model
    save_weights(stage_weights_path(run, 2), model.state_dict(), stage=2, network=network,
                 threshold=0.125)  # fmt: skip
    detector = load_detector(run)
    assert detector.threshold == 0.125
    eval_set = folder_items(folder_layout)
    assert evaluate(detector, eval_set, None, progress=False).threshold == 0.125
    assert evaluate(detector, eval_set, None, threshold=0.5, progress=False).threshold == 0.5
    save_weights(stage_weights_path(run, 2), model.state_dict(), stage=2, network=network,
                 threshold=7.0)  # fmt: skip
    with pytest.raises(CheckpointError, match="outside"):
        load_detector(run)


def test_flip_averages_the_mirrored_map(tmp_path: Path) -> None:
    from resynth_models.checkpoint import load_detector

    run = make_run(tmp_path / "run")
    plain, flipped = load_detector(run), load_detector(run, flip=True)
    x = torch.rand(2, 3, SIZE, SIZE)
    a = plain.anomaly_map(x)
    b = plain.anomaly_map(x.flip(-1)).flip(-1)
    assert not torch.allclose(a, b)  # an untrained network is not mirror-symmetric
    torch.testing.assert_close(flipped.anomaly_map(x), (a + b) / 2)
    torch.testing.assert_close(flipped.anomaly_map(x.flip(-1)).flip(-1), flipped.anomaly_map(x))


def test_the_run_decides_the_flip_unless_given(tmp_path: Path) -> None:
    from resynth_models.checkpoint import (
        CONFIG_FILE,
        CheckpointError,
        load_detector,
        read_run_config,
        write_json,
    )
    from resynth_models.train_config import TRAIN_PRESETS, TrainConfig

    run = make_run(tmp_path / "run")
    assert not load_detector(run).flip  # a run from before test_flip: none
    config = read_run_config(run)
    write_json(run / CONFIG_FILE, {**config, "train": {"test_flip": True}})
    assert load_detector(run).flip
    assert not load_detector(run, flip=False).flip
    write_json(run / CONFIG_FILE, {**config, "train": {"test_flip": "false"}})
    with pytest.raises(CheckpointError, match="test_flip 'false' is not true or false"):
        load_detector(run)
    # the paper's configuration has none; our presets have them
    assert not TrainConfig().test_flip
    assert TRAIN_PRESETS["default"]["test_flip"] and TRAIN_PRESETS["small"]["test_flip"]
    assert "test_flip" not in TRAIN_PRESETS["paper"]
