"""``anomalygen render``, ``anomalygen info`` and ``anomalygen verify``: parse, call, print.

The work is done by :func:`anomalygen.render.render`, :func:`anomalygen.store.store_info` and
:func:`anomalygen.verify.verify_store`. :func:`generator_config` turns the generator options into
a ``GeneratorConfig`` and may be shared by other commands (``preview``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from anomalygen.errors import ConfigError
from anomalygen.render import DEFAULT_CACHE_MB
from anomalygen.store import DEFAULT_CODEC, DEFAULT_SHARD_SIZE
from anomalygen.store.format import DEFAULT_LAYOUT
from anomalygen_cli import options as opt
from anomalygen_cli.common import EXIT_INTERRUPTED, fail

STORE = "Store"


# ------------------------------------------------------------------------------------------
# Generator options (shared)
# ------------------------------------------------------------------------------------------


def parse_range(option: str, text: str, kind: type) -> tuple[Any, Any]:
    """``"1-4" -> (1, 4)``; ``"3" -> (3, 3)``; floats for ``kind=float``."""
    low, sep, high = text.strip().partition("-")
    try:
        lo = kind(low)
        hi = kind(high) if sep else lo
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{option}: expected MIN-MAX with {what}, got {text!r}") from None
    if lo > hi:
        raise ConfigError(f"{option}: MIN must not exceed MAX, got {text!r}")
    return lo, hi


#: The generator options of render and preview, as :func:`generator_config` takes them.
GENERATOR_OPTIONS = ("lesions", "p_normal", "crop_fraction", "alpha", "source", "blend", "mask")


def generator_config(
    *, preset: str | None = None, config_file: Path | None = None, **options: Any
) -> Any:
    """A ``GeneratorConfig``: the ``preset`` (default: ours), then the fields of ``config_file``
    (JSON, whole or in part, as ``anomalygen info --json`` prints under "generator"), then the
    given ``options`` (:data:`GENERATOR_OPTIONS`, as the command line gives them; None: not
    given), each replacing fields of the one before."""
    from anomalygen.generator import generator_preset, with_changes

    unknown = set(options) - set(GENERATOR_OPTIONS)
    if unknown:
        raise TypeError(f"generator_config: unknown option(s) {', '.join(sorted(unknown))}")
    lesions, p_normal, alpha = options.get("lesions"), options.get("p_normal"), options.get("alpha")
    crop_fraction = options.get("crop_fraction")
    source, blend, mask = options.get("source"), options.get("blend"), options.get("mask")

    base = generator_preset(preset or "default")
    if config_file is not None:
        try:
            data = json.loads(Path(config_file).read_text())
        except OSError as err:
            raise ConfigError(f"--config: cannot read {config_file} ({err.strerror})") from None
        except ValueError as err:
            raise ConfigError(f"--config: {config_file} is not valid JSON ({err})") from None
        if isinstance(data, dict) and isinstance(data.get("generator"), dict):
            data = data["generator"]  # the whole `info --json` output works too
        if not isinstance(data, dict):
            raise ConfigError(f"--config: {config_file} holds no JSON object")
        base = with_changes(base, data)
    changes: dict[str, Any] = {}
    if lesions is not None:
        changes["lesions"] = parse_range("--lesions", lesions, int)
    if crop_fraction is not None:
        changes["crop_size"] = parse_range("--crop-fraction", crop_fraction, float)
    for name, value in (("p_normal", p_normal), ("alpha", alpha)):
        if value is not None:
            changes[name] = float(value)
    if alpha is not None:
        changes["alpha_range"] = None  # one alpha for every lesion
    for name, value in (("source", source), ("blend", blend), ("mask", mask)):
        if value is not None:
            changes[name] = value
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as err:
        # "generator.p_normal: ..." -> "--p-normal: ..."
        text = str(err)
        for field, option in (
            ("generator.lesions", "--lesions"),
            ("generator.crop_size", "--crop-fraction"),
            ("generator.p_normal", "--p-normal"),
            ("generator.alpha", "--alpha"),
            ("generator.source", "--source"),
            ("generator.blend", "--blend"),
            ("generator.mask", "--mask"),
        ):
            text = text.replace(field, option)
        raise ConfigError(text) from None


# ------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------


def render(
    n: Annotated[int, typer.Option("--n", help="Number of synthetic samples.", min=1)],
    out: Annotated[
        str,
        typer.Option(
            "--out", help="Store to write: a folder (.zarr) or a URL (file://, s3://, memory://)."
        ),
    ],
    src: opt.Src = None,
    demo: opt.Demo = False,
    labels: opt.Labels = None,
    labels_column: opt.LabelsColumn = None,
    where: opt.Where = None,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = 768,
    seed: Annotated[int, typer.Option("--seed", help="Sample i depends on (seed, i) only.")] = 0,
    workers: Annotated[
        str,
        typer.Option(
            "--workers", metavar="N|auto", help="Worker processes, or 'auto' (one per CPU)."
        ),
    ] = "auto",
    shard_size: Annotated[
        int,
        typer.Option("--shard-size", help="Samples per shard.", min=1, rich_help_panel=STORE),
    ] = DEFAULT_SHARD_SIZE,
    cache_mb: Annotated[
        int,
        typer.Option(
            "--cache-mb",
            help="Memory per worker for decoded source photographs (raise it for large --src).",
            min=1,
            rich_help_panel=STORE,
        ),
    ] = DEFAULT_CACHE_MB,
    codec: Annotated[
        str,
        typer.Option(
            "--codec", help="Compression: zstd (level 1), blosc-lz4 or none.", rich_help_panel=STORE
        ),
    ] = DEFAULT_CODEC,
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="compact (the default): only the pixels inside the lesion boxes, composed "
            "with the target photograph on read (1/100 of the disk or less, faster to write); "
            "full: every image and mask, for tools that read the image arrays themselves "
            "(`anomalygen convert` makes a full copy of a compact store).",
            rich_help_panel=STORE,
        ),
    ] = DEFAULT_LAYOUT,
    lesions: opt.Lesions = None,
    p_normal: opt.PNormal = None,
    crop_fraction: opt.CropFraction = None,
    alpha: opt.Alpha = None,
    source: opt.Source = None,
    texture_dir: Annotated[
        Path | None,
        typer.Option(
            "--texture-dir",
            help="Texture images for --source texture (e.g. DTD).",
            rich_help_panel=opt.GENERATOR,
        ),
    ] = None,
    blend: opt.Blend = None,
    mask: opt.MaskKind = None,
    preset: opt.GeneratorPreset = None,
    config: opt.ConfigFile = None,
    no_clahe: Annotated[
        bool, typer.Option("--no-clahe", help="Skip CLAHE when preparing the photographs.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write the skipped files and reasons here (.json or text)."),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first unusable source file.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start over if the store exists.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            metavar="ADDRESS",
            help="Run on Dask: 'local' (a LocalCluster of --workers processes) or a scheduler "
            "address, tcp://HOST:8786. Workers must reach --out and --src.",
            rich_help_panel=opt.STORAGE,
        ),
    ] = None,
    storage_option: opt.StorageOption = None,
) -> None:
    """Render N synthetic image/mask pairs into a sharded Zarr store.

    Resumable: run the same command again to continue an interrupted render.
    """
    from anomalygen.render import RenderInterrupted
    from anomalygen.render import render as run_render
    from anomalygen.sources import find_sources
    from anomalygen.store import parse_storage_options

    if demo and src is not None:
        fail("--demo and --src: give one of them")
    if demo and (labels is not None or where):
        fail("--demo: --labels and --where select from --src, not from the demo photographs")
    if src is None and not demo:
        fail("--src: missing (a folder or list of normal fundus photographs; or try --demo)")
    gen = generator_config(
        preset=preset,
        config_file=config,
        lesions=lesions,
        p_normal=p_normal,
        crop_fraction=crop_fraction,
        alpha=alpha,
        source=source,
        blend=blend,
        mask=mask,
    )
    if demo:
        from anomalygen.demo import demo_folder

        src = demo_folder()
    assert src is not None
    sources = find_sources(src, labels=labels, where=where or (), labels_column=labels_column)
    textures = find_sources(texture_dir) if texture_dir is not None else None
    if sources.missing_from_labels:
        missing = sources.missing_from_labels
        typer.echo(
            f"note: {len(missing)} image(s) selected by {labels} not found under {src} "
            f"(first: {missing[0]})",
            err=True,
        )
    try:
        result = run_render(
            out,
            sources,
            n,
            size=size,
            seed=seed,
            config=gen,
            textures=textures,
            workers=workers,
            shard_size=shard_size,
            codec=codec,
            clahe=not no_clahe,
            strict=strict,
            overwrite=overwrite,
            progress=not quiet,
            cache_mb=cache_mb,
            scheduler=scheduler,
            storage_options=parse_storage_options(storage_option),
            layout=layout,
        )
    except RenderInterrupted as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if report is not None:
        _write_report(report, result.skipped)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    if result.skipped and report is None:
        typer.echo(
            f"warning: {len(result.skipped)} source file(s) skipped as unusable "
            "(--report FILE lists them with reasons; `anomalygen info` shows them too)",
            err=True,
        )
    if result.shards_rendered == 0 and result.shards_already_done == result.n_shards:
        typer.echo(f"{out}: already complete ({result.n} samples); nothing to do")
    else:
        typer.echo(result.summary())


def _write_report(path: Path, skipped: list[dict[str, str]]) -> None:
    try:
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps(skipped, indent=2) + "\n")
        else:
            lines = [f"{s['name']}\t{s['reason']}" for s in skipped]
            path.write_text("".join(line + "\n" for line in lines))
    except OSError as err:
        fail(f"--report: cannot write {path} ({err.strerror})")


# ------------------------------------------------------------------------------------------
# info and verify
# ------------------------------------------------------------------------------------------


def info(
    store: Annotated[str, typer.Argument(help="A store: folder or URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    storage_option: opt.StorageOption = None,
) -> None:
    """Counts, shapes, codec, size on disk, completion and config of a store."""
    from anomalygen.progress import format_bytes
    from anomalygen.store import parse_storage_options, store_info

    data = store_info(store, parse_storage_options(storage_option))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    pools = data["pools"]
    rows = [
        (
            "store",
            f"{data['url']} (format {data['format_version']}, "
            f"anomalygen {data['anomalygen_version']})",
        ),
        (
            "samples",
            f"{data['samples_complete']} of {data['n']} complete "
            f"({data['shards_complete']} of {data['shards']} shards of "
            f"{data['shard_size']})",
        ),
        (
            "image",
            " x ".join(map(str, data["image_shape"]))
            + " uint8 RGB; mask "
            + " x ".join(map(str, data["mask_shape"]))
            + " uint8"
            + (" (compact: composed on read)" if data.get("layout") == "compact" else ""),
        ),
        ("codec", f"{data['codec']} (+crc32c)"),
        (
            "on disk",
            format_bytes(data["bytes_on_disk"])
            + (
                f", {format_bytes(data['bytes_per_sample'])}/sample"
                if data["bytes_per_sample"]
                else ""
            ),
        ),
    ]
    for pool, counts in pools.items():
        usable = counts["usable"] if counts["usable"] is not None else "? (not prepared yet)"
        rows.append((pool, f"{usable} usable of {counts['slots']} files"))
    rows.append(
        (
            "skipped",
            f"{len(data['skipped'])} file(s)"
            + (
                f" (first: {data['skipped'][0]['name']}: {data['skipped'][0]['reason']})"
                if data["skipped"]
                else ""
            ),
        )
    )
    if data["anomalous_fraction"] is not None:
        area = data["mean_lesion_area_px"]
        rows.append(
            (
                "anomalous",
                f"{100 * data['anomalous_fraction']:.1f}% of samples"
                + (f", mean lesion area {area:.0f} px" if area else ""),
            )
        )
    rows += [
        ("seed", str(data["seed"])),
        ("sources", data["sources"].get("description") or data["sources"].get("root", "?")),
        (
            "created",
            f"{data['created']}"
            + (f", completed {data['completed']}" if data["completed"] else ", not completed"),
        ),
        ("generator", json.dumps(data["generator"], separators=(",", ":"))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


def verify(
    store: Annotated[str, typer.Argument(help="A store: folder or URL.")],
    full: Annotated[
        bool, typer.Option("--full", help="Read and check every sample (default: a spot check).")
    ] = False,
    samples: Annotated[
        int,
        typer.Option("--samples", help="Spot check: samples read besides one per shard.", min=0),
    ] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the spot check.")] = 0,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Render every damaged or missing shard again (a full check first), with the "
            "store's own parameters: the repaired store is byte-identical to an undamaged one.",
        ),
    ] = False,
    src: Annotated[
        Path | None,
        typer.Option("--src", help="With --repair: where the source photographs are now."),
    ] = None,
    texture_dir: Annotated[
        Path | None,
        typer.Option("--texture-dir", help="With --repair: where the textures are now."),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="With --repair: worker processes.", min=1)
    ] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    storage_option: opt.StorageOption = None,
) -> None:
    """Check a store's integrity and contracts; exit 1 listing the problems if any.

    Shards complete and readable (truncated or corrupted shard files are caught), every item
    matching the digest written with it, masks binary and inside the FOV, images equal to their
    target outside the mask, metadata consistent. --repair renders the damaged shards again.
    """
    from anomalygen.store import parse_storage_options
    from anomalygen.verify import verify_store

    options = parse_storage_options(storage_option)
    if repair:
        _repair(store, src, texture_dir, workers, quiet, options)
        return
    if src is not None or texture_dir is not None:
        fail("--src and --texture-dir: only with --repair")
    report = verify_store(
        store, full=full, samples=samples, seed=seed, progress=not quiet, storage_options=options
    )
    _print_report(report)
    typer.echo(report.summary())
    if not report.ok:
        sys.stdout.flush()
        raise typer.Exit(1)


def _print_report(report: Any) -> None:
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for problem in report.problems:
        typer.echo(f"problem: {problem}")


def _repair(
    store: str,
    src: Path | None,
    textures: Path | None,
    workers: int,
    quiet: bool,
    options: dict | None,
) -> None:
    from anomalygen.repair import repair_store

    result = repair_store(
        store, src=src, textures=textures, workers=workers, storage_options=options,
        progress=not quiet,
    )  # fmt: skip
    _print_report(result.found)
    if result.after is not None:
        for problem in result.after.problems:
            typer.echo(f"problem after the repair: {problem}")
    typer.echo(result.summary())
    if not result.ok:
        sys.stdout.flush()
        raise typer.Exit(1)
