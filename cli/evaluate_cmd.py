"""``resynth evaluate`` and ``resynth predict``: parse, call the library, print.

The work is done by :func:`resynth_models.evaluate.evaluate` and
:func:`resynth_models.predict.predict`; the detector comes from
:func:`resynth_models.checkpoint.load_detector`. torch is imported inside the commands only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anomalygen_cli.common import fail

DATASETS = ("idrid", "eyeq", "folder")

_CHECKPOINT = typer.Option(
    "--checkpoint", help="Run folder written by `resynth train` (RUN/config.json, weights)."
)
_DEVICE = typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N.")
_BATCH = typer.Option("--batch-size", help="Images per forward pass.", min=1)
_THRESHOLD = typer.Option(
    "--threshold",
    help="Probability threshold for the pixel balanced accuracy, overlays and areas "
    "(default: the run's own, chosen on its synthetic validation; 0.5 without one).",
    min=0.0,
    max=1.0,
)
_WORKERS = typer.Option("--workers", help="Threads reading and preparing photographs.", min=1)
_QUIET = typer.Option("--quiet", "-q", help="No progress display.")
_FLIP = typer.Option(
    "--flip/--no-flip",
    help="Test-time augmentation: average each map with that of the mirrored image (2x time; "
    "default: the run's, --test-flip at training: on for the default and small presets).",
)


_SCORING = typer.Option(
    "--scoring",
    help="localization (stage 2, the paper) or reconstruction (stage-1 error: Table 3, row 1).",
)


def _stderr(message: str) -> None:
    typer.echo(message, err=True)


def _load(checkpoint: Path, device: str, scoring: str, flip: bool | None):  # -> (detector, device)
    from resynth_models.devices import resolve_device

    if not checkpoint.exists():
        fail(f"--checkpoint: {checkpoint} does not exist (a run folder from `resynth train`)")
    if not checkpoint.is_dir():
        fail(f"--checkpoint: {checkpoint} is not a folder (give the run folder, not a file)")
    dev = resolve_device(device)
    from resynth_models.checkpoint import load_detector

    return load_detector(checkpoint, str(dev), scoring=scoring, flip=flip), dev


def _baseline(name: str, size: int, device: str):  # -> (baseline detector, torch.device)
    from resynth_models.baseline import BASELINES, MedianResidual
    from resynth_models.devices import resolve_device

    if name not in BASELINES:
        fail(f"--baseline: must be one of {', '.join(BASELINES)}, got {name!r}")
    resolve_device(device)  # a bad --device is still an error
    return MedianResidual(size), MedianResidual(size).device


def evaluate(
    checkpoint: Annotated[Path | None, _CHECKPOINT] = None,
    dataset: Annotated[str, typer.Option("--dataset", help="idrid, eyeq or folder.")] = "",
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help="idrid: the IDRiD folder (holding 'A. Segmentation'); eyeq: the test image "
            "folder; folder: a folder with normal/, abnormal/ and optional masks/.",
        ),
    ] = None,
    normal_dir: Annotated[
        Path | None,
        typer.Option(
            "--normal-dir",
            help="idrid: a folder of normal test photographs (label 0, empty masks).",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="eyeq: the labels CSV (default ROOT/Label_EyeQ_test.csv)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            help="idrid: test, train or all (default all: the paper's 81 abnormal images).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default: RUN/eval-DATASET)."),
    ] = None,
    device: Annotated[str, _DEVICE] = "auto",
    batch_size: Annotated[int, _BATCH] = 4,
    threshold: Annotated[float | None, _THRESHOLD] = None,
    overlays: Annotated[
        int, typer.Option("--overlays", help="Overlays of the best and of the worst images.", min=0)
    ] = 4,
    scoring: Annotated[str, _SCORING] = "localization",
    flip: Annotated[bool | None, _FLIP] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Score a training-free baseline instead of a checkpoint: 'median' "
            "(abs(green - median filter of green), window 1/8 of the side).",
        ),
    ] = None,
    size: Annotated[
        int,
        typer.Option(
            "--size", help="With --baseline: the side photographs are prepared at.", min=8
        ),
    ] = 768,
    workers: Annotated[int | None, _WORKERS] = None,
    quiet: Annotated[bool, _QUIET] = False,
) -> None:
    """Score a dataset and print the paper's tables (Table 1: EyeQ, Table 2: IDRiD).

    Writes metrics.json, metrics.md, per_image.csv, curves.png (ROC and PR per lesion type) and
    Fig. 4-style overlays into --out.
    """
    if (checkpoint is None) == (baseline is None):
        fail("give --checkpoint RUN (a trained detector) or --baseline median, one of them")
    if not dataset:
        fail("--dataset is required: idrid, eyeq or folder")
    if root is None:
        fail("--root is required: the dataset's folder")
    dataset = dataset.strip().lower()
    if dataset not in DATASETS:
        fail(f"--dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if split is not None and dataset != "idrid":
        fail(f"--split is for --dataset idrid, not {dataset}")
    if labels is not None and dataset != "eyeq":
        fail(f"--labels is for --dataset eyeq, not {dataset}")
    if normal_dir is not None and dataset != "idrid":
        fail(f"--normal-dir is for --dataset idrid, not {dataset} (folder: put them in normal/)")
    if not root.exists():
        fail(f"--root: {root} does not exist")

    from resynth_models.datasets import open_eval_set
    from resynth_models.evaluate import evaluate as run_evaluate

    splits = {} if split is None else {"split": split}  # None: the library's default, "all"
    eval_set = open_eval_set(dataset, root, normal_dir=normal_dir, labels_csv=labels, **splits)
    if baseline is not None:
        detector, dev = _baseline(baseline, size, device)
        if out is None:
            fail("--baseline needs --out (there is no run folder to write into)")
    else:
        detector, dev = _load(checkpoint, device, scoring, flip)
    out_dir = out if out is not None else checkpoint / f"eval-{dataset}"
    typer.echo(f"{eval_set.description}", err=True)
    if eval_set.problems:
        typer.echo(
            f"note: {len(eval_set.problems)} dataset problem(s), listed in metrics.md "
            f"(first: {eval_set.problems[0]})",
            err=True,
        )
    result = run_evaluate(
        detector,
        eval_set,
        out_dir,
        batch_size=batch_size,
        device=dev,
        threshold=threshold,
        progress=not quiet,
        n_overlays=overlays,
        workers=workers,
        checkpoint=str(checkpoint) if checkpoint is not None else f"baseline {baseline}",
        log=_stderr if quiet else None,  # without the progress display, skips still print
    )
    typer.echo(result.markdown().split("\n## Overlays")[0].rstrip())
    if result.skipped:
        typer.echo(
            f"warning: {len(result.skipped)} image(s) skipped as unusable (listed in "
            f"{out_dir / 'metrics.md'})",
            err=True,
        )
    curves = ", curves.png" if result.curves else ""
    typer.echo(f"\nwrote {out_dir}/: metrics.json, metrics.md, per_image.csv{curves}, overlays/")


def predict(
    inputs: Annotated[
        list[Path], typer.Argument(help="Photographs: image files and/or folders (recursive).")
    ],
    checkpoint: Annotated[Path, _CHECKPOINT],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    device: Annotated[str, _DEVICE] = "auto",
    batch_size: Annotated[int, _BATCH] = 4,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Probability threshold for the areas above it and the overlays' captions "
            "(default: the run's own, chosen on its synthetic validation; 0.5 without one).",
            min=0.0,
            max=1.0,
        ),
    ] = None,
    save_maps: Annotated[
        bool,
        typer.Option(
            "--save-maps",
            help="Also write each anomaly map as a 16-bit PNG, probability = value/65535, in "
            "the --frame.",
        ),
    ] = False,
    frame: Annotated[
        str,
        typer.Option(
            "--frame",
            metavar="original|square",
            help="Maps and overlays in the photograph's own geometry and resolution (original) "
            "or in the prepared square the network sees, at its training size (square).",
        ),
    ] = "original",
    scoring: Annotated[str, _SCORING] = "localization",
    flip: Annotated[bool | None, _FLIP] = None,
    workers: Annotated[int | None, _WORKERS] = None,
    quiet: Annotated[bool, _QUIET] = False,
) -> None:
    """Anomaly maps for new photographs: an overlay PNG per image and scores.csv.

    Maps and overlays are in each photograph's own frame (--frame square: the network's);
    scores are computed in the prepared square at the training size, as in training.
    """
    from resynth_models.predict import find_inputs
    from resynth_models.predict import predict as run_predict

    find_inputs(inputs)  # bad paths fail before the checkpoint is loaded
    detector, dev = _load(checkpoint, device, scoring, flip)
    result = run_predict(
        detector,
        inputs,
        out,
        batch_size=batch_size,
        device=dev,
        threshold=threshold,
        save_maps=save_maps,
        progress=not quiet,
        frame=frame,
        workers=workers,
        log=_stderr if quiet else None,
    )
    rows = sorted(result.predictions, key=lambda r: r.score, reverse=True)
    if len(rows) <= 20:
        width = max(len(r.name) for r in rows)
        for r in rows:
            typer.echo(f"{r.name:<{width}}  score {r.score:.4f}  max {r.max_prob:.4f}")
    if result.skipped:
        typer.echo(
            f"warning: {len(result.skipped)} photograph(s) skipped as unusable "
            f"(reasons in {out / 'skipped.csv'})",
            err=True,
        )
    typer.echo(result.summary())
