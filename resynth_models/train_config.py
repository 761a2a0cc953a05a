"""How to train: :class:`TrainConfig`, the presets' values, and the configs of an invocation
(a preset with the options given replaced). No I/O; the network's shape is a
:class:`~resynth_models.networks.NetworkConfig`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from anomalygen.errors import ConfigError
from resynth_models.data import GeometryConfig
from resynth_models.devices import check_device_name
from resynth_models.networks import PRESETS, NetworkConfig
from resynth_models.photometric import NO_PHOTOMETRIC, PhotometricConfig
from resynth_models.schedule import parse_duration
from resynth_models.train_options import PRESET_NAMES, TRAIN_OPTIONS, TrainOption

__all__ = [
    "AMPS",
    "OPERATIONAL_FIELDS",
    "STAGES",
    "TRAIN_PRESETS",
    "TrainConfig",
    "make_configs",
    "replace_configs",
    "resource_notes",
    "training_size",
]

STAGES = ("1", "2", "all")
AMPS = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the network's shape is a :class:`NetworkConfig`). Defaults: the paper's
    schedule for a GPU at 768x768 (preset "default"); see :data:`TRAIN_PRESETS` for "small"."""

    stage: str = "all"  # "1", "2" or "all" (1 then 2; stage 1 is skipped when not needed)
    size: int | None = None  # training side in pixels; None: the store's (paper: 768)
    upsample: bool = False  # allow a size above the store's (the samples are enlarged)
    batch_size: int = 8  # per process (ours: 768 px, depth 6, width 32 fit a 24 GB GPU in bf16)
    epochs: float | None = 300.0  # per stage; 1 epoch = len(store.normals) samples (ours: the
    #                               paper gives only the warm-up; 50 warm-up + 250 cosine epochs)
    steps: int | None = None  # per stage; replaces epochs when given
    stage1_steps: int | None = None  # stage 1's steps where they differ (None: as stage 2)
    lr: float = 5e-5  # initial (peak) learning rate (paper 4.1)
    min_lr: float = 2.5e-5  # end of the cosine decay (paper 4.1)
    warmup: str = "50ep"  # linear warm-up: "500" steps, "50ep" epochs or "5%" of the stage
    #                       (paper 4.1: 50 epochs)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW (torch's defaults)
    weight_decay: float = 0.01  # AdamW, convolution weights only (torch's AdamW default)
    grad_clip: float = 1.0  # max global gradient norm, 0 = off (nanoGPT's)
    focal_tau: float = 2.0  # stage 2: the focal loss's tau (paper Eq. 2); 0 = cross-entropy
    amp: str = "auto"  # "auto" (bf16 on a GPU that has it, else off) | "bf16" | "fp16" | "off"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    workers: int = 4  # DataLoader processes (0: in the training process); ours: a worker reads
    #                   about 35 samples/s at 768 px (benchmarks/bench_train.py), 4 feed a GPU
    seed: int = 0  # model init, data order and augmentation
    augment: GeometryConfig = field(default_factory=GeometryConfig)  # flip / rotate / zoom
    # stage 2: whole-image gain, gamma and blur (resynth_models.photometric); off is the
    # paper's setting (the "small" preset's: on)
    photometric: PhotometricConfig = field(default_factory=lambda: NO_PHOTOMETRIC)
    # validation, evaluation and prediction average each map with the mirrored image's (the
    # run's default for `resynth evaluate` / `predict`); off is the paper's (the "default" and
    # "small" presets': on, measured in resynth_models.train_options)
    test_flip: bool = False
    # stage 2: the detector's own threshold, where this share of the synthetic validation's
    # normal FOV pixels score at or above it (0: where its balanced accuracy is best). Ours,
    # from the idrid-512 development set: synthetic and real normal pixels score alike (their
    # false-positive rates agree within 0.02 up to 0.2, 0.04 at 0.3) but real lesions score
    # lower, so the synthetic best (false-positive rate 0.06-0.08) sits above the real best
    # (0.18-0.22); real balanced accuracy is within 0.01 of its best for rates 0.15 to 0.30
    # (README).
    threshold_fpr: float = 0.2
    val_fraction: float = 0.05  # stage 2: last share of the store's complete shards held out
    # Ours: validation, logging and checkpoints cost well under 5% of a 768 px GPU run at these.
    val_samples: int = 256  # held-out samples per validation, evenly spread (0: all of them)
    val_interval: int = 1000  # steps between validations (0: only at the end of stage 2)
    log_interval: int = 10  # steps between metrics.jsonl records / progress updates
    ckpt_interval: int = 500  # steps between resumable checkpoints (0: only at the end)
    compile: bool = False  # torch.compile the model (GPU; needs a C++ compiler on the CPU)
    stage1_from: str | None = None  # stage 2: take E_r/D_r from this run folder or weights file

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"--stage: must be 1, 2 or all, got {self.stage!r}")
        if self.size is not None and (isinstance(self.size, bool) or self.size < 8):
            raise ConfigError(f"--size: must be an integer >= 8, got {self.size!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: must be at least 1, got {self.batch_size}")
        if self.steps is None and self.epochs is None:
            raise ConfigError("training length: give --epochs or --steps")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps: must be at least 1, got {self.steps}")
        if self.stage1_steps is not None and self.stage1_steps < 1:
            raise ConfigError(f"--stage1-steps: must be at least 1, got {self.stage1_steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"--epochs: must be positive, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"--lr: must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"--min-lr: must be in [0, --lr {self.lr}], got {self.min_lr}")
        parse_duration(self.warmup, "--warmup")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay: must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.focal_tau <= 10.0:
            raise ConfigError(f"--focal-tau: must be in [0, 10], got {self.focal_tau}")
        if self.grad_clip < 0:
            raise ConfigError(f"--grad-clip: must be >= 0 (0 = off), got {self.grad_clip}")
        if self.amp not in AMPS:
            raise ConfigError(f"--amp: must be one of {', '.join(AMPS)}, got {self.amp!r}")
        check_device_name(self.device)
        if self.workers < 0:
            raise ConfigError(f"--workers: must be >= 0, got {self.workers}")
        if not 0.0 <= self.threshold_fpr < 1.0:
            raise ConfigError(f"--threshold-fpr: must be in [0, 1), got {self.threshold_fpr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction: must be in [0, 1), got {self.val_fraction}")
        for name in ("val_samples", "val_interval", "ckpt_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 0")
        if self.stage1_from is not None and self.stage != "2":
            raise ConfigError("--stage1-from: only with --stage 2 (stage 1 is not trained then)")
        if self.log_interval < 1:
            raise ConfigError(f"--log-interval: must be at least 1, got {self.log_interval}")


def _preset_value(option: TrainOption, value: Any) -> Any:
    """A preset's value of ``option``, written as the option's own value (``True`` for
    ``--photometric``), as the config field holds it."""
    return option.parse(value) if option.parse is not None and value is not None else value


#: Training defaults per network preset (the network shapes are ``networks.PRESETS``): the
#: fields each preset sets, where they differ from TrainConfig's defaults (which are the
#: "paper" preset's). Read off the option table, where each value is given and
#: measured (:data:`resynth_models.train_options.TRAIN_OPTIONS`).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    name: {o.field: _preset_value(o, o.presets[name]) for o in TRAIN_OPTIONS if name in o.presets}
    for name in PRESET_NAMES
}

#: Fields that may differ between invocations on one run folder (they do not change what is
#: learned, or they are the stage to run); any other difference needs a new folder or --overwrite.
OPERATIONAL_FIELDS = tuple(o.field for o in TRAIN_OPTIONS if o.operational)


def make_configs(
    preset: str = "default",
    network: dict[str, Any] | None = None,
    **train: Any,
) -> tuple[TrainConfig, NetworkConfig]:
    """``(TrainConfig, NetworkConfig)`` of a preset with some fields replaced.

    ``network`` replaces NetworkConfig fields (``rec_features``, ``rec_width``, ...); ``train``
    replaces TrainConfig fields. Giving ``steps`` clears the preset's ``epochs`` and vice versa,
    and either clears the preset's ``stage1_steps`` (``--steps 20`` means 20 steps per stage).
    """
    if preset not in PRESETS or preset not in TRAIN_PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; choose {', '.join(PRESETS)}")
    return replace_configs(TRAIN_PRESETS[preset], train, PRESETS[preset], network)


def replace_configs(
    fields: dict[str, Any],
    train: dict[str, Any],
    base_network: NetworkConfig,
    network: dict[str, Any] | None,
) -> tuple[TrainConfig, NetworkConfig]:
    """``fields`` with the given (non-None) ``train`` fields, ``base_network`` with ``network``."""
    if train.get("steps") is not None and train.get("epochs") is not None:
        raise ConfigError("--epochs and --steps: give one of them, not both")
    fields = dict(fields)
    if train.get("steps") is not None:
        fields["epochs"] = None
    if train.get("epochs") is not None:
        fields["steps"] = None
    if train.get("steps") is not None or train.get("epochs") is not None:
        fields.pop("stage1_steps", None)
    fields.update({k: v for k, v in train.items() if v is not None})
    try:
        train_config = TrainConfig(**fields)
    except TypeError as err:
        raise ConfigError(f"training option: {err}") from None
    try:
        network_config = dataclasses.replace(base_network, **(network or {}))
    except TypeError as err:
        raise ConfigError(f"network option: {err}") from None
    return train_config, network_config


def training_size(config: TrainConfig, store_size: int) -> int:
    """The side to train at: ``config.size``, or the store's when None. A side above the store's
    would enlarge every sample (no new detail, blurred lesion edges): refused unless
    ``config.upsample``."""
    if config.size is None:
        return store_size
    if config.size > store_size and not config.upsample:
        raise ConfigError(
            f"--size {config.size}: above the store's {store_size} px, so every sample would be "
            f"enlarged; render the store at {config.size}, train at --size {store_size} or "
            "below, or pass --upsample"
        )
    return config.size


def resource_notes(
    config: TrainConfig, network: NetworkConfig, device: torch.device, cpus: int | None = None
) -> list[str]:
    """What to say once before training on this machine: the default preset on a CPU (sized
    for a GPU), and more DataLoader processes than CPUs (torch would warn at every loader)."""
    notes = []
    if device.type == "cpu" and network in (PRESETS["default"], PRESETS["paper"]):
        notes.append(
            "the default preset is sized for a GPU (widths 32, depth 6, the paper's 300 epochs): "
            "on a CPU a step takes seconds to minutes; --preset small is sized for a CPU"
        )
    cpus = cpus if cpus is not None else cpu_count()
    if config.workers > cpus:
        notes.append(
            f"--workers {config.workers}: more DataLoader processes than the {cpus} CPU(s) this "
            f"process may use, which can slow loading down; --workers {cpus} or fewer suits "
            "this machine"
        )
    return notes


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Schedule
