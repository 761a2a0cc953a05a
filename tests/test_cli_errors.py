"""What ``run_app`` makes of errors that are not the project's own: a module of an optional
extra that is not installed is one line saying which extra to install, never an internal error."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from anomalygen_cli.common import EXTRA_MODULES, missing_extra

ROOT = Path(__file__).resolve().parents[1]


def _without_torch(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """``resynth ARGV`` in a fresh interpreter where ``import torch`` fails, as it does on a
    machine without the training extra."""
    code = (
        "import sys; sys.modules['torch'] = None; "
        f"sys.argv = ['resynth', *{list(argv)!r}]; "
        "from anomalygen_cli.resynth_cli import main; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "synth.zarr", "--out", "run"],
        ["evaluate", "--checkpoint", "run", "--dataset", "folder", "--root", "."],
        ["predict", "photo.png", "--checkpoint", "run", "--out", "maps"],
    ],
)
def test_resynth_without_torch_says_which_extra(tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "photo.png").write_bytes(b"")
    proc = _without_torch(tmp_path, *argv)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: resynth {argv[0]} needs torch (the 'train' extra)")
    assert "install torch first" in lines[0] and 'pip install "anomalygen[train]"' in lines[0]
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


def test_help_works_without_torch(tmp_path: Path) -> None:
    proc = _without_torch(tmp_path, "train", "--help")
    assert proc.returncode == 0 and "--data" in proc.stdout, proc.stderr


def test_extra_modules_name_the_extras_of_pyproject() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for module, (distribution, extra) in EXTRA_MODULES.items():
        names = {re.split(r"[<>=\[ ;]", req, maxsplit=1)[0] for req in extras[extra]}
        assert distribution in names, f"{module}: {distribution} is not in the {extra!r} extra"


def test_missing_extra_message() -> None:
    err = ModuleNotFoundError("No module named 'sklearn.metrics'", name="sklearn.metrics")
    assert missing_extra(err, "resynth evaluate") == (
        "resynth evaluate needs scikit-learn (the 'train' extra), not installed: "
        'pip install "anomalygen[train]"'
    )
    unknown = ModuleNotFoundError("No module named 'nothing'", name="nothing")
    assert missing_extra(unknown, "resynth train") is None  # a bug, not a missing extra
