"""Two-stage training of ReSynthDetect from an anomalygen store: a plain torch loop.

    resynth train --data synth.zarr --out runs/exp1                  # both stages (GPU, 768 px)
    resynth train --data small.zarr --out runs/cpu --preset small    # 2-core CPU, 256 px store
    resynth train --data synth.zarr --out runs/exp1 --resume         # after an interruption
    torchrun --nproc_per_node 4 -m anomalygen_cli.resynth_cli train --data synth.zarr --out runs/ddp

Stage 1 (paper 3.1): the autoencoder E_r/D_r (:class:`ReconstructionNet`) learns to reconstruct
the store's normal photographs with the L2 loss of Eq. 1. Stage 2 (paper 3.2): the localisation
network E_l/D_l, fed with the FROZEN E_r's features at every level, learns to find the synthetic
lesions M_G in I_G with the focal loss of Eq. 2 (tau = 2). ``rec_features`` "random" and "none"
(Table 3) need no stage 1; "trained" and "image" take E_r (and D_r) from it.

Losses over the whole image: Eq. 1 includes the black border outside the field of view (FOV),
as the paper writes it; D_r learns that border in a few steps, after which it only scales the
loss by the FOV's share of the image (pi/4 for a full circle), so masking it would change only the
learning rate's meaning. Validation, in contrast, counts pixels inside the FOV only, as the
evaluation does.

Read :func:`train` top to bottom: open the store, check the run folder, then per stage build
the data, the model and the optimiser, restore a saved state when resuming, and loop:
learning rate of the step -> :func:`train_step` -> log -> validate -> checkpoint.

Schedule (paper 4.1): AdamW, initial learning rate 5e-5, linear warm-up over 50 epochs, cosine
decay to 2.5e-5 (:func:`learning_rate`). An *epoch* is as many samples as the store has normal
photographs, in both stages: the paper generated one synthetic image per normal training image
per epoch, so with a pre-rendered store this keeps its 50-epoch warm-up and any ``--epochs``
meaning the same amount of training as in the paper. Stage 2 cycles through the store's
training shards as often as that needs (each pass in a new order, with new augmentations).

Optimiser: AdamW. The paper's learning rates (5e-5) are Adam-sized (DRAEM, the paper's base, uses
Adam); AdamW's decoupled weight decay keeps the decay independent of Adam's per-weight step sizes
(Loshchilov & Hutter 2019); decay applies to convolution weights only, not to biases or
normalisation gains (as nanoGPT does).

Exact resume: the order of samples and their augmentation are functions of (seed, step)
(:mod:`resynth_models.data`), the learning rate a function of the step, and a checkpoint holds the
weights, AdamW's moments, the GradScaler and the RNG states; so on the CPU a run interrupted and
resumed ends with the same weights, bit for bit, as one that was not.

GPU: bf16 autocast (``--amp auto``), channels-last tensors (on the CPU too), pinned host memory
and non-blocking copies, optional ``torch.compile``. Several GPUs: launch with ``torchrun
--nproc_per_node N``; each process trains on its share of every global batch
(DistributedDataParallel; ``batch_size`` is per process), rank 0 alone writes checkpoints and
logs. The gloo backend on CPUs, nccl on GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from anomalygen.config import from_dict, to_dict
from anomalygen.errors import AnomalygenError, ConfigError, StoreError
from anomalygen.progress import Progress
from resynth_models import checkpoint as ckpt
from resynth_models.data import (
    NO_AUGMENT,
    GeometryConfig,
    NormalsDataset,
    Split,
    StreamBatchSampler,
    SyntheticDataset,
    n_normals,
    split_shards,
    spread,
    steps_for,
    worker_context,
    worker_init,
)
from resynth_models.devices import check_device_name, resolve_device
from resynth_models.losses import focal_loss, reconstruction_loss
from resynth_models.metrics import PixelMetrics
from resynth_models.networks import (
    PRESETS,
    NetworkConfig,
    ReconstructionNet,
    ReSynthDetect,
    check_input_size,
)
from resynth_models.photometric import NO_PHOTOMETRIC, PhotometricConfig

__all__ = [
    "TRAIN_PRESETS",
    "StageResult",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "learning_rate",
    "make_configs",
    "parse_duration",
    "resource_notes",
    "resume_configs",
    "train",
    "train_step",
    "training_size",
]

STAGES = ("1", "2", "all")
AMPS = ("auto", "bf16", "fp16", "off")
FOCAL_TAU = 2.0  # paper Eq. 2


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
    amp: str = "auto"  # "auto" (bf16 on a GPU that has it, else off) | "bf16" | "fp16" | "off"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    workers: int = 4  # DataLoader processes (0: in the training process); ours: a worker reads
    #                   about 35 samples/s at 768 px (benchmarks/bench_train.py), 4 feed a GPU
    seed: int = 0  # model init, data order and augmentation
    augment: GeometryConfig = field(default_factory=GeometryConfig)  # flip / rotate / zoom
    # whole-image gain, gamma and blur (resynth_models.photometric); off is the paper's setting
    photometric: PhotometricConfig = field(default_factory=lambda: NO_PHOTOMETRIC)
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
        if self.grad_clip < 0:
            raise ConfigError(f"--grad-clip: must be >= 0 (0 = off), got {self.grad_clip}")
        if self.amp not in AMPS:
            raise ConfigError(f"--amp: must be one of {', '.join(AMPS)}, got {self.amp!r}")
        check_device_name(self.device)
        if self.workers < 0:
            raise ConfigError(f"--workers: must be >= 0, got {self.workers}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction: must be in [0, 1), got {self.val_fraction}")
        for name in ("val_samples", "val_interval", "ckpt_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 0")
        if self.stage1_from is not None and self.stage != "2":
            raise ConfigError("--stage1-from: only with --stage 2 (stage 1 is not trained then)")
        if self.log_interval < 1:
            raise ConfigError(f"--log-interval: must be at least 1, got {self.log_interval}")


#: Training defaults per network preset (the network shapes are ``networks.PRESETS``).
#:
#: "default" and "paper": the paper's schedule (4.1), for a GPU at 768x768.
#:
#: "small": a 2-core CPU at 256x256 within 40 minutes for both stages (ours, measured with
#: benchmarks/bench_detect.py on the idle 2-core dev machine; README "What the CPU preset
#: learns"). Batches of 4: on this CPU a step of 4 costs 114 ms a sample against 230-260 ms in
#: steps of 8 (cache), and short runs gain from more updates. Stage 1 sees 2,800 samples (its
#: L2 has levelled off: 0.0042 at 700 steps of 4), stage 2 4,000: real-lesion AUPR on
#: idrid-512 was 0.236, 0.253 and 0.224 after 500, 1,000 and 2,500 stage-2 steps (the
#: synthetic validation AUPR kept rising: 0.31, 0.42, 0.55; longer runs learn our lesions'
#: particulars, not lesions). Learning rate 1e-3 from 60-step runs per
#: stage (5% warm-up, cosine to lr/5): stage-2 validation pixel AUPR (AUROC) after 60 steps
#: 0.23 (0.94) at the paper's 5e-5, 0.62 (0.98) at 1e-3, 0.32 (0.93) at 3e-3; the paper's 5e-5
#: suits its long GPU runs, not a few thousand steps.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {},
    "small": {
        "batch_size": 4,
        "epochs": None,
        "stage1_steps": 700,
        "steps": 1000,
        "lr": 1e-3,
        "min_lr": 2e-4,
        "warmup": "5%",
        "workers": 1,
        "val_samples": 64,
        "val_interval": 500,
        "log_interval": 10,
        "ckpt_interval": 100,
    },
}

#: Fields that may differ between invocations on one run folder (they do not change what is
#: learned, or they are the stage to run); any other difference needs a new folder or --overwrite.
OPERATIONAL_FIELDS = (
    "stage",
    "device",
    "amp",
    "workers",
    "compile",
    "log_interval",
    "ckpt_interval",
    "val_interval",
    "val_samples",
)


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
    return _configs(TRAIN_PRESETS[preset], train, PRESETS[preset], network)


def resume_configs(
    run: str | os.PathLike, network: dict[str, Any] | None = None, **train: Any
) -> tuple[TrainConfig, NetworkConfig]:
    """The configs the run in ``run`` was started with (its config.json), with the given fields
    replaced as :func:`make_configs` replaces a preset's: what ``--resume`` without ``--preset``
    trains with, so that only the options given again are compared with the run's. A folder
    without a run gives the default preset's (there is nothing to resume)."""
    path = Path(run) / ckpt.CONFIG_FILE
    if not path.is_file():
        return make_configs("default", network, **train)
    saved = ckpt.read_run_config(run)
    try:
        base = from_dict(TrainConfig, saved.get("train", {}))
    except ConfigError as err:
        raise ckpt.CheckpointError(f"{path}: no usable training config ({err})") from None
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return _configs(fields, train, ckpt.network_config(saved, str(path)), network)


def _configs(
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
    cpus = cpus if cpus is not None else _cpu_count()
    if config.workers > cpus:
        notes.append(
            f"--workers {config.workers}: more DataLoader processes than the {cpus} CPU(s) this "
            f"process may use, which can slow loading down; --workers {cpus} or fewer suits "
            "this machine"
        )
    return notes


def _cpu_count() -> int:
    """The CPUs this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Schedule


def parse_duration(text: str | int, option: str = "--warmup") -> tuple[float, str]:
    """``"500"`` -> (500, "steps"), ``"50ep"`` -> (50, "epochs"), ``"5%"`` -> (5, "percent")."""
    s = str(text).strip().lower().replace(" ", "")
    units = (("%", "percent"), ("epochs", "epochs"), ("epoch", "epochs"), ("ep", "epochs"),
             ("steps", "steps"), ("step", "steps"))  # fmt: skip
    unit = "steps"
    for suffix, name in units:
        if s.endswith(suffix):
            s, unit = s[: -len(suffix)], name
            break
    try:
        value = float(s)
    except ValueError:
        raise ConfigError(
            f"{option}: expected steps (500), epochs (50ep) or a percentage of the stage (5%), "
            f"got {text!r}"
        ) from None
    if not value >= 0 or (unit == "percent" and value > 100) or not math.isfinite(value):
        raise ConfigError(f"{option}: out of range: {text!r}")
    if unit == "steps" and value != int(value):
        raise ConfigError(f"{option}: steps must be a whole number, got {text!r}")
    return value, unit


def duration_steps(text: str, *, steps_per_epoch: float, total_steps: int) -> int:
    value, unit = parse_duration(text)
    if unit == "percent":
        return round(total_steps * value / 100.0)
    if unit == "epochs":
        return round(value * steps_per_epoch)
    return int(value)


def learning_rate(step: int, *, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based): linear warm-up over ``warmup``
    steps to ``lr``, then cosine decay to ``min_lr`` at step ``total`` (nanoGPT's schedule)."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


# ---------------------------------------------------------------------------------------------
# One optimiser step


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    stage: int,
    autocast_dtype: torch.dtype | None = None,
    scaler: Any = None,
    grad_clip: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch; returns (loss, gradient norm) as tensors (no GPU sync).

    ``images`` (B, 3, H, W) float in [0, 1]. Stage 1: ``model`` is the ReconstructionNet and the
    loss is Eq. 1 between D_r(E_r(I)) and I. Stage 2: ``model`` is ReSynthDetect (or its DDP
    wrapper), ``masks`` M_G (B, H, W) in {0, 1} and the loss is the focal loss of Eq. 2.
    ``grad_clip`` 0 computes the norm without clipping. ``scaler``: a GradScaler for fp16.
    """
    autocast = (
        torch.autocast(images.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else nullcontext()
    )
    with autocast:
        out = model(images)
    if stage == 1:
        loss = reconstruction_loss(out, images)
    else:
        loss = focal_loss(out, masks, tau=FOCAL_TAU)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach(), grad_norm.detach()


def make_optimizer(params: Any, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on convolution weights (2-D and more), none on biases and norms."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=config.betas, fused=device.type == "cuda" or None
    )


# ---------------------------------------------------------------------------------------------
# Devices and processes


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16: needs a CUDA GPU; use --amp bf16 or off on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


@dataclass
class _Dist:
    """This process's place among ``torchrun``'s processes (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> _Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(rank=rank, world=world, local_rank=local, initialised=True)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.clone()
            torch.distributed.all_reduce(value)
            value /= self.world
        return value

    def close(self) -> None:
        if self.initialised and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Results, interruption, hooks


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, or ``on_step`` asking to stop): the state was saved at the last
    completed step; ``str(err)`` says how to resume."""


@dataclass(frozen=True)
class StepInfo:
    """What ``on_step`` receives after every optimiser step."""

    stage: int
    step: int  # steps completed in this stage
    total_steps: int
    loss: float
    model: torch.nn.Module  # the trained module (ReconstructionNet or ReSynthDetect)


@dataclass(frozen=True)
class StageResult:
    stage: int
    total_steps: int
    start_step: int  # > 0 when resumed
    seconds: float
    samples_per_second: float
    final_loss: float | None  # mean over the last log interval
    validation: dict[str, Any] | None  # the last one (stage 2)
    weights: str  # RUN/stage<N>.safetensors
    skipped: str | None = None  # why nothing was trained

    def summary(self) -> str:
        if self.skipped:
            return f"stage {self.stage}: {self.skipped}"
        text = (
            f"stage {self.stage}: {self.total_steps - self.start_step} steps"
            + (f" (resumed at {self.start_step})" if self.start_step else "")
            + f" in {self.seconds:.0f}s, {self.samples_per_second:.1f} samples/s"
        )
        if self.final_loss is not None:
            text += f", loss {self.final_loss:.4g}"
        v = self.validation or {}
        if "val_auroc" in v:
            text += f", validation pixel AUROC {v['val_auroc']:.3f} AUPR {v['val_aupr']:.3f}"
        return text + f" -> {self.weights}"


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    stages: list[StageResult]
    notes: list[str] = field(default_factory=list)
    rank: int = 0  # this process's under torchrun: rank 0 alone reports

    def summary(self) -> str:
        return "\n".join(s.summary() for s in self.stages) + f"\nrun folder: {self.run_dir}"


class _StopRequest:
    """First Ctrl-C / SIGTERM: finish the step, save, stop. Second Ctrl-C: stop at once."""

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self._enabled = enabled and threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if self._enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Logging: metrics.jsonl, TensorBoard, progress display (rank 0 only)


class _Log:
    def __init__(self, run: Path, enabled: bool, progress: bool) -> None:
        self.enabled = enabled
        self.path = run / ckpt.METRICS_FILE
        self.progress = progress and enabled
        self._bar: Progress | None = None
        self._tb: Any = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run / "tb"))
            except Exception:  # tensorboard not installed (ImportError) or unusable
                self._tb = None

    def trim(self, stage: int, step: int) -> None:
        """Resuming at ``step``: drop the stage's records logged after that checkpoint."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if rec.get("stage") == stage and rec.get("step", 0) > step:
                continue
            keep.append(line)
        ckpt.atomic_write_bytes(self.path, "".join(k + "\n" for k in keep).encode())

    def record(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **rec}
        with open(self.path, "a") as f:
            f.write(json.dumps(_finite(rec)) + "\n")
        if self._tb is not None and "step" in rec:
            for key, value in rec.items():
                if key not in ("stage", "step", "time") and isinstance(value, int | float):
                    self._tb.add_scalar(f"stage{rec['stage']}/{key}", value, rec["step"])

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.log(text)
        elif self.progress:
            print(text, file=sys.stderr, flush=True)

    def start_bar(self, stage: int, total: int, done: int) -> None:
        self._bar = Progress(
            total, description=f"stage {stage}", unit="steps", completed=done, enabled=self.progress
        )
        self._bar.start()

    def update_bar(self, step: int, loss: float, rate: float) -> None:
        if self._bar is not None:
            status = f"loss {loss:.4g}, {rate:.1f} samples/s"
            self._bar.advance(step - self._bar.completed, status=status)

    def stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.stop_bar()
        if self._tb is not None:
            self._tb.close()


# ---------------------------------------------------------------------------------------------
# The run folder


def _store_identity(store: Any) -> dict[str, Any]:
    """What makes a store the same store wherever it lives."""
    a = store.attrs
    return {k: a.get(k) for k in ("n", "size", "seed", "shard_size", "created")}


def _run_record(store: Any, config: TrainConfig, network: NetworkConfig, size: int) -> dict:
    import platform

    import anomalygen
    import resynth_models

    return {
        "format": ckpt.RUN_FORMAT,
        "format_version": ckpt.RUN_FORMAT_VERSION,
        "network": to_dict(network),
        "train": to_dict(config),
        "data": {
            "store": store.url,
            "store_id": _store_identity(store),
            "store_size": int(store.size),
            "size": int(size),
            "clahe": bool(store.attrs.get("clahe", True)),
            "normals": n_normals(store),
        },
        "versions": {
            "resynth_models": resynth_models.__version__,
            "anomalygen": anomalygen.__version__,
            "anomalygen_store": store.attrs.get("anomalygen_version"),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    old_network = _as_read(NetworkConfig, old.get("network", {}))
    for key in sorted(set(old_network) | set(new["network"])):
        a, b = old_network.get(key), new["network"].get(key)
        if a != b:
            out.append(f"{key} {json.dumps(a)} -> {json.dumps(b)}")
    old_train = _as_read(TrainConfig, old.get("train", {}))
    for key in sorted(set(old_train) | set(new["train"])):
        a, b = old_train.get(key), new["train"].get(key)
        # size and upsample are compared as the side they resolve to (data.size, below)
        if key not in (*OPERATIONAL_FIELDS, "size", "upsample") and a != b:
            out.append(f"{key} {json.dumps(a)} -> {json.dumps(b)}")
    old_data, new_data = old.get("data", {}), new["data"]
    if old_data.get("store_id") != new_data["store_id"]:
        out.append(f"store {old_data.get('store')} -> {new_data['store']} (a different store)")
    if old_data.get("size") != new_data["size"]:
        out.append(f"size {old_data.get('size')} -> {new_data['size']}")
    return out


def _as_read(cls: type, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config as reading it gives it: fields added since the run was made take their
    defaults (which are what that run trained with), so they are no difference."""
    try:
        return to_dict(from_dict(cls, saved))
    except ConfigError:
        return saved


@dataclass
class _Plan:
    stages: list[int]  # to run, in order
    resume_from: dict[int, int]  # stage -> saved step
    skip: dict[int, str]  # stage -> why it is skipped
    notes: list[str]
    record: dict[str, Any]  # config.json to write


_RUN_ENTRIES = (ckpt.CONFIG_FILE, ckpt.METRICS_FILE, ckpt.STATE_DIR, "tb",
                "stage1.safetensors", "stage2.safetensors")  # fmt: skip


def _plan_run(
    run: Path,
    store: Any,
    config: TrainConfig,
    network: NetworkConfig,
    size: int,
    *,
    resume: bool,
    overwrite: bool,
) -> _Plan:
    """Check the run folder against this invocation (read-only) and decide what to run."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one")
    record = _run_record(store, config, network, size)
    notes: list[str] = []
    if run.exists() and not run.is_dir():
        raise ConfigError(f"--out {run}: a file is in the way (a run is a folder)")
    fresh = True
    if run.is_dir() and any(run.iterdir()):
        if not (run / ckpt.CONFIG_FILE).exists():
            raise ConfigError(
                f"--out {run}: the folder exists and is not a resynth run folder "
                "(no config.json); choose another --out"
            )
        old = ckpt.read_run_config(run)
        if not overwrite:
            diffs = _differences(old, record)
            if diffs:
                more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
                raise ConfigError(
                    f"--out {run}: holds a run with a different configuration "
                    f"({'; '.join(diffs[:4])}{more}); use another --out, or --overwrite to "
                    "replace it"
                )
            record["created"] = old.get("created", record["created"])
            if "split" in old.get("data", {}):
                record["data"]["split"] = old["data"]["split"]
            fresh = False
    if resume and fresh:
        notes.append(f"--resume: nothing to resume in {run}; starting a new run")

    wanted = [1, 2] if config.stage == "all" else [int(config.stage)]
    skip: dict[int, str] = {}
    if config.stage == "all" and not network.needs_stage1:
        wanted = [2]
        notes.append(
            f"rec_features {network.rec_features!r} does not use a trained E_r: skipping stage 1"
        )
    resume_from: dict[int, int] = {}
    stages: list[int] = []
    for stage in wanted:
        done = (not fresh) and ckpt.stage_weights_path(run, stage).exists()
        state = None if fresh else ckpt.read_state_info(run, stage)
        if not resume and (done or state is not None):
            what = "is complete" if done else f"has a saved state at step {state['step']}"
            raise ConfigError(
                f"--out {run}: stage {stage} {what}; use --resume to continue it or "
                "--overwrite to start again"
            )
        if done and (state is None or state["step"] >= state["info"].get("total_steps", 0)):
            skip[stage] = "already complete"
            continue
        if state is not None:
            resume_from[stage] = int(state["step"])
        stages.append(stage)

    if 2 in stages and 1 not in stages and network.needs_stage1:
        have = (not fresh) and ckpt.stage_weights_path(run, 1).exists()
        if not have and config.stage1_from is None:
            raise ConfigError(
                f"--stage 2: {ckpt.stage_weights_path(run, 1)} not found: rec_features "
                f"{network.rec_features!r} needs the stage-1 reconstruction network; train it "
                "first (--stage 1, or --stage all), or name one with --stage1-from"
            )
    return _Plan(stages, resume_from, skip, notes, record)


def _write_run(run: Path, plan: _Plan, overwrite: bool) -> None:
    """Rank 0: clear an overwritten run (only a run folder's own entries) and write config."""
    if overwrite and (run / ckpt.CONFIG_FILE).exists():
        for name in _RUN_ENTRIES:
            path = run / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    run.mkdir(parents=True, exist_ok=True)
    ckpt.write_json(run / ckpt.CONFIG_FILE, plan.record)


def _stage1_weights(config: TrainConfig, run: Path) -> Path:
    if config.stage1_from is None:
        return ckpt.stage_weights_path(run, 1)
    src = Path(config.stage1_from)
    return ckpt.stage_weights_path(src, 1) if src.is_dir() else src


# ---------------------------------------------------------------------------------------------
# Training


def train(
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    network: NetworkConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[StepInfo], bool | None] | None = None,
    storage_options: dict | None = None,
) -> TrainResult:
    """Train ReSynthDetect on the store at ``data`` into the run folder ``out``.

    ``data`` is a store path or URL (``s3://...`` with fsspec ``storage_options``, which are
    used to read and never written to the run folder).

    ``config`` / ``network`` default to the "default" preset (see :func:`make_configs`).
    ``resume`` continues the stages that have a saved state (and skips complete ones);
    ``overwrite`` replaces a run folder whose configuration differs. ``on_step(info)`` is
    called after every step; returning True stops as Ctrl-C does: the state is saved and
    :class:`TrainingInterrupted` is raised. Errors a user can fix raise
    :class:`~anomalygen.errors.AnomalygenError` subclasses.
    """
    import anomalygen

    config = config if config is not None else TrainConfig()
    network = network if network is not None else PRESETS["default"]
    run = Path(out)
    device = resolve_device(config.device)
    amp_dtype = _amp_dtype(config.amp, device)
    try:
        store = anomalygen.open_store(data, storage_options)
    except StoreError as err:
        raise StoreError(f"--data: {err}") from None
    n_norm = n_normals(store)
    size = training_size(config, int(store.size))
    check_input_size(size, size, max(network.rec_depth, network.loc_depth))
    plan = _plan_run(run, store, config, network, size, resume=resume, overwrite=overwrite)
    plan.notes.extend(resource_notes(config, network, device))

    dist = _Dist.from_env(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    log = None
    try:
        if dist.main:
            _write_run(run, plan, overwrite)
        dist.barrier()
        log = _Log(run, enabled=dist.main, progress=progress)
        for note in plan.notes:
            log.message(f"note: {note}")
        results = [
            StageResult(s, 0, 0, 0.0, 0.0, None, None, str(ckpt.stage_weights_path(run, s)), why)
            for s, why in plan.skip.items()
        ]
        with warnings.catch_warnings():
            # resource_notes said it once; torch's DataLoader would repeat it for every loader
            warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
            for stage in plan.stages:
                results.append(
                    _train_stage(
                        stage,
                        run=run,
                        store=store,
                        config=config,
                        network=network,
                        size=size,
                        n_norm=n_norm,
                        device=device,
                        amp_dtype=amp_dtype,
                        dist=dist,
                        log=log,
                        resume_step=plan.resume_from.get(stage),
                        plan=plan,
                        on_step=on_step,
                    )
                )
        results.sort(key=lambda r: r.stage)
        return TrainResult(str(run), results, plan.notes, dist.rank)
    finally:
        if log is not None:
            log.close()
        dist.close()


def _stage_seed(seed: int, stage: int) -> int:
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0])


def _build_model(
    stage: int, network: NetworkConfig, config: TrainConfig, run: Path, seed: int
) -> torch.nn.Module:
    torch.manual_seed(_stage_seed(seed, stage))
    if stage == 1:
        return ReconstructionNet(network.rec_width, network.rec_depth, network.norm)
    model = ReSynthDetect(network)  # "random": E_r keeps this seeded random init, frozen
    if network.needs_stage1:
        path = _stage1_weights(config, run)
        if not path.exists():
            raise ckpt.CheckpointError(
                f"{path}: stage-1 weights not found (rec_features {network.rec_features!r} "
                "needs them)"
            )
        tensors, _ = ckpt.load_weights(path)
        ckpt.load_module_weights(model.rec_net, tensors, str(path))
    return model


def _to_device(
    batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 batch -> images float (B, 3, H, W) in [0, 1] and masks float (B, H, W), on
    ``device`` (converted there: a quarter of the bytes cross the bus)."""
    images = batch["image"].to(device, non_blocking=True).float().div_(255.0)
    images = images.contiguous(memory_format=torch.channels_last)
    masks = batch["mask"].to(device, non_blocking=True).float() if "mask" in batch else None
    return images, masks


def _loader(dataset: Any, config: TrainConfig, device: torch.device, **kw: Any) -> DataLoader:
    workers = config.workers
    return DataLoader(
        dataset,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if workers else None,
        multiprocessing_context=worker_context() if workers else None,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator(),  # the loader's base seed must not draw from torch's RNG
        **kw,
    )


def _train_stage(
    stage: int,
    *,
    run: Path,
    store: Any,
    config: TrainConfig,
    network: NetworkConfig,
    size: int,
    n_norm: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    dist: _Dist,
    log: _Log,
    resume_step: int | None,
    plan: _Plan,
    on_step: Callable[[StepInfo], bool | None] | None,
) -> StageResult:
    t0 = time.monotonic()
    state = ckpt.read_state_info(run, stage) if resume_step is not None else None

    # --- data ---------------------------------------------------------------------------
    split = None
    if stage == 1:
        dataset = NormalsDataset(
            store, size, config.augment, config.seed, photometric=config.photometric
        )
    else:
        if state is not None:
            s = state["info"]["split"]
            split = Split(tuple(s["train_shards"]), tuple(s["val_shards"]))
        else:
            split = split_shards(store, config.val_fraction)
        train_idx = split.indices(store, "train")
        dataset = SyntheticDataset(
            store, size, config.augment, config.seed, train_idx, photometric=config.photometric
        )
    global_batch = config.batch_size * dist.world
    steps_per_epoch = n_norm / global_batch  # 1 epoch = one sample per normal photograph
    if stage == 1 and config.stage1_steps is not None:
        total = config.stage1_steps
    elif config.steps is not None:
        total = config.steps
    else:
        total = steps_for(config.epochs * n_norm, global_batch)
    warmup = duration_steps(config.warmup, steps_per_epoch=steps_per_epoch, total_steps=total)
    if warmup >= total:
        log.message(
            f"note: stage {stage}: the warm-up ({warmup} steps, --warmup {config.warmup}) is not "
            f"shorter than the stage ({total} steps): the learning rate never reaches --lr"
        )

    # --- model and optimiser ---------------------------------------------------------------
    model = _build_model(stage, network, config, run, config.seed).to(device)
    # Channels-last on every device: on the CPU too, oneDNN's convolutions run 1.5x (stage 1)
    # to 1.6x (stage 2) faster in it at 256 px (ours, measured with a 2-core CPU).
    model = model.to(memory_format=torch.channels_last)
    params = model.parameters() if stage == 1 else model.trainable_parameters()
    optimizer = make_optimizer(params, config, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    start = 0
    if state is not None:
        record = ckpt.load_state(run, stage, model=model, optimizer=optimizer, scaler=scaler)
        start = int(record["step"])
        saved_total = record["info"].get("total_steps")
        if saved_total != total:
            raise ConfigError(
                f"--resume: stage {stage} was planned for {saved_total} steps, now {total} "
                "(a different batch size, number of processes or length); resume it as it was"
            )
        log.trim(stage, start)
    elif stage == 2 and dist.main:
        # Record the split in config.json (and later in every state) so a resume reuses it.
        record_cfg = dict(plan.record)
        record_cfg["data"] = dict(record_cfg["data"], split=_split_json(split, store))
        ckpt.write_json(run / ckpt.CONFIG_FILE, record_cfg)
    if stage == 2 and network.needs_stage1 and dist.main:
        dst = ckpt.stage_weights_path(run, 1)
        src = _stage1_weights(config, run)
        if src.resolve() != dst.resolve():  # --stage1-from: keep the run self-contained
            ckpt.atomic_write_bytes(dst, src.read_bytes())
    frozen = _frozen_fingerprint(model) if stage == 2 else None

    train_model: torch.nn.Module = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        train_model = torch.compile(train_model)

    # --- validation data (stage 2) ---------------------------------------------------------
    val_loader = None
    if stage == 2 and split is not None and split.val_shards:
        val_idx = spread(split.indices(store, "val"), config.val_samples)
        val_set = SyntheticDataset(store, size, NO_AUGMENT, config.seed, val_idx, with_fov=True)
        mine = list(range(dist.rank, len(val_set), dist.world))
        val_loader = _loader(val_set, config, device, batch_size=config.batch_size, sampler=mine)

    info = {  # the schedule is a function of the step alone: these numbers are its state
        "total_steps": total,
        "warmup_steps": warmup,
        "lr": config.lr,
        "min_lr": config.min_lr,
        "global_batch": global_batch,
        "world_size": dist.world,
        "steps_per_epoch": steps_per_epoch,
        "train_items": len(dataset),
    }
    if split is not None:
        info["split"] = _split_json(split, store)
    event = {"stage": stage, "step": start, "event": "resume" if start else "start"}
    log.record({**event, **{k: v for k, v in info.items() if k != "split"}})
    log.message(
        f"stage {stage}: {total} steps of {global_batch} at {size}x{size} "
        f"({total * global_batch / n_norm:.1f} epochs of {n_norm} samples; "
        f"{len(dataset)} training {'photographs' if stage == 1 else 'samples'}"
        + (f", {len(val_loader.dataset)} for validation" if val_loader else "")
        + f"), warm-up {warmup} steps, device {device}"
        + (f" x{dist.world}" if dist.world > 1 else "")
        + (f", resuming at step {start}" if start else "")
    )

    # --- the loop --------------------------------------------------------------------------
    sampler = StreamBatchSampler(
        len(dataset),
        config.batch_size,
        seed=config.seed,
        stage=stage,
        start_step=start,
        stop_step=total,
        world_size=dist.world,
        rank=dist.rank,
    )
    loader = _loader(dataset, config, device, batch_sampler=sampler)
    train_model.train()
    last_loss: float | None = None
    validation: dict[str, Any] | None = None
    window_loss = torch.zeros((), device=device)
    window_steps, window_t0 = 0, time.monotonic()
    log.start_bar(stage, total, start)
    step = start
    batches = iter(loader)
    with _StopRequest(enabled=dist.world == 1) as stop:
        try:
            while step < total:
                try:
                    batch = next(batches)
                except Exception as err:
                    if stop.requested:  # Ctrl-C also reached the workers
                        break
                    if config.workers and "exited unexpectedly" in str(err):
                        raise AnomalygenError(
                            f"--workers {config.workers}: a DataLoader worker died ({err}); "
                            "workers start from a fork server, so a script that calls train() "
                            "needs `if __name__ == '__main__':`; or pass --workers 0"
                        ) from None
                    raise
                lr = learning_rate(
                    step, lr=config.lr, min_lr=config.min_lr, warmup=warmup, total=total
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, masks = _to_device(batch, device)
                loss, grad_norm = train_step(
                    train_model,
                    optimizer,
                    images,
                    masks,
                    stage=stage,
                    autocast_dtype=amp_dtype,
                    scaler=scaler,
                    grad_clip=config.grad_clip,
                )
                step += 1
                window_loss += loss
                window_steps += 1

                if step % config.log_interval == 0 or step == total:
                    mean_loss = float(dist.mean(window_loss / window_steps))
                    elapsed = time.monotonic() - window_t0
                    rate = window_steps * global_batch / elapsed if elapsed > 0 else 0.0
                    last_loss = mean_loss
                    log.record(
                        {
                            "stage": stage,
                            "step": step,
                            "epoch": step / steps_per_epoch,
                            "loss": mean_loss,
                            "lr": lr,
                            "grad_norm": float(grad_norm),
                            "samples_per_s": rate,
                        }
                    )
                    log.update_bar(step, mean_loss, rate)
                    window_loss.zero_()
                    window_steps, window_t0 = 0, time.monotonic()

                if val_loader is not None and (
                    step == total or (config.val_interval and step % config.val_interval == 0)
                ):
                    try:
                        validation = _validate(model, val_loader, device, amp_dtype, dist)
                    except Exception:
                        if not stop.requested:
                            raise
                        validation = None  # Ctrl-C also reached the validation workers
                    if validation is not None:
                        log.record({"stage": stage, "step": step, **validation})
                        log.message(_describe_validation(stage, step, validation))
                    train_model.train()

                if on_step is not None and on_step(
                    StepInfo(stage, step, total, float(loss), model)
                ):
                    stop.requested = True
                if stop.requested and step < total:
                    break
                if step == total or (config.ckpt_interval and step % config.ckpt_interval == 0):
                    if dist.main:
                        ckpt.save_state(
                            run,
                            stage,
                            model=model,
                            optimizer=optimizer,
                            step=step,
                            info=info,
                            scaler=scaler,
                        )
                    dist.barrier()
        finally:
            log.stop_bar()
            del batches

    if step < total:
        if dist.main and step > start:  # stopped between steps: the state is consistent
            ckpt.save_state(
                run, stage, model=model, optimizer=optimizer, step=step, info=info, scaler=scaler
            )
        raise TrainingInterrupted(
            f"interrupted: stage {stage} saved at step {step} of {total} in {run}; run the same "
            "command with --resume to continue"
        )
    if frozen is not None and _frozen_fingerprint(model) != frozen:
        raise RuntimeError("stage 2 changed the frozen reconstruction network (a bug)")
    weights = ckpt.stage_weights_path(run, stage)
    if dist.main:
        # The detector's own threshold: the one that maximised the balanced accuracy on the
        # final validation (evaluate and predict use it unless told otherwise).
        threshold = (validation or {}).get("val_best_threshold") if stage == 2 else None
        ckpt.save_weights(
            weights, model.state_dict(), stage=stage, network=network, threshold=threshold
        )
        log.record({"stage": stage, "step": step, "event": "end", "weights": weights.name})
    dist.barrier()
    seconds = time.monotonic() - t0
    done = step - start
    return StageResult(
        stage=stage,
        total_steps=total,
        start_step=start,
        seconds=seconds,
        samples_per_second=done * global_batch / seconds if seconds > 0 else 0.0,
        final_loss=last_loss,
        validation=validation,
        weights=str(weights),
    )


def _split_json(split: Split, store: Any) -> dict[str, Any]:
    return {
        "train_shards": list(split.train_shards),
        "val_shards": list(split.val_shards),
        "train_samples": int(sum(len(store.shard_range(s)) for s in split.train_shards)),
        "val_samples": int(sum(len(store.shard_range(s)) for s in split.val_shards)),
    }


def _frozen_fingerprint(model: torch.nn.Module) -> list[bytes]:
    """The frozen reconstruction network's exact bytes (stage 2 must leave them unchanged)."""
    rec = model.rec_net  # type: ignore[attr-defined]
    return [t.detach().cpu().contiguous().numpy().tobytes() for t in rec.state_dict().values()]


@torch.no_grad()
def _validate(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    dist: _Dist,
) -> dict[str, Any]:
    """Pixel AUROC / AUPR (and the focal loss) on the held-out shards, inside each sample's
    field of view, with :class:`~resynth_models.metrics.PixelMetrics`."""
    model.eval()
    metrics = PixelMetrics()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    for batch in loader:
        images, masks = _to_device(batch, device)
        autocast = (
            torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        )
        with autocast:
            logits = model(images)
        loss_sum += focal_loss(logits, masks, tau=FOCAL_TAU).double() * len(images)
        count += len(images)
        probs = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        metrics.update(probs, batch["mask"].numpy(), valid=batch["fov"].numpy())
    if dist.world > 1:
        counts = torch.from_numpy(metrics.counts).to(device)
        thresholds = torch.from_numpy(metrics.threshold_counts).to(device)
        for t in (counts, thresholds, loss_sum, count):
            torch.distributed.all_reduce(t)
        metrics.counts = counts.cpu().numpy()
        metrics.threshold_counts = thresholds.cpu().numpy()
    out: dict[str, Any] = {"val_loss": float(loss_sum / count.clamp(min=1))}
    try:
        m = metrics.compute()
    except ValueError as err:  # no lesion pixels (or no normal ones) among the held-out samples
        out["val_note"] = str(err)
        return out
    out.update(
        val_auroc=m["auroc"],
        val_aupr=m["aupr"],
        val_balanced_accuracy=m["balanced_accuracy"],
        val_best_threshold=m["best_threshold"],
        val_best_balanced_accuracy=m["best_balanced_accuracy"],
        val_pixels=m["n_pixels"],
        val_lesion_pixels=m["n_lesion_pixels"],
    )
    return out


def _describe_validation(stage: int, step: int, v: dict[str, Any]) -> str:
    if "val_auroc" in v:
        return (
            f"stage {stage} step {step}: validation loss {v['val_loss']:.4g}, pixel AUROC "
            f"{v['val_auroc']:.4f}, AUPR {v['val_aupr']:.4f}"
        )
    return f"stage {stage} step {step}: validation loss {v['val_loss']:.4g} ({v['val_note']})"


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities (a diverged loss) become null: metrics.jsonl stays strict JSON."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }
