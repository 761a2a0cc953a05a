"""The whole user path through the command lines: render a tiny store, train both stages for a
few steps, evaluate on a folder layout with masks, predict on new photographs.

Commands run in this process through their ``main()``, so through ``run_app`` as from a user's
shell (a separate process per command would add seconds of imports each). 64 px, 32 samples,
2 steps per stage, networks 4 channels wide: about 4 s on a 2-core CPU.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.synthetic import make_fundus, run_cli
from tests.test_evaluate import lesioned

TINY_NETWORK = ["--rec-width", "4", "--rec-depth", "3", "--loc-width", "4", "--loc-depth", "3"]


def _main(module: str, args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``prog ARGS`` in process through the app's main(): (exit code, stdout, stderr)."""
    import importlib

    main = importlib.import_module(module).main
    return run_cli(main, module, monkeypatch, capsys, *args)


def _eval_layout(root: Path) -> Path:
    """normal/ (2 photographs never used for training), abnormal/ (3 with lesions) + masks/."""
    for k in range(2):
        path = root / "normal" / f"n{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_fundus(96, 40 + k)).save(path)
    for k in range(3):
        rgb, mask = lesioned(k)
        for folder, arr in (("abnormal", rgb), ("masks", mask)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / folder / f"a{k}.png")
    return root


def test_render_train_evaluate_predict(fundus_folder: Path, tmp_path: Path, monkeypatch, capsys):
    store, run = tmp_path / "synth.zarr", tmp_path / "run"

    code, out, err = _main(
        "anomalygen_cli.anomalygen_cli",
        ["render", "--src", fundus_folder, "--n", 32, "--size", 64, "--out", store,
         "--workers", 1, "--shard-size", 8, "--seed", 3, "-q"],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "32 samples" in out

    code, out, err = _main(
        "anomalygen_cli.resynth_cli",
        ["train", "--data", store, "--out", run, "--steps", 2, "--batch-size", 4,
         "--device", "cpu", "--workers", 0, *TINY_NETWORK, "-q"],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0, err
    assert (run / "stage1.safetensors").is_file() and (run / "stage2.safetensors").is_file()

    layout, out_dir = _eval_layout(tmp_path / "eval-set"), tmp_path / "eval"
    code, out, err = _main(
        "anomalygen_cli.resynth_cli",
        ["evaluate", "--checkpoint", run, "--dataset", "folder", "--root", layout,
         "--out", out_dir, "--device", "cpu", "--batch-size", 2, "--quiet"],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "| AUROC | ACC | AUPR |" in out

    data = json.loads((out_dir / "metrics.json").read_text())
    assert data["n_scored"] == 5 and not data["skipped"]
    assert data["detector"]["size"] == 64 and data["detector"]["scoring"] == "localization"
    assert 0.0 <= data["image_level"]["auroc"] <= 1.0
    for key in ("auroc", "aupr", "balanced_accuracy", "best_balanced_accuracy"):
        assert 0.0 <= data["pixel_level"][key] <= 1.0, key
    with (out_dir / "per_image.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert (out_dir / "metrics.md").is_file()
    assert len(list((out_dir / "overlays").glob("*.png"))) == 3

    # The stage-1 reconstruction error as the score (Table 3, row 1) from the same run.
    code, out, err = _main(
        "anomalygen_cli.resynth_cli",
        ["evaluate", "--checkpoint", run, "--dataset", "folder", "--root", layout,
         "--out", tmp_path / "eval-rec", "--device", "cpu", "--scoring", "reconstruction", "-q"],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0, err
    rec = json.loads((tmp_path / "eval-rec" / "metrics.json").read_text())
    assert rec["detector"]["scoring"] == "reconstruction"
    assert 0.0 <= rec["pixel_level"]["auroc"] <= 1.0

    pred_dir = tmp_path / "pred"
    code, out, err = _main(
        "anomalygen_cli.resynth_cli",
        ["predict", layout / "abnormal", layout / "normal" / "n0.png", "--checkpoint", run,
         "--out", pred_dir, "--device", "cpu", "--save-maps", "-q"],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0, err
    assert len(list((pred_dir / "overlays").glob("*.png"))) == 4
    saved = np.asarray(Image.open(pred_dir / "maps" / "a0.png"))
    assert saved.shape == (96, 96)  # the photograph's own frame
    with (pred_dir / "scores.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4
