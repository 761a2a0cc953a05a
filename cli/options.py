"""Command-line options shared by several commands (one definition, the same help everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

GENERATOR = "Generator"
SOURCES = "Sources"
STORAGE = "Storage"

# --- where a store lives ---------------------------------------------------------------------
StorageOption = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        "-S",
        metavar="KEY=VALUE",
        help="fsspec option for a URL store, KEY=VALUE (repeatable; JSON values are parsed): "
        "e.g. -S endpoint_url=http://minio:9000 -S key=... -S secret=... -S anon=true.",
        rich_help_panel=STORAGE,
    ),
]

# --- sources -------------------------------------------------------------------------------
Src = Annotated[
    Path | None,
    typer.Option(
        "--src",
        help="Normal fundus photographs: a folder (searched recursively) or a text file listing "
        "image paths.",
        rich_help_panel=SOURCES,
    ),
]
Demo = Annotated[
    bool,
    typer.Option(
        "--demo",
        help="Use the built-in demo photographs (scikit-image's CC0 retina) instead of --src.",
        rich_help_panel=SOURCES,
    ),
]
Labels = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        help="Labels CSV (EyeQ: Label_EyeQ_train.csv) to select images with --where.",
        rich_help_panel=SOURCES,
    ),
]
LabelsColumn = Annotated[
    str | None,
    typer.Option(
        "--labels-column",
        help="CSV column holding the image names (default: image, as in EyeQ).",
        rich_help_panel=SOURCES,
    ),
]
Where = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        help="Keep CSV rows with COLUMN=VALUE (repeatable; e.g. --where DR_grade=0 "
        "--where quality=0).",
        rich_help_panel=SOURCES,
    ),
]

# --- generator (GeneratorConfig fields; render_cmd.generator_config applies them) -----------
Lesions = Annotated[
    str | None,
    typer.Option(
        "--lesions",
        metavar="MIN-MAX",
        help="Lesions per anomalous sample, MIN-MAX (default: 1-4).",
        rich_help_panel=GENERATOR,
    ),
]
PNormal = Annotated[
    float | None,
    typer.Option(
        "--p-normal",
        help="Probability that a sample stays normal (default: 0.5).",
        rich_help_panel=GENERATOR,
    ),
]
CropFraction = Annotated[
    str | None,
    typer.Option(
        "--crop-fraction",
        metavar="MIN-MAX",
        help="Lesion crop side as a fraction of the image side, MIN-MAX (default: 0.015-0.25).",
        rich_help_panel=GENERATOR,
    ),
]
Alpha = Annotated[
    float | None,
    typer.Option(
        "--alpha",
        help="Self-mix scaling factor alpha of Eq. 3 (default: 0.7).",
        rich_help_panel=GENERATOR,
    ),
]
Source = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="Lesion source: fundus or texture (default: fundus).",
        rich_help_panel=GENERATOR,
    ),
]
Blend = Annotated[
    str | None,
    typer.Option(
        "--blend",
        help="selfmix (Eq. 4) or paste (default: selfmix).",
        rich_help_panel=GENERATOR,
    ),
]
MaskKind = Annotated[
    str | None,
    typer.Option(
        "--mask",
        help="Lesion mask: perlin or crop (default: perlin).",
        rich_help_panel=GENERATOR,
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help='Generator config JSON, as `anomalygen info --json` prints it under "generator" '
        "(the other generator options override its fields).",
        rich_help_panel=GENERATOR,
    ),
]
