"""The `anomalygen render`, `info` and `verify` commands: output, exit codes, one-line errors.

The commands run in this process through ``anomalygen_cli.anomalygen_cli.main`` (what the
console script calls), so ``run_app``'s error handling is what is tested.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from anomalygen import open_store
from anomalygen import store as st
from anomalygen_cli.anomalygen_cli import main
from tests.badfiles import write_bad_files
from tests.synthetic import run_cli, write_sources


def run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``anomalygen ARGS``: (exit code, stdout, stderr)."""
    return run_cli(main, "anomalygen", monkeypatch, capsys, *args)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    folder = write_sources(tmp_path_factory.mktemp("cli") / "normals", count=3)
    write_bad_files(folder / "bad")  # inside --src: skipped with reasons
    return folder


FAST = ["--size", "64", "--shard-size", "8", "--workers", "1", "--quiet"]


def test_render_info_verify(monkeypatch, capsys, src: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    report = tmp_path / "skipped.json"
    code, stdout, stderr = run(
        monkeypatch,
        capsys,
        "render",
        "--layout",
        "full",
        "--src",
        str(src),
        "--n",
        "16",
        "--out",
        str(out),
        "--report",
        str(report),
        "--lesions",
        "2-3",
        "--p-normal",
        "0.25",
        "--crop-fraction",
        "0.05-0.2",
        "--alpha",
        "0.6",
        "--blend",
        "paste",
        "--mask",
        "crop",
        *FAST,
    )
    assert code == 0, stderr
    line = stdout.strip()
    assert line.startswith("rendered 16 samples in ") and "\n" not in line
    assert "samples/s" in line and "on disk" in line and "7 files skipped" in line
    skipped = json.loads(report.read_text())
    assert {s["name"] for s in skipped} == {f"bad/{n}" for n in write_bad_files(tmp_path / "x")}
    config = open_store(out).config
    assert config.lesions == (2, 3) and config.p_normal == 0.25 and config.alpha == 0.6
    assert config.crop_size == (0.05, 0.2) and config.blend == "paste" and config.mask == "crop"

    code, stdout, _ = run(monkeypatch, capsys, "info", str(out))
    assert code == 0
    assert "16 of 16 complete" in stdout and "3 usable of 10 files" in stdout
    code, stdout, _ = run(monkeypatch, capsys, "info", str(out), "--json")
    assert json.loads(stdout)["n"] == 16

    code, stdout, _ = run(monkeypatch, capsys, "verify", str(out), "--quiet")
    assert code == 0 and "OK" in stdout
    shard = out / st.shard_key("image", 1, ndim=4)
    shard.write_bytes(shard.read_bytes()[:100])
    code, stdout, _ = run(monkeypatch, capsys, "verify", str(out), "--quiet")
    assert code == 1 and "problem: shard 1: unreadable" in stdout

    # Rerun with the same arguments: nothing to do; with --strict: the bad files are fatal.
    shutil.rmtree(out)
    args = ["render", "--src", str(src), "--n", "8", "--out", str(out), *FAST]
    assert run(monkeypatch, capsys, *args)[0] == 0
    code, stdout, _ = run(monkeypatch, capsys, *args)
    assert code == 0 and "already complete" in stdout
    code, _, stderr = run(monkeypatch, capsys, *args, "--strict")
    assert code == 1 and stderr.startswith("error: bad/") and "--strict" in stderr


def test_demo(monkeypatch, capsys, tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    out = tmp_path / "demo.zarr"
    code, stdout, stderr = run(
        monkeypatch, capsys, "render", "--demo", "--n", "8", "--out", str(out), *FAST
    )
    assert code == 0, stderr
    assert "2 normals, 0 files skipped" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "4", "--out", "OUT"], "error: --src: missing"),
        (["--src", "SRC", "--demo", "--n", "4", "--out", "OUT"], "error: --demo and --src"),
        (["--src", "SRC", "--n", "4", "--out", "OUT", "--lesions", "4-2"], "error: --lesions"),
        (["--src", "SRC", "--n", "4", "--out", "OUT", "--lesions", "a-b"], "error: --lesions"),
        (["--src", "SRC", "--n", "4", "--out", "OUT", "--p-normal", "2"], "error: --p-normal"),
        (["--src", "SRC", "--n", "4", "--out", "OUT", "--source", "dtd"], "error: --source"),
        (["--src", "SRC", "--n", "4", "--out", "OUT", "--codec", "gzip"], "error: --codec"),
        (["--src", "SRC", "--n", "4", "--out", "OUT", "--where", "a=1"], "error: --where"),
        (["--src", "MISSING", "--n", "4", "--out", "OUT"], "error: --src: "),
        (["--src", "SRC", "--n", "4", "--out", "BLOCKED"], "error: "),
        (["--src", "SRC", "--n", "4", "--out", "OUT", "--config", "MISSING"], "error: --config"),
    ],
)
def test_one_line_errors(monkeypatch, capsys, src: Path, tmp_path: Path, args, message) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    replace = {
        "SRC": str(src),
        "OUT": str(tmp_path / "o.zarr"),
        "MISSING": str(tmp_path / "missing"),
        "BLOCKED": str(blocker / "o.zarr"),
    }
    code, _, stderr = run(monkeypatch, capsys, "render", *[replace.get(a, a) for a in args], *FAST)
    assert code == 1
    assert stderr.startswith(message), stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


def test_usage_errors_from_typer(monkeypatch, capsys) -> None:
    code, _, stderr = run(monkeypatch, capsys, "render", "--n", "0", "--out", "x")
    assert code == 2 and "Traceback" not in stderr


def test_info_and_verify_of_a_missing_store(monkeypatch, capsys, tmp_path: Path) -> None:
    for command in ("info", "verify"):
        code, _, stderr = run(monkeypatch, capsys, command, str(tmp_path / "none.zarr"))
        assert code == 1 and stderr.startswith("error: ") and "no store there" in stderr


def test_generator_presets_and_partial_config(monkeypatch, capsys, src: Path, tmp_path: Path):
    from anomalygen.generator import GeneratorConfig, generator_preset

    paper = tmp_path / "paper.zarr"
    code, _, stderr = run(monkeypatch, capsys, "render", "--src", str(src), "--n", "8", "--out",
                          str(paper), "--preset", "paper", *FAST)  # fmt: skip
    assert code == 0, stderr
    assert open_store(paper).config == generator_preset("paper")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"tone": {"p_dark": 1.0}, "lesions": [2, 2]}))
    ours = tmp_path / "ours.zarr"
    code, _, stderr = run(monkeypatch, capsys, "render", "--src", str(src), "--n", "8", "--out",
                          str(ours), "--config", str(partial), "--alpha", "0.5", *FAST)  # fmt: skip
    assert code == 0, stderr
    config = open_store(ours).config
    assert config.tone.p_dark == 1.0 and config.lesions == (2, 2)  # the file's fields...
    assert config.tone.mode == GeneratorConfig().tone.mode  # ...over our defaults
    assert (config.alpha, config.alpha_range) == (0.5, None)  # --alpha: one alpha for all
    code, _, stderr = run(monkeypatch, capsys, "render", "--src", str(src), "--n", "8", "--out",
                          str(tmp_path / "x.zarr"), "--preset", "best", *FAST)  # fmt: skip
    assert code == 1 and "--preset: must be one of default, paper" in stderr
