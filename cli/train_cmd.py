"""``resynth train``: parse, call :func:`resynth_models.train.train`, print.

torch is imported inside the command, so ``resynth --help`` stays fast.
"""

from __future__ import annotations

import functools
from typing import Annotated

import typer

from anomalygen_cli import options as opt
from anomalygen_cli.common import EXIT_INTERRUPTED, fail

SCHEDULE = "Schedule"
NETWORK = "Network"
HARDWARE = "Hardware"
RUN = "Run folder"
VALIDATION = "Validation and logging"


def _scales(text: str | None) -> tuple[float, ...] | None:
    """``--local-contrast``: "0.03125,0.1" -> (0.03125, 0.1); "none" -> ()."""
    if text is None:
        return None
    if text.strip().lower() in ("none", "off", "0", ""):
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        fail(f"--local-contrast: expected numbers separated by commas or 'none', got {text!r}")


def train(
    data: Annotated[
        str, typer.Option("--data", help="Store made by `anomalygen render` (folder or URL).")
    ],
    out: Annotated[str, typer.Option("--out", help="Run folder to write (or resume).")],
    storage_option: opt.StorageOption = None,
    stage: Annotated[
        str | None,
        typer.Option("--stage", help="1 (reconstruction), 2 (localisation) or all (default: all)."),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="Network and training defaults: 'default' (a GPU, the paper's schedule) or "
            "'small' (a CPU: about 35 minutes on 2 cores for a 256 px store). Default: 'default'; "
            "with --resume, the run's own configuration.",
            rich_help_panel=NETWORK,
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            help="Training side in pixels (default: the store's; above it only with --upsample).",
            min=8,
        ),
    ] = None,
    upsample: Annotated[
        bool,
        typer.Option("--upsample", help="Allow a --size above the store's (enlarges the samples)."),
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Samples per step and process (preset: 8).", min=1),
    ] = None,
    epochs: Annotated[
        float | None,
        typer.Option(
            "--epochs",
            help="Length of each stage in epochs; 1 epoch = as many samples as the store has "
            "normal photographs, as in the paper (default preset: 300).",
            rich_help_panel=SCHEDULE,
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="Length of each stage in optimiser steps (instead of --epochs).",
            min=1,
            rich_help_panel=SCHEDULE,
        ),
    ] = None,
    stage1_steps: Annotated[
        int | None,
        typer.Option(
            "--stage1-steps",
            help="Stage 1's length in steps where it differs from stage 2's (default: per preset).",
            min=1,
            rich_help_panel=SCHEDULE,
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Peak learning rate (paper: 5e-5).", rich_help_panel=SCHEDULE),
    ] = None,
    min_lr: Annotated[
        float | None,
        typer.Option(
            "--min-lr", help="End of the cosine decay (paper: 2.5e-5).", rich_help_panel=SCHEDULE
        ),
    ] = None,
    warmup: Annotated[
        str | None,
        typer.Option(
            "--warmup",
            help="Linear warm-up: steps (500), epochs (50ep) or a share of the stage (5%) "
            "(paper: 50ep).",
            rich_help_panel=SCHEDULE,
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            "--weight-decay", help="AdamW weight decay (default 0.01).", rich_help_panel=SCHEDULE
        ),
    ] = None,
    grad_clip: Annotated[
        float | None,
        typer.Option(
            "--grad-clip",
            help="Max gradient norm, 0 = off (default 1.0).",
            rich_help_panel=SCHEDULE,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of init, data order, augmentation (default 0)."),
    ] = None,
    no_augment: Annotated[
        bool,
        typer.Option("--no-augment", help="No flips, rotations or zoom.", rich_help_panel=SCHEDULE),
    ] = False,
    photometric: Annotated[
        bool | None,
        typer.Option(
            "--photometric/--no-photometric",
            help="Whole-image gain, gamma and blur changes (other cameras; default: per preset).",
            rich_help_panel=SCHEDULE,
        ),
    ] = None,
    rec_features: Annotated[
        str | None,
        typer.Option(
            "--rec-features",
            help="Table 3 row: trained (paper), random, none or image.",
            rich_help_panel=NETWORK,
        ),
    ] = None,
    rec_width: Annotated[
        int | None, typer.Option("--rec-width", help="E_r/D_r base width.", rich_help_panel=NETWORK)
    ] = None,
    rec_depth: Annotated[
        int | None, typer.Option("--rec-depth", help="E_r/D_r levels.", rich_help_panel=NETWORK)
    ] = None,
    loc_width: Annotated[
        int | None, typer.Option("--loc-width", help="E_l/D_l base width.", rich_help_panel=NETWORK)
    ] = None,
    loc_depth: Annotated[
        int | None, typer.Option("--loc-depth", help="E_l/D_l levels.", rich_help_panel=NETWORK)
    ] = None,
    local_contrast: Annotated[
        str | None,
        typer.Option(
            "--local-contrast",
            metavar="LIST",
            help="E_l also sees the image's local contrast at these background-blur sigmas, "
            "fractions of the side, e.g. 0.03125,0.1 ('none': off; default: per preset).",
            rich_help_panel=NETWORK,
        ),
    ] = None,
    stage1_from: Annotated[
        str | None,
        typer.Option(
            "--stage1-from",
            help="With --stage 2: take E_r/D_r from this run folder or weights file.",
            rich_help_panel=NETWORK,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device", help="auto, cpu or cuda or cuda:N (default auto).", rich_help_panel=HARDWARE
        ),
    ] = None,
    amp: Annotated[
        str | None,
        typer.Option(
            "--amp",
            help="Mixed precision: auto (bf16 on a GPU), bf16, fp16 or off (default auto).",
            rich_help_panel=HARDWARE,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="DataLoader processes (default: per preset).",
            rich_help_panel=HARDWARE,
        ),
    ] = None,
    compile_model: Annotated[
        bool,
        typer.Option("--compile", help="torch.compile the model.", rich_help_panel=HARDWARE),
    ] = False,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            "--val-fraction",
            help="Share of the store's shards held out for validation (whole shards, at least "
            "one; 0 = none; default 0.05).",
            rich_help_panel=VALIDATION,
        ),
    ] = None,
    val_samples: Annotated[
        int | None,
        typer.Option(
            "--val-samples",
            help="Held-out samples per validation (default: per preset).",
            rich_help_panel=VALIDATION,
        ),
    ] = None,
    val_interval: Annotated[
        int | None,
        typer.Option(
            "--val-interval",
            help="Steps between validations (default: per preset).",
            rich_help_panel=VALIDATION,
        ),
    ] = None,
    log_interval: Annotated[
        int | None,
        typer.Option(
            "--log-interval",
            help="Steps between log records (default: per preset).",
            rich_help_panel=VALIDATION,
        ),
    ] = None,
    ckpt_interval: Annotated[
        int | None,
        typer.Option(
            "--ckpt-interval",
            help="Steps between resumable checkpoints (default: per preset).",
            rich_help_panel=RUN,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out from its last checkpoint, with its configuration "
            "(options given again must match it).",
            rich_help_panel=RUN,
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the run in --out (its own files only).",
            rich_help_panel=RUN,
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Train ReSynthDetect on a store (stage 1, then stage 2).

    Stage 1: the reconstruction autoencoder E_r/D_r on the store's normal photographs (L2).
    Stage 2: the localisation network on the synthetic lesions, fed the frozen E_r's features
    (focal loss). Resumable: after an interruption, resynth train --data STORE --out RUN
    --resume. Several GPUs: torchrun --nproc_per_node N -m anomalygen_cli.resynth_cli train ...
    """
    from anomalygen.store import parse_storage_options
    from resynth_models.data import NO_AUGMENT
    from resynth_models.photometric import PhotometricConfig
    from resynth_models.train import TrainingInterrupted, make_configs, resume_configs
    from resynth_models.train import train as run_train

    network = {
        k: v
        for k, v in {
            "rec_features": rec_features,
            "rec_width": rec_width,
            "rec_depth": rec_depth,
            "loc_width": loc_width,
            "loc_depth": loc_depth,
            "local_contrast": _scales(local_contrast),
        }.items()
        if v is not None
    }
    if resume and preset is None:  # the run's own configuration, with the options given again
        configs = functools.partial(resume_configs, out)
    else:
        configs = functools.partial(make_configs, preset or "default")
    train_config, network_config = configs(
        network,
        stage=stage,
        size=size,
        upsample=upsample or None,
        batch_size=batch_size,
        epochs=epochs,
        steps=steps,
        stage1_steps=stage1_steps,
        lr=lr,
        min_lr=min_lr,
        warmup=warmup,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        amp=amp,
        device=device,
        workers=workers,
        seed=seed,
        augment=NO_AUGMENT if no_augment else None,
        photometric=None if photometric is None else PhotometricConfig(enabled=photometric),
        val_fraction=val_fraction,
        val_samples=val_samples,
        val_interval=val_interval,
        log_interval=log_interval,
        ckpt_interval=ckpt_interval,
        compile=compile_model or None,
        stage1_from=stage1_from,
    )
    try:
        result = run_train(
            data,
            out,
            train_config,
            network_config,
            resume=resume,
            overwrite=overwrite,
            progress=not quiet,
            storage_options=parse_storage_options(storage_option),
        )
    except TrainingInterrupted as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if result.rank != 0:  # under torchrun, rank 0 alone reports
        return
    if quiet:
        for note in result.notes:
            typer.echo(f"note: {note}", err=True)
    typer.echo(result.summary())
