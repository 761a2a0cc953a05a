"""What both command-line apps share: one-line error reporting and exit codes."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer

from anomalygen.errors import AnomalygenError, one_line

#: Exit codes: 0 success, 1 a user-fixable error, 2 bad usage (typer's own), 130 interrupted.
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


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
    except Exception as err:  # the last line of defence: no traceback reaches a user
        if debug:
            raise
        typer.echo(
            f"internal error: {type(err).__name__}: {err} "
            "(set ANOMALYGEN_DEBUG=1 for the traceback and please report it)",
            err=True,
        )
        sys.exit(EXIT_ERROR)
