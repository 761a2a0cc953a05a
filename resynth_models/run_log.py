"""What a training run reports: ``RUN/metrics.jsonl`` (one JSON object per record), TensorBoard
events (when tensorboard is installed) and the progress display; rank 0 alone writes."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anomalygen.progress import Progress
from resynth_models import checkpoint as ckpt

__all__ = ["RunLog"]


class RunLog:
    """The run's log; disabled (``enabled`` False) in every process but rank 0's."""

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


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities (a diverged loss) become null: metrics.jsonl stays strict JSON."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }
