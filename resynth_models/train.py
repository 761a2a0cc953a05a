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

Read this file top to bottom: :func:`train` opens the store, plans the run folder
(:mod:`~resynth_models.run_folder`) and starts the processes (:mod:`~resynth_models.runtime`);
then per stage :func:`_train_stage` builds the data, the model
(:func:`~resynth_models.networks.build_model`) and the optimiser, restores a saved state when
resuming, and loops: learning rate of the step (:mod:`~resynth_models.schedule`) ->
:func:`~resynth_models.step.train_step` -> log (:mod:`~resynth_models.run_log`) -> validate
(:mod:`~resynth_models.validation`) -> checkpoint (:mod:`~resynth_models.checkpoint`); the
configuration is :mod:`~resynth_models.train_config`'s.

Schedule (paper 4.1): AdamW, initial learning rate 5e-5, linear warm-up over 50 epochs, cosine
decay to 2.5e-5 (:func:`learning_rate`). An *epoch* is as many samples as the store has normal
photographs, in both stages: the paper generated one synthetic image per normal training image
per epoch, so with a pre-rendered store this keeps its 50-epoch warm-up and any ``--epochs``
meaning the same amount of training as in the paper. Stage 2 cycles through the store's
training shards as often as that needs (each pass in a new order, with new augmentations).

Losses over the whole image, AdamW with decay on convolution weights only: see
:mod:`~resynth_models.step`; validation counts pixels inside the FOV only, as the evaluation does.

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

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from anomalygen.errors import ConfigError, StoreError
from resynth_models import checkpoint as ckpt
from resynth_models.data import StreamBatchSampler, n_normals, steps_for
from resynth_models.devices import resolve_device
from resynth_models.networks import PRESETS, NetworkConfig, build_model, check_input_size
from resynth_models.run_folder import RunPlan, plan_run, resume_configs, write_run
from resynth_models.run_log import RunLog
from resynth_models.runtime import (
    Dist,
    StopRequest,
    amp_dtype,
    make_loader,
    next_batch,
    to_device,
)
from resynth_models.schedule import duration_steps, learning_rate, parse_duration
from resynth_models.stage_data import train_dataset, val_loader
from resynth_models.step import make_optimizer, train_step
from resynth_models.train_config import (
    TRAIN_PRESETS,
    TrainConfig,
    make_configs,
    resource_notes,
    training_size,
)
from resynth_models.train_results import (
    StageResult,
    StepInfo,
    TrainingInterrupted,
    TrainResult,
)
from resynth_models.validation import describe_validation, validate

__all__ = [
    "TRAIN_PRESETS",
    "StageResult",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "duration_steps",
    "learning_rate",
    "make_configs",
    "make_optimizer",
    "parse_duration",
    "resource_notes",
    "resume_configs",
    "train",
    "train_step",
    "training_size",
]


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
    autocast_dtype = amp_dtype(config.amp, device)
    try:
        store = anomalygen.open_store(data, storage_options)
    except StoreError as err:
        raise StoreError(f"--data: {err}") from None
    n_norm = n_normals(store)
    size = training_size(config, int(store.size))
    check_input_size(size, size, max(network.rec_depth, network.loc_depth))
    plan = plan_run(run, store, config, network, size, resume=resume, overwrite=overwrite)
    plan.notes.extend(resource_notes(config, network, device))

    dist = Dist.from_env(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    log = None
    try:
        if dist.main:
            write_run(run, plan, overwrite)
        dist.barrier()
        log = RunLog(run, enabled=dist.main, progress=progress)
        for note in plan.notes:
            log.message(f"note: {note}")
        ctx = _Run(run, store, config, network, size, n_norm, device, autocast_dtype, dist, log,
                   plan, on_step)  # fmt: skip
        results = [
            StageResult(s, 0, 0, 0.0, 0.0, None, None, str(ckpt.stage_weights_path(run, s)), why)
            for s, why in plan.skip.items()
        ]
        with warnings.catch_warnings():
            # resource_notes said it once; torch's DataLoader would repeat it for every loader
            warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
            results += [_train_stage(ctx, stage) for stage in plan.stages]
        results.sort(key=lambda r: r.stage)
        return TrainResult(str(run), results, plan.notes, dist.rank)
    finally:
        if log is not None:
            log.close()
        dist.close()


@dataclass(frozen=True)
class _Run:
    """What every stage of one invocation shares."""

    run: Path
    store: Any
    config: TrainConfig
    network: NetworkConfig
    size: int  # the training side
    n_norm: int  # normal photographs in the store: 1 epoch is as many samples
    device: torch.device
    amp_dtype: torch.dtype | None
    dist: Dist
    log: RunLog
    plan: RunPlan
    on_step: Callable[[StepInfo], bool | None] | None


@dataclass
class _Stage:
    """One stage's schedule, model, optimiser, data and progress."""

    stage: int
    dataset: Any
    total: int  # optimiser steps of the stage
    warmup: int
    global_batch: int  # samples per step, all processes together
    steps_per_epoch: float
    model: torch.nn.Module = None  # type: ignore[assignment]
    train_model: torch.nn.Module = None  # type: ignore[assignment]  # DDP / compiled wrapper
    optimizer: torch.optim.Optimizer = None  # type: ignore[assignment]
    scaler: Any = None  # a GradScaler for fp16
    val_loader: DataLoader | None = None
    info: dict[str, Any] = field(default_factory=dict)  # saved with every state
    start: int = 0  # the step it resumed from
    step: int = 0  # steps completed
    last_loss: float | None = None  # mean over the last log interval
    validation: dict[str, Any] | None = None  # the last one


def _train_stage(ctx: _Run, stage: int) -> StageResult:
    """Train one stage from its start (or saved state) to its last step; save its weights."""
    t0 = time.monotonic()
    st = _plan_stage(ctx, stage)
    _build(ctx, st)
    frozen = _frozen_fingerprint(st.model) if stage == 2 else None
    st.train_model = st.model
    if ctx.dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        st.train_model = DistributedDataParallel(st.model, device_ids=ids)
    if ctx.config.compile:
        st.train_model = torch.compile(st.train_model)
    if stage == 2:
        st.val_loader = val_loader(ctx.store, ctx.size, ctx.config, ctx.plan.split, ctx.dist,
                                   ctx.device)  # fmt: skip
    _announce(ctx, st)
    _loop(ctx, st)
    if st.step < st.total:
        if ctx.dist.main and st.step > st.start:  # stopped between steps: the state is consistent
            _save_state(ctx, st)
        raise TrainingInterrupted(
            f"interrupted: stage {stage} saved at step {st.step} of {st.total} in {ctx.run}; run "
            "the same command with --resume to continue"
        )
    if frozen is not None and _frozen_fingerprint(st.model) != frozen:
        raise RuntimeError("stage 2 changed the frozen reconstruction network (a bug)")
    weights = ckpt.stage_weights_path(ctx.run, stage)
    if ctx.dist.main:
        # The detector's own threshold, chosen on the final validation (--threshold-fpr);
        # evaluate and predict use it unless told otherwise.
        threshold = (st.validation or {}).get("val_threshold") if stage == 2 else None
        ckpt.save_weights(weights, st.model.state_dict(), stage=stage, network=ctx.network,
                          threshold=threshold)  # fmt: skip
        ctx.log.record({"stage": stage, "step": st.step, "event": "end", "weights": weights.name})
    ctx.dist.barrier()
    seconds = time.monotonic() - t0
    done = (st.step - st.start) * st.global_batch
    rate = done / seconds if seconds > 0 else 0.0
    return StageResult(stage, st.total, st.start, seconds, rate, st.last_loss, st.validation,
                       str(weights))  # fmt: skip


def _plan_stage(ctx: _Run, stage: int) -> _Stage:
    """The stage's training data and schedule: 1 epoch = one sample per normal photograph."""
    config = ctx.config
    dataset = train_dataset(ctx.store, ctx.size, config, stage, ctx.plan.split)
    global_batch = config.batch_size * ctx.dist.world
    steps_per_epoch = ctx.n_norm / global_batch
    if stage == 1 and config.stage1_steps is not None:
        total = config.stage1_steps
    elif config.steps is not None:
        total = config.steps
    else:
        total = steps_for(config.epochs * ctx.n_norm, global_batch)
    warmup = duration_steps(config.warmup, steps_per_epoch=steps_per_epoch, total_steps=total)
    if warmup >= total:
        ctx.log.message(
            f"note: stage {stage}: the warm-up ({warmup} steps, --warmup {config.warmup}) is not "
            f"shorter than the stage ({total} steps): the learning rate never reaches --lr"
        )
    return _Stage(stage, dataset, total, warmup, global_batch, steps_per_epoch)


def _build(ctx: _Run, st: _Stage) -> None:
    """The model (stage 2: with the trained E_r/D_r), its optimiser and GradScaler, restored
    from the saved state when resuming."""
    config, network, stage = ctx.config, ctx.network, st.stage
    torch.manual_seed(_stage_seed(config.seed, stage))
    model = build_model(network, stage)  # "random": E_r keeps this seeded random init, frozen
    if stage == 2 and network.needs_stage1:
        path = ctx.plan.stage1
        if not path.exists():
            raise ckpt.CheckpointError(
                f"{path}: stage-1 weights not found (rec_features {network.rec_features!r} "
                "needs them)"
            )
        tensors, _ = ckpt.load_weights(path)
        ckpt.load_module_weights(model.rec_net, tensors, str(path))
    # Channels-last on every device: on the CPU too, oneDNN's convolutions run 1.5x (stage 1)
    # to 1.6x (stage 2) faster in it at 256 px (ours, measured with a 2-core CPU).
    st.model = model.to(ctx.device).to(memory_format=torch.channels_last)
    params = st.model.parameters() if stage == 1 else st.model.trainable_parameters()
    st.optimizer = make_optimizer(params, config, ctx.device)
    st.scaler = torch.amp.GradScaler("cuda") if ctx.amp_dtype == torch.float16 else None
    if stage in ctx.plan.states:
        record = ckpt.load_state(
            ctx.run, stage, model=st.model, optimizer=st.optimizer, scaler=st.scaler
        )
        st.start = st.step = int(record["step"])
        saved_total = record["info"].get("total_steps")
        if saved_total != st.total:
            raise ConfigError(
                f"--resume: stage {stage} was planned for {saved_total} steps, now {st.total} "
                "(a different batch size, number of processes or length); resume it as it was"
            )
        ctx.log.trim(stage, st.start)
    if stage == 2 and network.needs_stage1 and ctx.dist.main:
        own = ckpt.stage_weights_path(ctx.run, 1)
        if ctx.plan.stage1.resolve() != own.resolve():  # --stage1-from: keep the run whole
            ckpt.atomic_write_bytes(own, ctx.plan.stage1.read_bytes())


def _stage_seed(seed: int, stage: int) -> int:
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0])


def _frozen_fingerprint(model: torch.nn.Module) -> list[bytes]:
    """The frozen reconstruction network's exact bytes (stage 2 must leave them unchanged)."""
    rec = model.rec_net  # type: ignore[attr-defined]
    return [t.detach().cpu().contiguous().numpy().tobytes() for t in rec.state_dict().values()]


def _announce(ctx: _Run, st: _Stage) -> None:
    """The stage's schedule, in the state (``st.info``), the log and the progress display."""
    n_norm, stage = ctx.n_norm, st.stage
    st.info = {  # the schedule is a function of the step alone: these numbers are its state
        "total_steps": st.total,
        "warmup_steps": st.warmup,
        "lr": ctx.config.lr,
        "min_lr": ctx.config.min_lr,
        "global_batch": st.global_batch,
        "world_size": ctx.dist.world,
        "steps_per_epoch": st.steps_per_epoch,
        "train_items": len(st.dataset),
    }
    if stage == 2:
        st.info["split"] = ctx.plan.record["data"]["split"]
    event = {"stage": stage, "step": st.start, "event": "resume" if st.start else "start"}
    ctx.log.record({**event, **{k: v for k, v in st.info.items() if k != "split"}})
    ctx.log.message(
        f"stage {stage}: {st.total} steps of {st.global_batch} at {ctx.size}x{ctx.size} "
        f"({st.total * st.global_batch / n_norm:.1f} epochs of {n_norm} samples; "
        f"{len(st.dataset)} training {'photographs' if stage == 1 else 'samples'}"
        + (f", {len(st.val_loader.dataset)} for validation" if st.val_loader else "")
        + f"), warm-up {st.warmup} steps, device {ctx.device}"
        + (f" x{ctx.dist.world}" if ctx.dist.world > 1 else "")
        + (f", resuming at step {st.start}" if st.start else "")
    )


def _loop(ctx: _Run, st: _Stage) -> None:
    """Steps until the last (or a stop request): learning rate -> train_step -> log ->
    validate -> checkpoint."""
    config, dist = ctx.config, ctx.dist
    sampler = StreamBatchSampler(len(st.dataset), config.batch_size, seed=config.seed,
                                 stage=st.stage, start_step=st.start, stop_step=st.total,
                                 world_size=dist.world, rank=dist.rank)  # fmt: skip
    loader = make_loader(st.dataset, config.workers, ctx.device, batch_sampler=sampler)
    st.train_model.train()
    window = _Window(torch.zeros((), device=ctx.device))
    ctx.log.start_bar(st.stage, st.total, st.start)
    batches = iter(loader)
    with StopRequest(enabled=dist.world == 1) as stop:
        try:
            while st.step < st.total:
                batch = next_batch(batches, stop, config.workers)
                if batch is None:  # Ctrl-C also reached the workers
                    break
                lr = learning_rate(
                    st.step, lr=config.lr, min_lr=config.min_lr, warmup=st.warmup, total=st.total
                )
                for group in st.optimizer.param_groups:
                    group["lr"] = lr
                images, masks = to_device(batch, ctx.device)
                loss, grad_norm = train_step(
                    st.train_model,
                    st.optimizer,
                    images,
                    masks,
                    stage=st.stage,
                    autocast_dtype=ctx.amp_dtype,
                    scaler=st.scaler,
                    config=config,
                )
                st.step += 1
                window.add(loss)
                if _every(st, config.log_interval):
                    _log_window(ctx, st, window, lr, float(grad_norm))
                if st.val_loader is not None and _every(st, config.val_interval):
                    _validate(ctx, st, stop)
                if ctx.on_step is not None and ctx.on_step(
                    StepInfo(st.stage, st.step, st.total, float(loss), st.model)
                ):
                    stop.requested = True
                if stop.requested and st.step < st.total:
                    break
                if _every(st, config.ckpt_interval):
                    if dist.main:
                        _save_state(ctx, st)
                    dist.barrier()
        finally:
            ctx.log.stop_bar()
            del batches


def _every(st: _Stage, interval: int) -> bool:
    """Whether this step is one of every ``interval`` (0: only the last) or the last."""
    return st.step == st.total or (interval > 0 and st.step % interval == 0)


@dataclass
class _Window:
    """The losses of the steps since the last log record (summed on the device: no sync)."""

    loss: torch.Tensor
    steps: int = 0
    t0: float = field(default_factory=time.monotonic)

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.steps += 1


def _log_window(ctx: _Run, st: _Stage, window: _Window, lr: float, grad_norm: float) -> None:
    mean_loss = float(ctx.dist.mean(window.loss / window.steps))
    elapsed = time.monotonic() - window.t0
    rate = window.steps * st.global_batch / elapsed if elapsed > 0 else 0.0
    st.last_loss = mean_loss
    ctx.log.record({"stage": st.stage, "step": st.step, "epoch": st.step / st.steps_per_epoch,
                    "loss": mean_loss, "lr": lr, "grad_norm": grad_norm,
                    "samples_per_s": rate})  # fmt: skip
    ctx.log.update_bar(st.step, mean_loss, rate)
    window.loss.zero_()
    window.steps, window.t0 = 0, time.monotonic()


def _validate(ctx: _Run, st: _Stage, stop: StopRequest) -> None:
    try:
        config = ctx.config
        st.validation = validate(st.model, st.val_loader, ctx.device, ctx.amp_dtype, ctx.dist,
                                 config.focal_tau, flip=config.test_flip,
                                 threshold_fpr=config.threshold_fpr)  # fmt: skip
    except Exception:
        if not stop.requested:
            raise
        st.validation = None  # Ctrl-C also reached the validation workers
    if st.validation is not None:
        ctx.log.record({"stage": st.stage, "step": st.step, **st.validation})
        ctx.log.message(describe_validation(st.stage, st.step, st.validation))
    st.train_model.train()


def _save_state(ctx: _Run, st: _Stage) -> None:
    ckpt.save_state(ctx.run, st.stage, model=st.model, optimizer=st.optimizer, step=st.step,
                    info=st.info, scaler=st.scaler)  # fmt: skip
