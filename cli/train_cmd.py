"""``resynth train``: parse, call :func:`resynth_models.train.train`, print.

The command's own options (where the store and the run folder are, the preset, resume or
overwrite, quiet) are written out below; one option per training knob is made from the table
that defines the knobs (:data:`resynth_models.train_options.TRAIN_OPTIONS`). torch is imported
inside the command, so ``resynth --help`` stays fast.
"""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Any

import typer

from anomalygen_cli import options as opt
from anomalygen_cli.common import EXIT_INTERRUPTED
from resynth_models.train_options import NETWORK, RUN, TRAIN_OPTIONS, TrainOption, config_values


def train(**options: Any) -> None:
    """Train ReSynthDetect on a store (stage 1, then stage 2).

    Stage 1: the reconstruction autoencoder E_r/D_r on the store's normal photographs (L2).
    Stage 2: the localisation network on the synthetic lesions, fed the frozen E_r's features
    (focal loss). Resumable: after an interruption, resynth train --data STORE --out RUN
    --resume. Several GPUs: torchrun --nproc_per_node N -m anomalygen_cli.resynth_cli train ...
    """
    from anomalygen.store import parse_storage_options
    from resynth_models.train import TrainingInterrupted, make_configs, resume_configs
    from resynth_models.train import train as run_train

    out, preset, quiet = options["out"], options["preset"], options["quiet"]
    network, fields = config_values(options)
    if options["resume"] and preset is None:  # the run's own configuration, with the options
        configs = functools.partial(resume_configs, out)  # given again
    else:
        configs = functools.partial(make_configs, preset or "default")
    train_config, network_config = configs(network, **fields)
    try:
        result = run_train(
            options["data"],
            out,
            train_config,
            network_config,
            resume=options["resume"],
            overwrite=options["overwrite"],
            progress=not quiet,
            storage_options=parse_storage_options(options["storage_option"]),
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


def _parameter(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> Any:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)  # fmt: skip


def _knob(option: TrainOption) -> inspect.Parameter:
    """A knob's option: a flag (False: not given) or a value (None: not given)."""
    kind: Any = bool if option.switch else (option.type | None)
    extra = {"min": option.min} if option.min is not None else {}
    info = typer.Option(option.flag, help=option.help, rich_help_panel=option.panel,
                        metavar=option.metavar, **extra)  # fmt: skip
    return _parameter(option.parameter, Annotated[kind, info], False if option.switch else None)


_OWN_FIRST = [
    _parameter("data", Annotated[str, typer.Option(
        "--data", help="Store made by `anomalygen render` (folder or URL).")]),
    _parameter("out", Annotated[str, typer.Option(
        "--out", help="Run folder to write (or resume).")]),
    _parameter("storage_option", opt.StorageOption, None),
    _parameter("preset", Annotated[str | None, typer.Option(
        "--preset",
        help="Network and training defaults: 'default' (a GPU, the paper's schedule, our "
        "local contrast), 'paper' (the paper's network and schedule exactly) or 'small' (a "
        "CPU: under 40 minutes on 2 cores for a 256 px store). Default: 'default'; with "
        "--resume, the run's own configuration.",
        rich_help_panel=NETWORK)], None),
]  # fmt: skip
_OWN_LAST = [
    _parameter("resume", Annotated[bool, typer.Option(
        "--resume",
        help="Continue the run in --out from its last checkpoint, with its configuration "
        "(options given again must match it).",
        rich_help_panel=RUN)], False),
    _parameter("overwrite", Annotated[bool, typer.Option(
        "--overwrite", help="Replace the run in --out (its own files only).",
        rich_help_panel=RUN)], False),
    _parameter("quiet", Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress display.")], False),
]  # fmt: skip
# typer reads a command's options from its signature: the knobs' come from the table.
train.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [*_OWN_FIRST, *(_knob(o) for o in TRAIN_OPTIONS), *_OWN_LAST]
)
