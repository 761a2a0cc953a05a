"""What ``pip install`` puts into site-packages: three top-level packages, the CLI under a name
that cannot clash (``anomalygen_cli``, from the repository's ``cli/`` folder), every source
file, and console scripts that point at it. The wheel is built offline from a copy of the
sources (no build isolation, no index)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FOLDERS = {"anomalygen": "anomalygen", "anomalygen_cli": "cli", "resynth_models": "resynth_models"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed (the dev extra installs it)")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in FOLDERS.values():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("anomalygen-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_no_top_level_cli(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == set(FOLDERS)
    top_level = next(n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt"))
    assert set(wheel.read(top_level).decode().split()) == set(FOLDERS)


def test_the_wheel_holds_every_source_file(wheel: zipfile.ZipFile) -> None:
    """pyproject.toml lists the packages by hand (package-dir needs it): none may be missing."""
    expected = {
        f"{package}/{path.relative_to(ROOT / folder).as_posix()}"
        for package, folder in FOLDERS.items()
        for path in (ROOT / folder).rglob("*.py")
    }
    assert expected == {n for n in wheel.namelist() if n.endswith(".py")}


def test_console_scripts_point_at_the_installed_cli() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts == {
        "anomalygen": "anomalygen_cli.anomalygen_cli:main",
        "resynth": "anomalygen_cli.resynth_cli:main",
    }
    installed = {
        ep.name: ep.value
        for ep in importlib.metadata.distribution("anomalygen").entry_points
        if ep.group == "console_scripts"
    }
    assert installed == scripts, "reinstall: pip install -e ."


def test_the_cli_runs_from_a_folder_with_its_own_cli_package(tmp_path: Path) -> None:
    """The DDP launch (``torchrun ... -m anomalygen_cli.resynth_cli``) from a project that has a
    ``cli/`` package of its own: ours is not shadowed, and theirs is not touched."""
    decoy = tmp_path / "cli"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('the decoy cli package was imported')\n")
    for module in ("anomalygen_cli.resynth_cli", "anomalygen_cli.anomalygen_cli"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "Usage:" in proc.stdout
