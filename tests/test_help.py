"""The rendered ``--help`` of every command, as a user reads it: no value type beside flags,
metavars that say what a value looks like, help texts that fit where they stand."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from anomalygen_cli.anomalygen_cli import app as anomalygen_app
from anomalygen_cli.anomalygen_cli import main as anomalygen_main
from anomalygen_cli.resynth_cli import app as resynth_app
from anomalygen_cli.resynth_cli import main as resynth_main
from tests.synthetic import run_cli

ROOT = Path(__file__).resolve().parents[1]
APPS = {"anomalygen": (anomalygen_app, anomalygen_main), "resynth": (resynth_app, resynth_main)}
COMMANDS = [
    (prog, name) for prog, (app, _) in APPS.items() for name in typer.main.get_command(app).commands
]


def render_help(monkeypatch, capsys, prog: str, *command: str) -> str:
    """``prog [COMMAND] --help`` as printed on a wide terminal."""
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(APPS[prog][1], prog, monkeypatch, capsys, *command, "--help")
    assert code == 0, err
    return out


def option_row(text: str, option: str) -> str:
    """The help table's row of ``option`` (its first line)."""
    rows = [line for line in text.splitlines() if f" {option} " in line]
    assert rows, f"{option} not in the help"
    return rows[0]


def test_every_command_is_checked() -> None:
    assert ("anomalygen", "render") in COMMANDS and ("resynth", "predict") in COMMANDS
    assert len(COMMANDS) >= 7


@pytest.mark.parametrize(("prog", "command"), [(p, None) for p in APPS] + COMMANDS)
def test_flags_show_no_value_type(monkeypatch, capsys, prog: str, command: str | None) -> None:
    text = render_help(monkeypatch, capsys, prog, *([command] if command else []))
    assert "<bool>" not in text
    assert "<bool>" not in option_row(text, "--help") and "Show this message" in text


def test_metavars_say_what_a_value_looks_like(monkeypatch, capsys) -> None:
    render = render_help(monkeypatch, capsys, "anomalygen", "render")
    assert " N|auto " in option_row(render, "--workers")
    assert " MIN-MAX " in option_row(render, "--lesions")
    assert " MIN-MAX " in option_row(render, "--crop-fraction")
    preview = render_help(monkeypatch, capsys, "anomalygen", "preview")
    assert " LIST " in option_row(preview, "--indices")


@pytest.mark.parametrize("command", ["render", "preview"])
def test_config_help_does_not_depend_on_the_option_order(monkeypatch, capsys, command) -> None:
    """--config stands above the other generator options in preview, below them in render."""
    text = render_help(monkeypatch, capsys, "anomalygen", command)
    assert "above" not in option_row(text, "--config")
    assert "the other generator options override" in " ".join(text.split())


def test_gitignore_covers_what_the_readme_commands_write() -> None:
    ignored = set((ROOT / ".gitignore").read_text().splitlines())
    assert {"maps/", "exported/", "preview.png", "demo.png", "*.zarr/", "runs/"} <= ignored
