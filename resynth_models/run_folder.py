"""The run folder of a training run: what this invocation does to it, decided before anything
is written, and ``config.json``, written once.

:func:`plan_run` checks the folder against the invocation (read-only): a new run, the same
configuration continued (``--resume``), or refused; which stages to train, which to skip,
where each resumes (the stages' saved state records), stage 2's data split, and where stage 2
takes the trained E_r/D_r from (:attr:`RunPlan.stage1`, the one place that path is resolved).
:func:`write_run` then clears an overwritten run and writes ``config.json``; the split is in it
from the start, so nothing rewrites it. The files themselves (weights, states, JSON) are
:mod:`resynth_models.checkpoint`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from anomalygen.config import from_dict, to_dict
from anomalygen.errors import ConfigError
from resynth_models import checkpoint as ckpt
from resynth_models.data import Split, n_normals, split_shards
from resynth_models.networks import NetworkConfig
from resynth_models.train_config import (
    OPERATIONAL_FIELDS,
    TrainConfig,
    make_configs,
    replace_configs,
)

__all__ = ["RunPlan", "plan_run", "resume_configs", "split_record", "write_run"]

#: What a run folder holds of its own: all that ``--overwrite`` deletes.
RUN_ENTRIES = (ckpt.CONFIG_FILE, ckpt.METRICS_FILE, ckpt.STATE_DIR, "tb",
               "stage1.safetensors", "stage2.safetensors")  # fmt: skip


@dataclass
class RunPlan:
    """What one invocation does to its run folder (:func:`plan_run`)."""

    stages: list[int]  # to run, in order
    skip: dict[int, str]  # stage -> why it is skipped
    states: dict[int, dict[str, Any]]  # stage -> its saved state record (resume from there)
    notes: list[str]
    record: dict[str, Any]  # config.json to write
    split: Split | None = None  # stage 2's training and validation shards (stage 2 to run)
    stage1: Path | None = None  # stage 2's trained E_r/D_r (stage 2 to run, needs stage 1)
    fresh: bool = field(default=True, repr=False)  # no run of this configuration there yet

    def resume_step(self, stage: int) -> int | None:
        """The saved step that ``stage`` resumes from, or None (it starts at step 0)."""
        state = self.states.get(stage)
        return int(state["step"]) if state is not None else None


def resume_configs(
    run: str | os.PathLike, network: dict[str, Any] | None = None, **train: Any
) -> tuple[TrainConfig, NetworkConfig]:
    """The configs the run in ``run`` was started with (its config.json), with the given fields
    replaced as :func:`~resynth_models.train_config.make_configs` replaces a preset's: what
    ``--resume`` without ``--preset`` trains with, so that only the options given again are
    compared with the run's. A folder without a run gives the default preset's (there is
    nothing to resume)."""
    path = Path(run) / ckpt.CONFIG_FILE
    if not path.is_file():
        return make_configs("default", network, **train)
    saved = ckpt.read_run_config(run)
    try:
        base = from_dict(TrainConfig, saved.get("train", {}))
    except ConfigError as err:
        raise ckpt.CheckpointError(f"{path}: no usable training config ({err})") from None
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return replace_configs(fields, train, ckpt.network_config(saved, str(path)), network)


def store_identity(store: Any) -> dict[str, Any]:
    """What makes a store the same store wherever it lives."""
    a = store.attrs
    return {k: a.get(k) for k in ("n", "size", "seed", "shard_size", "created")}


def run_record(store: Any, config: TrainConfig, network: NetworkConfig, size: int) -> dict:
    """The ``config.json`` of a run of ``config`` and ``network`` on ``store`` at ``size``."""
    import anomalygen
    from resynth_models import __version__

    return {
        "format": ckpt.RUN_FORMAT,
        "format_version": ckpt.RUN_FORMAT_VERSION,
        "network": to_dict(network),
        "train": to_dict(config),
        "data": {
            "store": store.url,
            "store_id": store_identity(store),
            "store_size": int(store.size),
            "size": int(size),
            "clahe": bool(store.attrs.get("clahe", True)),
            "normals": n_normals(store),
        },
        "versions": {
            "resynth_models": __version__,
            "anomalygen": anomalygen.__version__,
            "anomalygen_store": store.attrs.get("anomalygen_version"),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def split_record(split: Split, store: Any) -> dict[str, Any]:
    """A split as ``config.json`` and the stage-2 states keep it."""
    return {
        "train_shards": list(split.train_shards),
        "val_shards": list(split.val_shards),
        "train_samples": int(sum(len(store.shard_range(s)) for s in split.train_shards)),
        "val_samples": int(sum(len(store.shard_range(s)) for s in split.val_shards)),
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between a run folder's config.json and this invocation's, as
    ``"lr 0.001 -> 0.005"``; the operational fields (:data:`OPERATIONAL_FIELDS`) may."""
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


def plan_run(
    run: Path,
    store: Any,
    config: TrainConfig,
    network: NetworkConfig,
    size: int,
    *,
    resume: bool,
    overwrite: bool,
) -> RunPlan:
    """Check the run folder against this invocation (read-only) and decide what to run."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one")
    plan = RunPlan([], {}, {}, [], run_record(store, config, network, size))
    _check_folder(run, plan, overwrite)
    if resume and plan.fresh:
        plan.notes.append(f"--resume: nothing to resume in {run}; starting a new run")
    _choose_stages(run, plan, config, network, resume)
    if 2 in plan.stages:
        if network.needs_stage1:
            plan.stage1 = _stage1_source(run, plan, config, network)
        state = plan.states.get(2)
        if state is not None:  # a resumed stage 2 keeps the split it started with
            s = state["info"]["split"]
            plan.split = Split(tuple(s["train_shards"]), tuple(s["val_shards"]))
        else:
            plan.split = split_shards(store, config.val_fraction)
        plan.record["data"]["split"] = split_record(plan.split, store)
    return plan


def _check_folder(run: Path, plan: RunPlan, overwrite: bool) -> None:
    """Refuse a folder that is not a run, or a run of another configuration (unless
    ``overwrite``); a run of this configuration keeps its creation time and split."""
    if run.exists() and not run.is_dir():
        raise ConfigError(f"--out {run}: a file is in the way (a run is a folder)")
    if not (run.is_dir() and any(run.iterdir())):
        return
    if not (run / ckpt.CONFIG_FILE).exists():
        raise ConfigError(
            f"--out {run}: the folder exists and is not a resynth run folder "
            "(no config.json); choose another --out"
        )
    old = ckpt.read_run_config(run)
    if overwrite:
        return
    diffs = differences(old, plan.record)
    if diffs:
        more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise ConfigError(
            f"--out {run}: holds a run with a different configuration "
            f"({'; '.join(diffs[:4])}{more}); use another --out, or --overwrite to "
            "replace it"
        )
    plan.record["created"] = old.get("created", plan.record["created"])
    if "split" in old.get("data", {}):
        plan.record["data"]["split"] = old["data"]["split"]
    plan.fresh = False


def _choose_stages(
    run: Path, plan: RunPlan, config: TrainConfig, network: NetworkConfig, resume: bool
) -> None:
    """The stages to run (resumed where they have a saved state) and those to skip."""
    wanted = [1, 2] if config.stage == "all" else [int(config.stage)]
    if config.stage == "all" and not network.needs_stage1:
        wanted = [2]
        plan.notes.append(
            f"rec_features {network.rec_features!r} does not use a trained E_r: skipping stage 1"
        )
    for stage in wanted:
        done = (not plan.fresh) and ckpt.stage_weights_path(run, stage).exists()
        state = None if plan.fresh else ckpt.read_state_info(run, stage)
        if not resume and (done or state is not None):
            what = "is complete" if done else f"has a saved state at step {state['step']}"
            raise ConfigError(
                f"--out {run}: stage {stage} {what}; use --resume to continue it or "
                "--overwrite to start again"
            )
        if done and (state is None or state["step"] >= state["info"].get("total_steps", 0)):
            plan.skip[stage] = "already complete"
            continue
        if state is not None:
            plan.states[stage] = state
        plan.stages.append(stage)


def _stage1_source(run: Path, plan: RunPlan, config: TrainConfig, network: NetworkConfig) -> Path:
    """Where stage 2 takes the trained E_r/D_r from: this run's stage 1, or ``--stage1-from``
    (a run folder or a weights file)."""
    if config.stage1_from is not None:
        src = Path(config.stage1_from)
        return ckpt.stage_weights_path(src, 1) if src.is_dir() else src
    own = ckpt.stage_weights_path(run, 1)
    if 1 not in plan.stages and (plan.fresh or not own.exists()):
        raise ConfigError(
            f"--stage 2: {own} not found: rec_features "
            f"{network.rec_features!r} needs the stage-1 reconstruction network; train it "
            "first (--stage 1, or --stage all), or name one with --stage1-from"
        )
    return own


def write_run(run: Path, plan: RunPlan, overwrite: bool) -> None:
    """Rank 0: clear an overwritten run (only a run folder's own entries) and write
    config.json (once: it holds the split already)."""
    if overwrite and (run / ckpt.CONFIG_FILE).exists():
        for name in RUN_ENTRIES:
            path = run / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    run.mkdir(parents=True, exist_ok=True)
    ckpt.write_json(run / ckpt.CONFIG_FILE, plan.record)
