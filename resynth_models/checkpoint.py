"""Run folders and checkpoints: safetensors for tensors, JSON for everything else, no pickle.

A training run writes one folder (see ``docs/architecture.md``, "Run folders and checkpoints")::

    RUN/config.json              {"format": "resynth-run", "format_version": 1, "network", "train",
                                  "data", "versions", "created"}
    RUN/stage1.safetensors       final ReconstructionNet weights (E_r, D_r)
    RUN/stage2.safetensors       final ReSynthDetect weights (rec_net + loc_net)
    RUN/state/stage<N>.json      resumable state of stage N: step, optimiser param groups and
                                 scalars, GradScaler, numpy/python RNG states, loop bookkeeping,
                                 and the name of its tensors file:
    RUN/state/stage<N>-<step>.safetensors   model weights, optimiser tensors, torch RNG states
    RUN/metrics.jsonl            one JSON object per logged step / validation
    RUN/tb/                      TensorBoard events (when tensorboard is installed)

Nothing is ever pickled: tensors go through ``safetensors`` (a header of JSON plus raw bytes,
safe to load from an untrusted source) and all else through ``json``. Every file is written to a
temporary name and renamed over the old one (:func:`atomic_write_bytes`), so a crash mid-save
leaves the previous file intact. A training state is two files: its tensors file gets a new
name per step and the JSON record, written last, is the commit: until it is replaced the old
record still names the old tensors file, which is deleted only afterwards.

:func:`load_detector` is what evaluation and prediction use: a :class:`Detector` with the trained
model, its input size, whether inputs get CLAHE, and ``anomaly_map(x)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from anomalygen.config import from_dict
from anomalygen.errors import ConfigError, StoreError
from resynth_models.devices import resolve_device
from resynth_models.networks import (
    MAX_SIDE,
    NetworkConfig,
    build_model,
    reconstruction_error_map,
)

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "RUN_FORMAT",
    "RUN_FORMAT_VERSION",
    "SCORINGS",
    "CheckpointError",
    "Detector",
    "atomic_write_bytes",
    "load_detector",
    "load_state",
    "load_weights",
    "read_run_config",
    "read_state_info",
    "save_state",
    "save_weights",
    "stage_weights_path",
    "write_json",
]

RUN_FORMAT = "resynth-run"
RUN_FORMAT_VERSION = 1
READABLE_RUN_VERSIONS = (1,)
WEIGHTS_FORMAT = "resynth-weights"
STATE_FORMAT = "resynth-state"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATE_DIR = "state"
SCORINGS = ("localization", "reconstruction")
#: Smallest training side (px) a run config may hold (TrainConfig's own lower bound).
MIN_TRAIN_SIZE = 8


class CheckpointError(StoreError):
    """A run folder or checkpoint file is missing, incomplete, corrupt or of an unknown format
    version (a :class:`StoreError`: the CLIs print it as one line)."""


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync'ed, then
    renamed over ``path``: readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN refused: it is not JSON)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the {what} ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the {what} is not a JSON object")
    return data


def stage_weights_path(run_dir: str | os.PathLike, stage: int) -> Path:
    """``RUN/stage<stage>.safetensors``: the final weights of a stage."""
    return Path(run_dir) / f"stage{stage}.safetensors"


#: The metadata key of a tensors file's own digest: sha256 (hex) of its header (this key left
#: out, as canonical JSON) and its tensor data. Written into every weights and state file and
#: checked on every load, so that a damaged file is refused instead of loaded with changed
#: weights (64 flipped bytes turned 16 weights from about 0.02 into about 200). Files written
#: before it have none and load as before.
DIGEST_KEY = "sha256"


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (JSON) and where its tensor data start."""
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or size > len(data) - 8:
        raise ValueError("the header runs past the end of the file")
    header = json.loads(data[8 : 8 + size])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, 8 + size


def _content_digest(header: Mapping[str, Any], data: bytes, start: int) -> str:
    """sha256 of the header without its digest (canonical JSON) and the tensor data."""
    canonical = dict(header)
    canonical["__metadata__"] = {
        k: v for k, v in (header.get("__metadata__") or {}).items() if k != DIGEST_KEY
    }
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode())
    digest.update(b"\0")
    digest.update(memoryview(data)[start:])
    return digest.hexdigest()


def _tensors_to_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file of ``tensors`` whose metadata hold its own content digest."""
    # safetensors wants contiguous CPU tensors that share no memory.
    plain = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    first = st_save(plain, metadata=metadata)
    header, start = _header(first)
    # The metadata do not move the tensor data: the digest of the first serialisation is the
    # digest of the second, which holds it.
    data = st_save(plain, metadata={**metadata, DIGEST_KEY: _content_digest(header, first, start)})
    if _damage(data) is not None:  # pragma: no cover - safetensors changed its layout
        raise RuntimeError("a tensors file does not match the digest written into it")
    return data


def _damage(data: bytes) -> str | None:
    """None if a tensors file matches the digest recorded in it (or records none: an older
    file); else what is wrong."""
    header, start = _header(data)
    recorded = (header.get("__metadata__") or {}).get(DIGEST_KEY)
    if recorded is None or _content_digest(header, data, start) == recorded:
        return None
    return (
        f"damaged: its content does not match the sha256 written into it ({str(recorded)[:12]}...)"
    )


def _read_tensors(
    path: Path, what: str, sha256: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A tensors file's tensors and metadata, checked against the digest written into it and,
    with ``sha256``, against the file's sha256 recorded elsewhere (a state's JSON record)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the {what} ({err.strerror})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(
            f"{path}: the {what} is not the file its record names (its sha256 differs from "
            "the one recorded when it was written); resume from an earlier run or start again"
        )
    try:
        damage = _damage(data)
        if damage is None:
            tensors = st_load(data)
            metadata = _header(data)[0].get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({' '.join(str(err).split())})"
        ) from None
    if damage is not None:
        raise CheckpointError(
            f"{path}: the {what} is {damage}; restore it from a copy or train again"
        )
    return tensors, metadata


def save_weights(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    *,
    stage: int,
    network: NetworkConfig,
    threshold: float | None = None,
) -> None:
    """Atomically write a model's weights as safetensors, with the format, the stage, the
    network config (JSON) and, for a detector, its pixel ``threshold`` (chosen on the synthetic
    validation set) in the header's metadata."""
    from anomalygen.config import to_dict

    metadata = {
        "format": WEIGHTS_FORMAT,
        "format_version": str(RUN_FORMAT_VERSION),
        "stage": str(stage),
        "network": json.dumps(to_dict(network)),
    }
    if threshold is not None:
        metadata["threshold"] = repr(float(threshold))
    atomic_write_bytes(path, _tensors_to_bytes(state_dict, metadata))


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a weights file written by :func:`save_weights`."""
    path = Path(path)
    tensors, metadata = _read_tensors(path, "weights file")
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path}: not a resynth weights file (no format in its header)")
    if int(metadata.get("format_version", -1)) not in READABLE_RUN_VERSIONS:
        raise CheckpointError(
            f"{path}: weights format version {metadata.get('format_version')!r} is unknown "
            f"(this version reads {', '.join(map(str, READABLE_RUN_VERSIONS))})"
        )
    return tensors, metadata


def load_module_weights(
    module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], where: str
) -> None:
    """``module.load_state_dict(tensors, strict=True)``, a mismatch reported in one line."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
        detail = "; ".join(lines[:3]) + (" ..." if len(lines) > 3 else "")
        raise CheckpointError(
            f"{where}: the weights do not fit the network (different widths or depth?): "
            f"{detail or err}"
        ) from None


# ---------------------------------------------------------------------------------------------
# The run's config.json


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/config.json``, checked to be a run folder of a known format version."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"{run}: no run folder there")
    config = read_json(run / CONFIG_FILE, "run config (is this a `resynth train` run folder?)")
    if config.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{run / CONFIG_FILE}: not a resynth run config (no format field)")
    version = config.get("format_version")
    if version not in READABLE_RUN_VERSIONS:
        from resynth_models import __version__

        raise CheckpointError(
            f"{run}: run format version {version!r} is not known to resynth_models {__version__} "
            f"(it reads version {', '.join(map(str, READABLE_RUN_VERSIONS))})"
        )
    return config


def network_config(config: Mapping[str, Any], where: str = "run config") -> NetworkConfig:
    try:
        return from_dict(NetworkConfig, config["network"])
    except (KeyError, ConfigError) as err:
        raise CheckpointError(f"{where}: no usable network config ({err})") from None


# ---------------------------------------------------------------------------------------------
# Resumable training state


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    # The legacy global states: our code never uses them, third-party code might.
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    py = random.getstate()
    info = {
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [py[0], list(py[1]), py[2]],
    }
    return tensors, info


def _set_rng_state(tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, state, gauss = info["python"]
    random.setstate((version, tuple(state), gauss))


def _optimizer_parts(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, param_state in sd["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{pid}/{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state_dict(
    tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, values in info["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in info["param_groups"]]
    return {"state": state, "param_groups": groups}


def _state_paths(run_dir: str | os.PathLike, stage: int) -> tuple[Path, Path]:
    folder = Path(run_dir) / STATE_DIR
    return folder, folder / f"stage{stage}.json"


def save_state(
    run_dir: str | os.PathLike,
    stage: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    info: Mapping[str, Any],
    scaler: Any = None,
) -> Path:
    """Save everything needed to continue stage ``stage`` after optimiser step ``step``.

    ``info`` is the loop's own JSON-compatible bookkeeping (schedule, data split, ...). Returns
    the JSON record's path. Older tensors files of the stage are removed after the commit.
    """
    folder, record_path = _state_paths(run_dir, stage)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    optim_tensors, optim_info = _optimizer_parts(optimizer)
    rng_tensors, rng_info = _rng_state()
    tensors.update(optim_tensors)
    tensors.update(rng_tensors)
    name = f"stage{stage}-{step:09d}.safetensors"
    data = _tensors_to_bytes(tensors, {"format": STATE_FORMAT, "stage": str(stage)})
    atomic_write_bytes(folder / name, data)
    record = {
        "format": STATE_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "stage": stage,
        "step": int(step),
        "tensors": name,
        "tensors_sha256": hashlib.sha256(data).hexdigest(),  # checked by load_state
        "optimizer": optim_info,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_info,
        "info": dict(info),
    }
    write_json(record_path, record)  # the commit
    for old in folder.glob(f"stage{stage}-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return record_path


def read_state_info(run_dir: str | os.PathLike, stage: int) -> dict[str, Any] | None:
    """The JSON record of stage ``stage``'s saved state (no tensors loaded), or None."""
    _, record_path = _state_paths(run_dir, stage)
    if not record_path.exists():
        return None
    record = read_json(record_path, "training state")
    if record.get("format") != STATE_FORMAT or record.get("stage") != stage:
        raise CheckpointError(f"{record_path}: not a stage-{stage} training state")
    if record.get("format_version") not in READABLE_RUN_VERSIONS:
        raise CheckpointError(
            f"{record_path}: training state format version {record.get('format_version')!r} "
            "is unknown"
        )
    return record


def load_state(
    run_dir: str | os.PathLike,
    stage: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any = None,
) -> dict[str, Any]:
    """Restore model, optimiser, GradScaler and RNG states saved by :func:`save_state`; returns
    the JSON record (``record["step"]``, ``record["info"]``)."""
    record = read_state_info(run_dir, stage)
    folder, record_path = _state_paths(run_dir, stage)
    if record is None:
        raise CheckpointError(f"{record_path}: no saved stage-{stage} training state to resume")
    sha256 = record.get("tensors_sha256")  # absent in states written before it
    tensors, _ = _read_tensors(folder / record["tensors"], "training state tensors", sha256)
    model_sd = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    load_module_weights(model, model_sd, str(folder / record["tensors"]))
    try:
        optimizer.load_state_dict(_optimizer_state_dict(tensors, record["optimizer"]))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{record_path}: the optimiser state does not fit ({err})") from None
    if scaler is not None and record.get("scaler"):
        scaler.load_state_dict(record["scaler"])
    _set_rng_state(tensors, record["rng"])
    return record


# ---------------------------------------------------------------------------------------------
# The detector that evaluation and prediction use


@dataclass(eq=False)
class Detector:
    """A trained model ready to score images.

    - ``model``: a :class:`ReSynthDetect` (``scoring == "localization"``) or the stage-1
      :class:`ReconstructionNet` (``"reconstruction"``: Table 3's first row), in eval mode.
    - ``size``: the side the network was trained at; ``clahe``: whether the training store's
      photographs were CLAHE-enhanced (paper 4.1), so inputs should be prepared the same way.
    - ``threshold``: the pixel threshold chosen on the run's synthetic validation set (stage 2:
      ``--threshold-fpr``), or None (older runs, reconstruction scoring).
    - ``flip``: test-time augmentation, the map averaged with that of the left-right mirrored
      image (a right eye mirrored is a plausible left eye, as in training); twice the cost.
    - :meth:`anomaly_map`: ``x`` (B, 3, H, W) float in [0, 1] -> (B, H, W) scores in [0, 1].
    """

    model: torch.nn.Module
    _: KW_ONLY
    size: int
    clahe: bool
    scoring: str
    network: NetworkConfig
    device: torch.device
    run_dir: Path | None = None
    threshold: float | None = None
    flip: bool = False

    def __post_init__(self) -> None:
        self.model = self.model.eval()
        self.size = int(self.size)
        self.clahe = bool(self.clahe)

    def __repr__(self) -> str:
        return (
            f"Detector({self.scoring}, size={self.size}, rec_features="
            f"{self.network.rec_features!r}, device={self.device})"
        )

    @torch.inference_mode()
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel anomaly scores (B, H, W), float32 in [0, 1], on ``x``'s device.

        ``"localization"``: the anomaly probability sigmoid(logits) of ReSynthDetect.
        ``"reconstruction"``: the per-pixel squared reconstruction error
        (D_r(E_r(x)) - x)**2 averaged over RGB. Both images lie in [0, 1], so the error already
        does; it is used as it is (the identity is monotone and needs no per-image
        normalisation, so scores compare across images).

        Images of another size than :attr:`size` are resized to it (area / bilinear) and the
        map is resized back (bilinear). uint8 images are divided by 255.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"anomaly_map: expected images (B, 3, H, W), got {tuple(x.shape)}")
        out_device = x.device
        h, w = x.shape[-2:]
        x = x.to(self.device, non_blocking=True)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        resized = (h, w) != (self.size, self.size)
        if resized:
            shrink = h > self.size and w > self.size
            x = F.interpolate(
                x,
                size=(self.size, self.size),
                mode="area" if shrink else "bilinear",
                align_corners=None if shrink else False,
            )
        # channels-last on every device: oneDNN's CPU convolutions are 1.5x faster in it too
        x = x.contiguous(memory_format=torch.channels_last)
        if self.scoring == "localization":
            maps = self.model.anomaly_map(x)
            if self.flip:
                mirrored = self.model.anomaly_map(x.flip(-1)).flip(-1)
                maps = (maps + mirrored) * 0.5
        else:
            maps = reconstruction_error_map(self.model, x)
        if resized:
            maps = F.interpolate(maps[:, None], size=(h, w), mode="bilinear", align_corners=False)
            maps = maps[:, 0]
        return maps.float().clamp_(0.0, 1.0).to(out_device)


def _describe_progress(run: Path, stage: int) -> str:
    try:
        record = read_state_info(run, stage)
    except CheckpointError:
        record = None
    if record is None:
        return f"stage {stage} has not started"
    total = record.get("info", {}).get("total_steps", "?")
    return f"stage {stage} stopped at step {record['step']} of {total}"


def load_detector(
    run_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    scoring: str | None = None,
    flip: bool | None = None,
) -> Detector:
    """The trained detector of a run folder, on ``device``, in eval mode.

    ``device`` "auto" takes the GPU where there is one. ``scoring`` None picks
    ``"localization"`` (needs ``RUN/stage2.safetensors``); ``"reconstruction"`` scores by the
    stage-1 reconstruction error (needs ``RUN/stage1.safetensors``); ``flip`` averages each map
    with that of the mirrored image (:class:`Detector`; None: the run's ``train.test_flip``,
    off for runs from before it). Raises
    :class:`CheckpointError` (a ``StoreError``) for a missing, incomplete or unknown-version run
    folder.
    """
    run = Path(run_dir)
    config = read_run_config(run)
    if scoring is None:
        scoring = "localization"
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring: must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    network = network_config(config, str(run / CONFIG_FILE))
    size = _training_size(config, run / CONFIG_FILE)  # before anything is sized by it
    stage = 2 if scoring == "localization" else 1
    path = stage_weights_path(run, stage)
    if not path.exists():
        hint = (
            " (score by the stage-1 reconstruction error instead with scoring 'reconstruction')"
            if stage == 2 and stage_weights_path(run, 1).exists()
            else ""
        )
        raise CheckpointError(
            f"{run}: no stage-{stage} weights ({path.name}): {_describe_progress(run, stage)}; "
            f"finish it with `resynth train --resume --out {run} ...`{hint}"
        )
    tensors, metadata = load_weights(path)
    if metadata.get("stage") != str(stage):
        raise CheckpointError(f"{path}: holds stage-{metadata.get('stage')} weights")
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: keep the caller's RNG
        model = build_model(network, stage)
    load_module_weights(model, tensors, str(path))
    dev = resolve_device(device)
    model = model.to(dev)
    model = model.to(memory_format=torch.channels_last)
    data = config.get("data", {})
    return Detector(
        model,
        size=size,
        clahe=bool(data.get("clahe", True)),
        scoring=scoring,
        network=network,
        device=dev,
        run_dir=run,
        threshold=_threshold(metadata, path) if stage == 2 else None,
        flip=_run_flip(config, run / CONFIG_FILE) if flip is None else flip,
    )


def _run_flip(config: Mapping[str, Any], where: Path) -> bool:
    """The run's test-time flips (``train.test_flip``; runs from before it have none), checked
    to be true or false (a string "false" must not turn them on)."""
    train = config.get("train")
    value = train.get("test_flip", False) if isinstance(train, dict) else False
    if type(value) is not bool:
        raise CheckpointError(
            f"{where}: train.test_flip {value!r} is not true or false (a damaged or edited "
            "run config)"
        )
    return value


def _training_size(config: Mapping[str, Any], where: Path) -> int:
    """The side the run trained at (``data.size``), checked before anything is sized by it."""
    data = config.get("data")
    size = data.get("size") if isinstance(data, dict) else None
    if size is None:
        raise CheckpointError(f"{where}: no training size under 'data'")
    if type(size) is not int or not MIN_TRAIN_SIZE <= size <= MAX_SIDE:
        raise CheckpointError(
            f"{where}: training size data.size {size!r} is not an integer from "
            f"{MIN_TRAIN_SIZE} to {MAX_SIDE} (a damaged or edited run config)"
        )
    return size


def _threshold(metadata: dict[str, str], path: Path) -> float | None:
    """The detector threshold recorded in a weights file's metadata, checked, or None."""
    text = metadata.get("threshold")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CheckpointError(
            f"{path}: threshold {text!r} in its metadata is not a number"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise CheckpointError(f"{path}: threshold {value} in its metadata is outside [0, 1]")
    return value
