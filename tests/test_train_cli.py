"""``resynth train`` through ``run_app`` (in process, as a user's shell runs it): a tiny run, and
one-line messages with exit code 1 for every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from anomalygen_cli.resynth_cli import main  # noqa: E402
from tests.synthetic import render_tiny_store, run_cli  # noqa: E402

TINY = ["--preset", "small", "--size", "32", "--batch-size", "2", "--steps", "2", "--workers",
        "0", "--rec-width", "4", "--rec-depth", "3", "--loc-width", "4", "--loc-depth", "3",
        "--val-fraction", "0", "--device", "cpu", "--quiet"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``resynth ARGS``: (exit code, stdout, stderr)."""
    return run_cli(main, "resynth", monkeypatch, capsys, *args)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_tiny_store(tmp_path_factory.mktemp("cli_store"), 8, photos=3)


def test_train_then_resume(monkeypatch, capsys, store: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run(monkeypatch, capsys, "train", "--data", store, "--out", run_dir, *TINY)
    assert code == 0, err
    assert "stage 1: 2 steps" in out and "stage 2: 2 steps" in out
    assert (run_dir / "stage2.safetensors").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["size"] == 32 and config["network"]["rec_width"] == 4
    code, out, err = run(
        monkeypatch, capsys, "train", "--data", store, "--out", run_dir, *TINY, "--resume"
    )
    assert code == 0, err
    assert out.count("already complete") == 2


def _one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_stores(monkeypatch, capsys, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "train", "--data", tmp_path / "nope.zarr",
                       "--out", out, *TINY)  # fmt: skip
    _one_line_error(code, err, "--data", "nope.zarr", "no store")

    broken = tmp_path / "broken.zarr"
    shutil.copytree(store, broken)
    meta = json.loads((broken / "zarr.json").read_text())
    meta["attributes"]["pools"] = {}
    (broken / "zarr.json").write_text(json.dumps(meta))
    code, _, err = run(monkeypatch, capsys, "train", "--data", broken, "--out", out, *TINY)
    _one_line_error(code, err, "attribute 'pools' must map 'normals'")  # refused on open

    meta["attributes"]["format_version"] = 42
    (broken / "zarr.json").write_text(json.dumps(meta))
    code, _, err = run(monkeypatch, capsys, "train", "--data", broken, "--out", out, *TINY)
    _one_line_error(code, err, "format version 42")
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--stage", "2"], ["--stage 2", "stage1.safetensors not found", "--stage1-from"]),
        (["--stage", "3"], ["--stage", "1, 2 or all"]),
        (["--warmup", "soon"], ["--warmup"]),
        (["--epochs", "3"], ["--epochs and --steps"]),
        (["--amp", "fp8"], ["--amp"]),
        (["--rec-features", "magic"], ["rec_features"]),
        (["--preset", "huge"], ["--preset", "huge"]),
        (["--resume", "--overwrite"], ["choose one"]),
        (["--size", "30"], ["multiples of 4"]),
    ],
)
def test_bad_options(monkeypatch, capsys, store, tmp_path, extra, fragments) -> None:
    code, _, err = run(monkeypatch, capsys, "train", "--data", store, "--out", tmp_path / "r",
                       *TINY, *extra)  # fmt: skip
    _one_line_error(code, err, *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(monkeypatch, capsys, store: Path, tmp_path: Path) -> None:
    code, _, err = run(monkeypatch, capsys, "train", "--data", store, "--out", tmp_path / "r",
                       *TINY, "--device", "cuda")  # fmt: skip
    _one_line_error(code, err, "--device cuda", "CUDA is not available")


def test_existing_run_with_another_config(monkeypatch, capsys, store, tmp_path) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "train", "--data", store, "--out", run_dir, *TINY,
                       "--stage", "1")  # fmt: skip
    assert code == 0, err
    code, _, err = run(monkeypatch, capsys, "train", "--data", store, "--out", run_dir, *TINY,
                       "--stage", "1", "--lr", "0.01")  # fmt: skip
    _one_line_error(code, err, "different configuration", "lr 0.001 -> 0.01", "--overwrite")
    code, _, err = run(monkeypatch, capsys, "train", "--data", store, "--out", run_dir, *TINY,
                       "--stage", "1")  # fmt: skip
    _one_line_error(code, err, "stage 1 is complete", "--resume")
    (tmp_path / "file").write_text("x")
    code, _, err = run(monkeypatch, capsys, "train", "--data", store, "--out", tmp_path / "file",
                       *TINY)  # fmt: skip
    _one_line_error(code, err, "--out", "a file is in the way")


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys, anomalygen_cli.train_cmd; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[1])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_resume_alone_takes_the_run_s_configuration(monkeypatch, capsys, store, tmp_path) -> None:
    """--resume without the options of the first command: the run's config.json is used, and
    only options given again are compared with it."""
    run_dir = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "train", "--data", store, "--out", run_dir, *TINY,
                       "--stage", "1")  # fmt: skip
    assert code == 0, err
    code, out, err = run(monkeypatch, capsys, "train", "--data", store, "--out", run_dir,
                         "--resume", "-q")  # fmt: skip
    assert code == 0, err
    assert out.count("already complete") == 1 and "stage 2" not in out  # the run's --stage 1
    code, _, err = run(monkeypatch, capsys, "train", "--data", store, "--out", run_dir,
                       "--resume", "--lr", "0.5", "-q")  # fmt: skip
    _one_line_error(code, err, "different configuration (lr 0.001 -> 0.5);", "--overwrite")
    # a run made before a training option existed: the option's default is no difference
    path = run_dir / "config.json"
    record = json.loads(path.read_text())
    for name in ("photometric", "upsample"):
        del record["train"][name]
    path.write_text(json.dumps(record))
    code, out, err = run(monkeypatch, capsys, "train", "--data", store, "--out", run_dir,
                         "--resume", "--stage", "2", "--device", "cpu", "-q")  # fmt: skip
    assert code == 0, err
    assert "stage 2: 2 steps" in out and (run_dir / "stage2.safetensors").is_file()


def test_size_above_the_store_s_needs_upsample(monkeypatch, capsys, store, tmp_path) -> None:
    args = ["train", "--data", store, *TINY, "--size", "128", "--stage", "1", "--steps", "1"]
    code, _, err = run(monkeypatch, capsys, *args, "--out", tmp_path / "a")
    _one_line_error(code, err, "--size 128: above the store's 64 px", "--upsample")
    assert not (tmp_path / "a").exists()
    code, _, err = run(monkeypatch, capsys, *args, "--out", tmp_path / "b", "--upsample")
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "config.json").read_text())["data"]["size"] == 128


def test_default_preset_on_a_cpu_says_so_once(monkeypatch, capsys, store, tmp_path) -> None:
    code, _, err = run(monkeypatch, capsys, "train", "--data", store, "--out", tmp_path / "r",
                       "--stage", "1", "--steps", "1", "--batch-size", "1", "--workers", "0",
                       "--device", "cpu", "-q")  # fmt: skip
    assert code == 0, err
    assert err.count("note: the default preset is sized for a GPU") == 1
    assert "--preset small" in err
