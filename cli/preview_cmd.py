"""``anomalygen preview``: a contact sheet from a folder of photographs (live) or from a store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anomalygen_cli import options as opt
from anomalygen_cli.common import fail
from anomalygen_cli.render_cmd import generator_config


def preview(
    store: Annotated[
        str | None,
        typer.Argument(help="A rendered store to draw samples from (omit with --src or --demo)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")] = Path("preview.png"),
    src: opt.Src = None,
    demo: opt.Demo = False,
    n: Annotated[int, typer.Option("--n", help="Number of samples to draw.", min=1)] = 16,
    indices: Annotated[
        str | None,
        typer.Option(
            "--indices", metavar="LIST", help="Store samples to draw, e.g. 0,5,17 or 100-115."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Live preview: sample k uses (seed, k).")] = 0,
    size: Annotated[
        int, typer.Option("--size", help="Live preview: prepared image side in pixels.", min=32)
    ] = 512,
    tile: Annotated[int, typer.Option("--tile", help="Sample tile side in pixels.", min=64)] = 256,
    columns: Annotated[
        int | None, typer.Option("--columns", help="Tiles per row (default: square).", min=1)
    ] = None,
    max_images: Annotated[
        int,
        typer.Option("--max-images", help="Live preview: photographs to prepare at most.", min=1),
    ] = 32,
    labels: opt.Labels = None,
    labels_column: opt.LabelsColumn = None,
    where: opt.Where = None,
    config: opt.ConfigFile = None,
    lesions: opt.Lesions = None,
    p_normal: opt.PNormal = None,
    crop_fraction: opt.CropFraction = None,
    alpha: opt.Alpha = None,
    blend: opt.Blend = None,
    mask: opt.MaskKind = None,
    storage_option: opt.StorageOption = None,
) -> None:
    """Draw a contact sheet: each sample with its lesion outlines, a zoom on its first lesion and
    the source crop C_s it came from, labelled with the augmentations used."""
    from anomalygen.preview import live_preview, save_png, store_preview
    from anomalygen.store import parse_storage_options

    chosen = sum([store is not None, src is not None, demo])
    if chosen != 1:
        fail("preview: give exactly one of STORE, --src DIR or --demo")
    if store is not None:
        generator_options = (config, lesions, p_normal, crop_fraction, alpha, blend, mask)
        if any(v is not None for v in generator_options):
            fail("preview STORE: generator options apply to --src/--demo previews only")
        if labels is not None or where:
            fail("preview STORE: --labels and --where select photographs for --src previews")
        picks = parse_indices(indices) if indices else None
        sheet = store_preview(
            store,
            n=n,
            indices=picks,
            tile=tile,
            columns=columns,
            storage_options=parse_storage_options(storage_option),
        )
        skipped: list[tuple[str, str]] = []
    else:
        if indices:
            fail("--indices applies to store previews only")
        if demo and (labels is not None or where):
            fail("--demo: --labels and --where select from --src, not from the demo photographs")
        if demo:
            from anomalygen.demo import demo_folder

            src = demo_folder()
        gen = generator_config(
            config_file=config,
            lesions=lesions,
            p_normal=p_normal,
            crop_fraction=crop_fraction,
            alpha=alpha,
            blend=blend,
            mask=mask,
        )
        sheet, skipped = live_preview(
            src, n=n, seed=seed, size=size, config=gen, tile=tile, columns=columns,
            max_images=max_images, labels=labels, where=where or (), labels_column=labels_column,
        )  # fmt: skip
    for name, reason in skipped:
        typer.echo(f"skipped {name}: {reason}", err=True)
    path = save_png(sheet, out)
    typer.echo(f"wrote {path} ({sheet.shape[1]}x{sheet.shape[0]} px)")


def parse_indices(text: str) -> list[int]:
    """``"0,5,17"`` or ``"100-115"`` (or a mix) -> a list of sample indices."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        low, sep, high = part.partition("-")
        try:
            if sep:
                out.extend(range(int(low), int(high) + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            fail(f"--indices: expected numbers like 0,5,17 or 100-115, got {text!r}")
    if not out:
        fail(f"--indices: no index in {text!r}")
    return out
