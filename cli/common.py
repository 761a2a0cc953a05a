"""What both command-line apps share: one-line error reporting and exit codes."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer
import typer.core

from anomalygen.errors import AnomalygenError, one_line

#: Exit codes: 0 success, 1 a user-fixable error, 2 bad usage (typer's own), 130 interrupted.
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

#: What the optional extras of pyproject.toml install: import name -> (distribution, extra). A
#: command that needs a missing one says which extra to install instead of failing internally.
EXTRA_MODULES = {
    "torch": ("torch", "train"),
    "sklearn": ("scikit-learn", "train"),
    "safetensors": ("safetensors", "train"),
    "matplotlib": ("matplotlib", "train"),
    "skimage": ("scikit-image", "demo"),
    "distributed": ("distributed", "dask"),
    "s3fs": ("s3fs", "s3"),
}


def _untyped_flags(params: list) -> list:
    """Flags (``--quiet``, ``--help``) take no value: show no value type beside them."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(typer.core.TyperCommand):
    """A command whose help shows no ``<bool>`` beside its flags."""

    def get_params(self, ctx: typer.Context) -> list:
        return _untyped_flags(super().get_params(ctx))


class Group(typer.core.TyperGroup):
    """An app (a group of commands) whose help shows no ``<bool>`` beside ``--help``."""

    def get_params(self, ctx: typer.Context) -> list:
        return _untyped_flags(super().get_params(ctx))


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def missing_extra(err: ModuleNotFoundError, command: str) -> str | None:
    """The one line for a module of an optional extra that is not installed (None for any
    other missing module: that is a bug, reported as one)."""
    module = (err.name or "").partition(".")[0]
    if module not in EXTRA_MODULES:
        return None
    distribution, extra = EXTRA_MODULES[module]
    install = f'pip install "anomalygen[{extra}]"'
    if module == "torch":  # as the README says: the extra's unpinned torch may be a CUDA build
        install = (
            f"install torch first (pip install torch==2.13.0, or your CUDA build), then {install}"
        )
    return f"{command} needs {distribution} (the {extra!r} extra), not installed: {install}"


def _command(prog_name: str) -> str:
    """``resynth train``: the program and its subcommand, as the user typed them."""
    words = [prog_name, *sys.argv[1:2]]
    return " ".join(w for w in words if not w.startswith("-"))


def run_app(app: typer.Typer, prog_name: str) -> None:
    """Run a typer app so that no traceback reaches a user.

    Project errors and bad values print one line; anything unexpected prints one line too, with a
    hint to set ``ANOMALYGEN_DEBUG=1`` for the traceback.
    """
    debug = bool(os.environ.get("ANOMALYGEN_DEBUG"))
    try:
        # Standalone mode: typer itself reports usage errors (exit 2) and turns an unhandled
        # Ctrl-C into "Aborted!" (exit 1); long commands catch it first and exit 130.
        app(prog_name=prog_name)
    except AnomalygenError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except (OSError, MemoryError) as err:
        if debug:
            raise
        typer.echo(f"error: {one_line(err)}", err=True)
        sys.exit(EXIT_ERROR)
    except ModuleNotFoundError as err:
        message = missing_extra(err, _command(prog_name))
        if debug or message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(EXIT_ERROR)
    except Exception as err:  # the last line of defence: no traceback reaches a user
        if debug:
            raise
        typer.echo(
            f"internal error: {type(err).__name__}: {err} "
            "(set ANOMALYGEN_DEBUG=1 for the traceback and please report it)",
            err=True,
        )
        sys.exit(EXIT_ERROR)
