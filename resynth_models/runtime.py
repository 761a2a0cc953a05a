"""Where and how the training loop runs: the processes (``torchrun``'s, DistributedDataParallel
over gloo on CPUs or nccl on GPUs), mixed precision, the data loaders and batches on the
device, and stop requests (Ctrl-C, SIGTERM)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from anomalygen.errors import AnomalygenError, ConfigError
from resynth_models.data import worker_context, worker_init

__all__ = ["Dist", "StopRequest", "amp_dtype", "make_loader", "next_batch", "to_device"]


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device`` (None: full precision)."""
    if amp == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16: needs a CUDA GPU; use --amp bf16 or off on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


@dataclass
class Dist:
    """This process's place among ``torchrun``'s processes (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> Dist:
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


class StopRequest:
    """First Ctrl-C / SIGTERM: finish the step, save, stop. Second Ctrl-C: stop at once."""

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self._enabled = enabled and threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
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


def next_batch(batches: Any, stop: StopRequest, workers: int) -> dict[str, Any] | None:
    """The next batch; None when a stop request also stopped the loader's workers."""
    try:
        return next(batches)
    except Exception as err:
        if stop.requested:
            return None
        if workers and "exited unexpectedly" in str(err):
            raise AnomalygenError(
                f"--workers {workers}: a DataLoader worker died ({err}); workers start from a "
                "fork server, so a script that calls train() needs `if __name__ == "
                "'__main__':`; or pass --workers 0"
            ) from None
        raise


def to_device(
    batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 batch -> images float (B, 3, H, W) in [0, 1] and masks float (B, H, W), on
    ``device`` (converted there: a quarter of the bytes cross the bus)."""
    images = batch["image"].to(device, non_blocking=True).float().div_(255.0)
    images = images.contiguous(memory_format=torch.channels_last)
    masks = batch["mask"].to(device, non_blocking=True).float() if "mask" in batch else None
    return images, masks


def make_loader(dataset: Any, workers: int, device: torch.device, **kw: Any) -> DataLoader:
    """A DataLoader of ``workers`` processes (0: in this one), pinned memory on a GPU."""
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
