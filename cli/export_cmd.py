"""``anomalygen export``: parse, call :func:`anomalygen.export.export_store`, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anomalygen_cli import options as opt
from anomalygen_cli.render_cmd import parse_range


def export(
    store: Annotated[str, typer.Argument(help="A rendered store: folder or URL.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the PNG files into.")],
    layout: Annotated[
        str,
        typer.Option(
            "--format",
            help="folder: normal/ and abnormal/ images with their masks in masks/ (same names), "
            "as anomalib's Folder datamodule and nnU-Net-style tools read them.",
        ),
    ] = "folder",
    sample_range: Annotated[
        str | None,
        typer.Option(
            "--range",
            metavar="START-END",
            help="Samples to export, e.g. 0-999 (both ends included; default: all).",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Write into OUT although it is not empty."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    storage_option: opt.StorageOption = None,
) -> None:
    """Write a store's samples as PNG image/mask pairs, for training in other frameworks.

    Lossless: the files hold the store's pixels. Masks are 0/255; samples.csv lists each file.
    """
    from anomalygen.export import export_store
    from anomalygen.store import parse_storage_options

    indices = None
    if sample_range is not None:
        first, last = parse_range("--range", sample_range, int)
        indices = range(first, last + 1)
    result = export_store(
        store,
        out,
        layout=layout,
        indices=indices,
        overwrite=overwrite,
        storage_options=parse_storage_options(storage_option),
        progress=not quiet,
    )
    typer.echo(result.summary())
