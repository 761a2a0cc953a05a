"""Choosing the torch device from a ``--device`` value: one rule for train, evaluate and predict."""

from __future__ import annotations

import re

import torch

from anomalygen.errors import ConfigError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str) -> str:
    """``name`` lower-cased if it is auto, cpu, cuda or cuda:N; else ConfigError. No CUDA check:
    configurations are validated where they are made, the device where it is used."""
    text = str(name).strip().lower()
    if not DEVICE_PATTERN.fullmatch(text):
        raise ConfigError(f"--device: must be auto, cpu, cuda or cuda:N; got {name!r}")
    return text


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA where available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``;
    raises :class:`ConfigError` for an unknown name, or CUDA (or GPU N) that is not there."""
    if isinstance(name, torch.device):
        return name
    text = check_device_name(name)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = (
            f"this torch {torch.__version__} is built without CUDA"
            if torch.version.cuda is None
            else "no CUDA GPU is visible"
        )
        raise ConfigError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
    device = torch.device(text)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def detector_device(detector: object) -> torch.device:
    """Where a detector's weights live (``Detector.device``; the CPU for objects without one)."""
    device = getattr(detector, "device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")
