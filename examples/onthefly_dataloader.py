"""Synthetic lesions on the fly inside another project's torch Dataset / DataLoader.

``anomalygen`` is a plain numpy/OpenCV library (it never imports torch), so any training code can
make ReSynthDetect's fundus-consistent lesions itself instead of reading a pre-rendered store:

    dataset = OnTheFlyLesions(folder, size=256, seed=0)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=4,
                        multiprocessing_context="spawn")
    for epoch in range(epochs):
        dataset.set_epoch(epoch)          # before the loader starts this epoch's workers
        for images, masks, index in loader:
            ...                           # images (B, 3, H, W) float in [0, 1], masks (B, 1, H, W)

Sample ``index`` of epoch ``e`` is a function of ``(seed, e, index)`` alone: its random stream
is ``anomalygen.sample_rng(seed, e * len(dataset) + index)``, so it is the same with 0 or 16
workers, in any order, on any machine; every epoch draws new lesions for each photograph.

Run it (CPU, a few seconds)::

    python examples/onthefly_dataloader.py                       # the built-in demo photographs
    python examples/onthefly_dataloader.py --src ../shared/data/fundus-normal --workers 2

It checks that 0 and ``--workers`` workers give identical batches, times a few epochs, and writes
a contact sheet of one batch (lesions outlined in green) to ``--out``.

Where a Dataset brings its own images, ``anomalygen.LesionSynthesizer`` does the same in one call
per image (``synth(image, index=i)``), drawing the lesion source from a pool of its own.

When to pre-render instead (``anomalygen render``): the generator costs a few ms per 768 px
sample, so on the fly it suits small sets and CPU-bound experiments; a store decouples the
generator from the GPU, is shared by many runs, and is byte-identical from run to run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from anomalygen import (
    AnomalyGenerator,
    GeneratorConfig,
    ImageError,
    demo_folder,
    find_sources,
    load_fundus,
    sample_rng,
)


class OnTheFlyLesions(Dataset):
    """Each item: a normal photograph (target I_t) with lesions cut from another one (source
    I_s) and self-mix pasted (paper 3.3): ``(image (3, H, W) float [0, 1], mask (1, H, W) float
    {0, 1}, index)``. Some items stay normal (``GeneratorConfig.p_normal``), with an empty mask.

    The photographs are prepared once (FOV crop, resize to ``size``, CLAHE) and kept in memory:
    ``size**2 * 4`` bytes each (0.26 MB at 256 px, 2.4 MB at 768 px).
    """

    def __init__(
        self,
        folder: str | Path,
        size: int = 256,
        seed: int = 0,
        clahe: bool = True,
        config: GeneratorConfig | None = None,
        repeats: int = 1,
    ) -> None:
        self.seed, self.epoch, self.repeats = seed, 0, repeats
        self.generator = AnomalyGenerator(config or GeneratorConfig())
        self.images, self.fovs, self.names = [], [], []
        for source in find_sources(folder).files:
            try:
                prepared = load_fundus(source.path, size=size, clahe=clahe)
            except ImageError as err:  # unreadable file, no field of view, ...
                print(f"skipped {err}")
                continue
            self.images.append(prepared.image)
            self.fovs.append(prepared.fov)
            self.names.append(source.name)
        if len(self.images) < 2:
            raise SystemExit(f"{folder}: need at least two usable photographs (source != target)")

    def __len__(self) -> int:
        # The paper makes one sample per photograph per epoch (repeats=1); more per epoch suit
        # small folders.
        return len(self.images) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        """New lesions every epoch. DataLoader workers get a copy of the dataset when an epoch's
        iteration starts, so call this before iterating (and keep ``persistent_workers=False``,
        the default, or the workers keep the old epoch)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rng = sample_rng(self.seed, self.epoch * len(self) + index)
        target = index % len(self.images)
        source = int(rng.integers(len(self.images) - 1))
        source += source >= target  # any photograph but the target itself
        sample = self.generator.generate(
            self.images[target],
            self.images[source],
            rng,
            fov=self.fovs[target],
            source_fov=self.fovs[source],
        )
        image = torch.from_numpy(sample.image).permute(2, 0, 1).float().div_(255.0)
        mask = torch.from_numpy(sample.mask)[None].float()
        return image, mask, index


def workers_args(workers: int) -> dict:
    """DataLoader arguments for ``workers`` processes, started by "spawn": a worker forked after
    OpenCV's thread pool has run in this process (``load_fundus`` does) can hang inside OpenCV.
    Spawn costs a second or two per worker at the start of each epoch."""
    if workers == 0:
        return {"num_workers": 0}
    return {"num_workers": workers, "multiprocessing_context": "spawn"}


def contact_sheet(images: torch.Tensor, masks: torch.Tensor, columns: int = 4) -> np.ndarray:
    """An RGB grid of a batch with each lesion outlined in green."""
    tiles = []
    for image, mask in zip(images, masks, strict=True):
        rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).copy()
        contours, _ = cv2.findContours(
            mask[0].numpy().astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(rgb, contours, -1, (0, 255, 0), 1)
        tiles.append(rgb)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, help="folder of normal photographs (default: demo)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=8, help="samples per photograph per epoch")
    parser.add_argument("--out", type=Path, default=Path("onthefly_batch.png"))
    args = parser.parse_args()

    if args.src is None:
        args.src = demo_folder()  # two CC0 photographs (scikit-image's retina and its mirror)
    dataset = OnTheFlyLesions(args.src, size=args.size, seed=args.seed, repeats=args.repeats)
    print(
        f"{len(dataset.images)} photographs from {args.src}, prepared at {args.size} px; "
        f"{len(dataset)} samples per epoch"
    )

    # Determinism: the first batch of epoch 1 with 0 workers and with --workers workers.
    def first_batch(workers: int) -> tuple[torch.Tensor, ...]:
        dataset.set_epoch(1)
        loader = DataLoader(dataset, batch_size=args.batch_size, **workers_args(workers))
        return next(iter(loader))

    serial, parallel = first_batch(0), first_batch(args.workers)
    same = all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    print(f"0 vs {args.workers} workers: {'identical' if same else 'DIFFERENT'} batches")
    if not same:
        raise SystemExit(1)

    # A few epochs, shuffled, as a training loop would see them.
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
        drop_last=False,
        **workers_args(args.workers),
    )
    for epoch in range(args.epochs):
        dataset.set_epoch(epoch)
        start, n, lesion = time.perf_counter(), 0, 0.0
        for images, masks, _ in loader:
            n += len(images)
            lesion += float(masks.mean()) * len(images)
        seconds = time.perf_counter() - start
        print(
            f"epoch {epoch}: {n} samples in {seconds:.2f} s ({n / seconds:.1f} samples/s with "
            f"{args.workers} workers), mean lesion area {100 * lesion / n:.2f}% of the image"
        )

    images, masks, _ = serial
    sheet = contact_sheet(images, masks)
    cv2.imwrite(str(args.out), sheet[..., ::-1])
    print(f"wrote {args.out} (epoch 1, first batch; lesions outlined in green)")


if __name__ == "__main__":
    main()
