"""Every knob of ``resynth train``, defined once: the config field it sets, its command-line
option and help, and its value in each preset.

:data:`TRAIN_OPTIONS` is the one table. :class:`~resynth_models.train_config.TrainConfig` holds
the fields and their defaults (the "paper" preset's; "default" differs only in test-time flips);
:data:`~resynth_models.train_config.TRAIN_PRESETS` and
:data:`~resynth_models.train_config.OPERATIONAL_FIELDS` are read off this table, and the CLI
(``cli/train_cmd.py``) makes one option of each row. torch-free, so that ``resynth --help``
stays fast: the rows that build a config object from an option import it when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from anomalygen.errors import ConfigError

__all__ = ["PRESET_NAMES", "TRAIN_OPTIONS", "TrainOption", "config_values", "parse_scales"]

#: The presets, as ``resynth_models.networks.PRESETS`` names them.
PRESET_NAMES = ("default", "paper", "small")

SCHEDULE = "Schedule"
NETWORK = "Network"
HARDWARE = "Hardware"
RUN = "Run folder"
VALIDATION = "Validation and logging"


@dataclass(frozen=True)
class TrainOption:
    """One knob: a field of the training config (``config="train"``, a ``TrainConfig`` field) or
    of the network's (``"network"``, a ``NetworkConfig`` field), and its option."""

    field: str
    flag: str  # "--val-interval"; "--photometric/--no-photometric" for an on/off pair
    help: str
    type: type = int  # of the option's value
    config: str = "train"
    panel: str | None = None  # the --help panel (None: the first, "Options")
    presets: Mapping[str, Any] = field(default_factory=dict)  # preset -> value (the option's,
    #                                        before parse), where it differs from TrainConfig's
    operational: bool = False  # may differ between invocations on one run folder (it does not
    #                            change what is learned, or it is the stage to run)
    min: int | None = None
    metavar: str | None = None
    switch: bool = False  # a flag without a value: given, or not (then the preset's value)
    name: str | None = None  # the command's parameter where it differs from ``field``
    parse: Callable[[Any], Any] | None = None  # option value -> field value (None: as it is)

    @property
    def parameter(self) -> str:
        return self.name or self.field


def parse_scales(text: str) -> tuple[float, ...]:
    """``--local-contrast``: "0.03125,0.1" -> (0.03125, 0.1); "none" -> ()."""
    if text.strip().lower() in ("none", "off", "0", ""):
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--local-contrast: expected numbers separated by commas or 'none', got {text!r}"
        ) from None


def _no_augment(off: bool) -> Any:
    from resynth_models.data import NO_AUGMENT

    return NO_AUGMENT if off else None


def _photometric(enabled: bool) -> Any:
    from resynth_models.photometric import PhotometricConfig

    return PhotometricConfig(enabled=enabled)


# "small": a 2-core CPU at 256x256 within 40 minutes for both stages (ours, measured with
# benchmarks/bench_detect.py on the idle 2-core dev machine; README "What the CPU preset
# learns"). Batches of 4: on this CPU a step of 4 costs 114 ms a sample against 230-260 ms in
# steps of 8 (cache), and short runs gain from more updates. Stage 1 sees 2,800 samples (its
# L2 has levelled off: 0.0042 at 700 steps of 4), stage 2 4,000: real-lesion AUPR on
# idrid-512 was 0.236, 0.253 and 0.224 after 500, 1,000 and 2,500 stage-2 steps (the
# synthetic validation AUPR kept rising: 0.31, 0.42, 0.55; longer runs learn our lesions'
# particulars, not lesions). Learning rate 1e-3 from 60-step runs per
# stage (5% warm-up, cosine to lr/5): stage-2 validation pixel AUPR (AUROC) after 60 steps
# 0.23 (0.94) at the paper's 5e-5, 0.62 (0.98) at 1e-3, 0.32 (0.93) at 3e-3; the paper's 5e-5
# suits its long GPU runs, not a few thousand steps. Photometric augmentation in stage 2:
# real-lesion AUROC / AUPR 0.803 / 0.253 off, 0.807 / 0.268 on (benchmarks/bench_detect.py).
# Test-time flips ("default" and "small"; not in the paper): real-lesion AUROC / AUPR on
# idrid-512 0.803 / 0.253 -> 0.808 / 0.262 and 0.856 / 0.268 -> 0.864 / 0.281 in two
# configurations (benchmarks/bench_detect.py), for twice the inference time.
# "default" and "paper": the paper's schedule (4.1), for a GPU at 768x768 (TrainConfig's);
# "default" adds the test-time flips.
#
# The rows' order is the order of the options in `resynth train --help`.
TRAIN_OPTIONS: tuple[TrainOption, ...] = (
    TrainOption("stage", "--stage", "1 (reconstruction), 2 (localisation) or all (default: all).",
                str, operational=True),
    TrainOption("size", "--size", "Training side in pixels (default: the store's; above it only "
                "with --upsample).", min=8),
    TrainOption("upsample", "--upsample", "Allow a --size above the store's (enlarges the "
                "samples).", bool, switch=True),
    TrainOption("batch_size", "--batch-size", "Samples per step and process (default: per "
                "preset; 8, small: 4).", min=1, presets={"small": 4}),
    TrainOption("epochs", "--epochs", "Length of each stage in epochs; 1 epoch = as many samples "
                "as the store has normal photographs, as in the paper (default preset: 300).",
                float, panel=SCHEDULE, presets={"small": None}),
    TrainOption("steps", "--steps", "Length of each stage in optimiser steps (instead of "
                "--epochs).", min=1, panel=SCHEDULE, presets={"small": 1000}),
    TrainOption("stage1_steps", "--stage1-steps", "Stage 1's length in steps where it differs "
                "from stage 2's (default: per preset).", min=1, panel=SCHEDULE,
                presets={"small": 700}),
    TrainOption("lr", "--lr", "Peak learning rate (paper: 5e-5).", float, panel=SCHEDULE,
                presets={"small": 1e-3}),
    TrainOption("min_lr", "--min-lr", "End of the cosine decay (paper: 2.5e-5).", float,
                panel=SCHEDULE, presets={"small": 2e-4}),
    TrainOption("warmup", "--warmup", "Linear warm-up: steps (500), epochs (50ep) or a share of "
                "the stage (5%) (paper: 50ep).", str, panel=SCHEDULE, presets={"small": "5%"}),
    TrainOption("weight_decay", "--weight-decay", "AdamW weight decay (default 0.01).", float,
                panel=SCHEDULE),
    TrainOption("grad_clip", "--grad-clip", "Max gradient norm, 0 = off (default 1.0).", float,
                panel=SCHEDULE),
    TrainOption("focal_tau", "--focal-tau", "Stage 2: the focal loss's tau (paper Eq. 2: 2; 0 = "
                "binary cross-entropy).", float, panel=SCHEDULE),
    TrainOption("seed", "--seed", "Seed of init, data order, augmentation (default 0)."),
    TrainOption("augment", "--no-augment", "No flips, rotations or zoom.", bool, panel=SCHEDULE,
                switch=True, name="no_augment", parse=_no_augment),
    TrainOption("photometric", "--photometric/--no-photometric", "Stage 2: whole-image gain, "
                "gamma and blur changes (other cameras; default: per preset, small: on).", bool,
                panel=SCHEDULE, presets={"small": True}, parse=_photometric),
    TrainOption("rec_features", "--rec-features", "Table 3 row: trained (paper), random, none "
                "or image.", str, "network", NETWORK),
    TrainOption("rec_width", "--rec-width", "E_r/D_r base width.", config="network",
                panel=NETWORK),
    TrainOption("rec_depth", "--rec-depth", "E_r/D_r levels.", config="network", panel=NETWORK),
    TrainOption("loc_width", "--loc-width", "E_l/D_l base width.", config="network",
                panel=NETWORK),
    TrainOption("loc_depth", "--loc-depth", "E_l/D_l levels.", config="network", panel=NETWORK),
    TrainOption("local_contrast", "--local-contrast", "E_l also sees the image's local contrast "
                "at these background-blur sigmas, fractions of the side, e.g. 0.03125,0.1 "
                "('none': off; default: per preset).", str, "network", NETWORK, metavar="LIST",
                parse=parse_scales),
    TrainOption("stage1_from", "--stage1-from", "With --stage 2: take E_r/D_r from this run "
                "folder or weights file.", str, panel=NETWORK),
    TrainOption("device", "--device", "auto, cpu or cuda or cuda:N (default auto).", str,
                panel=HARDWARE, operational=True),
    TrainOption("amp", "--amp", "Mixed precision: auto (bf16 on a GPU), bf16, fp16 or off "
                "(default auto).", str, panel=HARDWARE, operational=True),
    TrainOption("workers", "--workers", "DataLoader processes (default: per preset).",
                panel=HARDWARE, presets={"small": 1}, operational=True),
    TrainOption("compile", "--compile", "torch.compile the model.", bool, panel=HARDWARE,
                operational=True, switch=True, name="compile_model"),
    TrainOption("val_fraction", "--val-fraction", "Share of the store's shards held out for "
                "validation (whole shards, at least one; 0 = none; default 0.05).", float,
                panel=VALIDATION),
    TrainOption("val_samples", "--val-samples", "Held-out samples per validation (default: per "
                "preset).", panel=VALIDATION, presets={"small": 64}, operational=True),
    TrainOption("val_interval", "--val-interval", "Steps between validations (default: per "
                "preset).", panel=VALIDATION, presets={"small": 500}, operational=True),
    TrainOption("test_flip", "--test-flip/--no-test-flip", "Validation, evaluation and "
                "prediction average each map with the left-right mirrored image's (2x their "
                "time; default: on, paper: off).", bool, panel=VALIDATION,
                presets={"default": True, "small": True}, operational=True),
    TrainOption("threshold_fpr", "--threshold-fpr", "The detector's threshold: where this share "
                "of the synthetic validation's normal pixels score above it (0: its best "
                "balanced accuracy; default 0.2).", float, panel=VALIDATION, operational=True),
    TrainOption("log_interval", "--log-interval", "Steps between log records (default: per "
                "preset).", panel=VALIDATION, presets={"small": 10}, operational=True),
    TrainOption("ckpt_interval", "--ckpt-interval", "Steps between resumable checkpoints "
                "(default: per preset).", panel=RUN, presets={"small": 100}, operational=True),
)  # fmt: skip


def config_values(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The command's option values (by parameter name; None or an absent switch: not given)
    as ``(network, train)`` field values for ``make_configs`` / ``resume_configs``."""
    network: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for option in TRAIN_OPTIONS:
        value = values.get(option.parameter)
        if option.switch and not value:
            value = None  # an absent flag leaves the preset's value
        if value is not None and option.parse is not None:
            value = option.parse(value)
        if value is not None:
            (network if option.config == "network" else train)[option.field] = value
    return network, train
