"""The learning-rate schedule (paper 4.1): linear warm-up, then cosine decay (nanoGPT's), and
the ``--warmup`` durations (steps, epochs or a share of the stage). Pure functions, no torch."""

from __future__ import annotations

import math

from anomalygen.errors import ConfigError

__all__ = ["duration_steps", "learning_rate", "parse_duration"]


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
    """A ``--warmup`` duration in optimiser steps of a stage of ``total_steps``."""
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
