"""Synthetic lesions as a transform, for samples made on the fly: :class:`LesionSynthesizer`.

    synth = anomalygen.LesionSynthesizer("normals/", seed=0, size=512)
    sample = synth(image, index=i)        # SyntheticSample: .image (I_G), .mask (M_G), .meta

Called like an albumentations transform (``synth(image=...)``), inside any Dataset or
pipeline; numpy and OpenCV only, no torch. Each call cuts the lesions from one photograph of the
synthesizer's own pool of source photographs, prepared once when it is made exactly as a render
prepares its pool (FOV crop, resize to ``size``, CLAHE), and pastes them into ``image`` with
:class:`~anomalygen.generator.AnomalyGenerator` (paper 3.3).

With ``index``, the sample is a function of ``(seed, index)`` and the image alone: its random
stream is :func:`~anomalygen.generator.sample_rng` ``(seed, index)``, which draws the source
photograph first, then the lesions; so it is the same in any DataLoader worker and in any order.
Without ``index``, every call draws fresh randomness, as augmentation libraries do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from anomalygen.errors import ConfigError, ImageError
from anomalygen.fundus import find_fov, prepare_fundus, read_image
from anomalygen.generator import AnomalyGenerator, GeneratorConfig, SyntheticSample, sample_rng
from anomalygen.sources import SourceFile, SourceList, find_sources

__all__ = ["LesionSynthesizer"]

Sources = str | os.PathLike | SourceList | Sequence[str | os.PathLike]


class LesionSynthesizer:
    """``synth(image, fov=None, index=None) -> SyntheticSample``, lesions from ``sources``.

    ``sources``: a folder or list file (as ``anomalygen render --src`` takes it), the result of
    :func:`~anomalygen.sources.find_sources`, or a sequence of image paths: normal fundus
    photographs, or textures when ``config.source == "texture"``. Unusable files are left out
    and listed in :attr:`skipped`. The pool takes ``size**2 * 4`` bytes per photograph.
    """

    def __init__(
        self,
        sources: Sources,
        config: GeneratorConfig | None = None,
        seed: int = 0,
        *,
        size: int = 768,
        clahe: bool = True,
    ) -> None:
        sample_rng(seed, 0)  # the same check of the seed as every sample's
        self.generator = AnomalyGenerator(config if config is not None else GeneratorConfig())
        self.seed, self.size, self.clahe = int(seed), size, clahe
        self.names: list[str] = []  # the pool's photographs, as found
        self.skipped: list[tuple[str, str]] = []  # (name, reason) of the files left out
        self._images: list[np.ndarray] = []
        self._fovs: list[np.ndarray | None] = []
        for file in _files(sources):
            self._add(file)
        if not self._images:
            raise ConfigError(
                f"LesionSynthesizer: no usable source image among {len(self.skipped)} file(s)"
                + (f" (first: {self.skipped[0][0]}: {self.skipped[0][1]})" if self.skipped else "")
            )
        # (height, width, j) -> pool image j and its FOV at that shape, made on first use
        self._resized: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray | None]] = {}

    def _add(self, file: SourceFile) -> None:
        try:
            rgb = read_image(file.path)
            if self.generator.config.source == "texture":  # as a render prepares textures
                shrink = rgb.shape[0] * rgb.shape[1] > self.size**2
                interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
                image = cv2.resize(rgb, (self.size, self.size), interpolation=interp)
                fov = None
            else:
                prepared = prepare_fundus(rgb, self.size, self.clahe, name=file.name)
                image, fov = prepared.image, prepared.fov
        except (ImageError, ConfigError) as err:
            reason = str(err).removeprefix(f"{file.path}: ").removeprefix(f"{file.name}: ")
            self.skipped.append((file.name, reason))
            return
        self.names.append(file.name)
        self._images.append(image)
        self._fovs.append(fov)

    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        return f"LesionSynthesizer({len(self)} source images at {self.size} px, seed={self.seed})"

    def __call__(
        self, image: np.ndarray, fov: np.ndarray | None = None, index: int | None = None
    ) -> SyntheticSample:
        """Lesions in ``image`` ((H, W, 3) uint8 RGB; best prepared as the pool is, e.g. with
        :func:`~anomalygen.fundus.load_fundus` at the same size and CLAHE). ``fov``: (H, W),
        nonzero inside the field of view; None finds it (:func:`~anomalygen.fundus.find_fov`).
        ``meta["source"]`` is the photograph the lesions came from (``names[source]``)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ImageError(f"image: expected an (H, W, 3) uint8 RGB array, got {image.shape}")
        if fov is None:
            fov = find_fov(image)
        rng = sample_rng(self.seed, index) if index is not None else np.random.default_rng()
        source = int(rng.integers(len(self)))
        src, src_fov = self._source(source, image.shape[:2])
        sample = self.generator.generate(image, src, rng, fov=fov, source_fov=src_fov)
        return SyntheticSample(sample.image, sample.mask, {**sample.meta, "source": source})

    def _source(self, j: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Pool image ``j`` (and its FOV) at ``shape``: resized once per shape, then kept."""
        if shape == (self.size, self.size):
            return self._images[j], self._fovs[j]
        key = (*shape, j)
        if key not in self._resized:
            h, w = shape
            interp = cv2.INTER_AREA if h * w < self.size**2 else cv2.INTER_LINEAR
            image = cv2.resize(self._images[j], (w, h), interpolation=interp)
            fov = self._fovs[j]
            if fov is not None:
                fov = cv2.resize(fov, (w, h), interpolation=cv2.INTER_NEAREST)
                image = cv2.bitwise_and(image, image, mask=fov)
            self._resized[key] = (image, fov)
        return self._resized[key]


def _files(sources: Sources) -> list[SourceFile]:
    if isinstance(sources, SourceList):
        return list(sources.files)
    if isinstance(sources, str | os.PathLike):
        return list(find_sources(sources).files)
    paths = [Path(p) for p in sources]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"LesionSynthesizer: no such file: {missing[0]}")
    return [SourceFile(p, str(p), p.stat().st_size) for p in paths]
