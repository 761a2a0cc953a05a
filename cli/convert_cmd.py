"""``anomalygen convert``: parse, call :func:`anomalygen.convert.convert_store`, print."""

from __future__ import annotations

from typing import Annotated

import typer

from anomalygen_cli import options as opt


def convert(
    store: Annotated[str, typer.Argument(help="A complete store: folder or URL.")],
    out: Annotated[str, typer.Argument(help="The new store: a folder (.zarr) or a URL.")],
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="full: every image and mask, for tools that read the image arrays directly; "
            "compact: only the pixels inside the lesion boxes.",
        ),
    ] = "full",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it exists.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    storage_option: opt.StorageOption = None,
) -> None:
    """Write a store again in another layout (a compact store as a full one, or back).

    Byte-identical to a render of the same command with that layout; the store is checked as it
    is read, and a store of an older format version comes out in the current one.
    """
    from anomalygen.convert import convert_store
    from anomalygen.store import parse_storage_options

    result = convert_store(
        store,
        out,
        layout=layout,
        overwrite=overwrite,
        storage_options=parse_storage_options(storage_option),
        progress=not quiet,
    )
    typer.echo(result.summary())
