"""What training returns and raises: :class:`TrainResult` (one :class:`StageResult` per stage),
:class:`StepInfo` (what ``on_step`` sees after every step) and :class:`TrainingInterrupted`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["StageResult", "StepInfo", "TrainResult", "TrainingInterrupted"]


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
