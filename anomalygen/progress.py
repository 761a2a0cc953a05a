"""Progress reporting for long jobs (render, preview, training): a rich progress bar with rate
and ETA on a terminal, plain periodic lines otherwise (logs, CI, ``nohup``).

    with Progress(total=n, description="render", unit="samples", completed=done) as bar:
        for k in work:
            ...
            bar.advance(k)

The rate and ETA count only the work done since the bar started, so a resumed job shows its own
speed rather than an average that includes what an earlier run did.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["Progress", "format_bytes", "format_duration"]


def format_duration(seconds: float) -> str:
    """``3725.2 -> "1h02m05s"``, ``42.3 -> "42.3s"``."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_bytes(n: float) -> str:
    """``1536 -> "1.5 KB"`` (powers of 1000, as disks are sold)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


class Progress:
    """A progress display for ``total`` units of work, ``completed`` of which are already done.

    ``live=None`` chooses: a rich bar if ``stream`` is a terminal, else a plain line every
    ``interval`` seconds (and one at the end). ``enabled=False`` shows nothing. ``status`` is a
    short free text shown after the rate (training shows its loss there).
    """

    def __init__(
        self,
        total: int,
        *,
        description: str = "",
        unit: str = "items",
        completed: int = 0,
        stream: IO[str] | None = None,
        live: bool | None = None,
        interval: float = 10.0,
        enabled: bool = True,
    ) -> None:
        self.total = int(total)
        self.description = description
        self.unit = unit
        self.completed = int(completed)
        self._start_completed = self.completed
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = bool(live) if live is not None else _is_terminal(self.stream)
        self.interval = float(interval)
        self._t0 = time.monotonic()
        self._last_line = self._t0
        self._rich: Any = None
        self._task: Any = None
        self.status = ""

    # --- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._last_line = self._t0
        if not self.enabled or not self.live:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._rich = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            transient=False,
        )
        self._rich.start()
        self._task = self._rich.add_task(
            self.description, total=self.total, completed=self.completed, rate="", status=""
        )

    def close(self) -> None:
        if self._rich is not None:
            self._rich.update(self._task, rate=self._rate_text(), status=self.status)
            self._rich.stop()
            self._rich = None
        elif self.enabled and self.completed > self._start_completed:
            self._line()

    # --- updates --------------------------------------------------------------------------
    def advance(self, n: int = 1, status: str | None = None) -> None:
        self.completed += int(n)
        if status is not None:
            self.status = status
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(
                self._task, completed=self.completed, rate=self._rate_text(), status=self.status
            )
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._line()

    def log(self, message: str) -> None:
        """Print a line without breaking the bar."""
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    # --- figures --------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    @property
    def rate(self) -> float:
        """Units per second since the start (excluding work done before it)."""
        elapsed = self.elapsed
        done = self.completed - self._start_completed
        return done / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float:
        rate = self.rate
        return (self.total - self.completed) / rate if rate > 0 else float("inf")

    def _rate_text(self) -> str:
        return f"{self.rate:.1f} {self.unit}/s"

    def _line(self) -> None:
        self._last_line = time.monotonic()
        pct = 100.0 * self.completed / self.total if self.total else 100.0
        text = (
            f"{self.description}: {self.completed}/{self.total} {self.unit} ({pct:.1f}%), "
            f"{self._rate_text()}, elapsed {format_duration(self.elapsed)}"
        )
        if self.completed < self.total:
            text += f", ETA {format_duration(self.eta)}"
        if self.status:
            text += f"; {self.status}"
        print(text, file=self.stream, flush=True)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
