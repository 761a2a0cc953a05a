"""A training-free baseline detector: the green channel's distance from its median filter.

Lesions of the retina are small spots darker (haemorrhages, microaneurysms) or brighter (exudates)
than the retina around them, and they show best in the green channel. ``abs(G - median(G))``
with a median window of 1/8 of the image side lights every such spot, and with it vessels, the
optic disc and the rim of the field of view. It needs no training, so it is the floor a trained
detector must clear: ``resynth evaluate --baseline median`` and ``benchmarks/bench_detect.py``
score it on exactly the pixels the detector is scored on.

:class:`MedianResidual` has the interface evaluation uses of a trained detector (``size``,
``clahe``, ``scoring``, ``threshold``, :meth:`anomaly_map`), so both go through the same code.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from anomalygen.errors import ConfigError

#: Baselines by name (``resynth evaluate --baseline NAME``).
BASELINES = ("median",)


class MedianResidual:
    """``abs(G - median filter of G) / 255`` on the prepared photograph.

    - ``size``: the side photographs are prepared at (as a trained detector's training size);
    - ``kernel_fraction``: the median window's side as a fraction of ``size`` (1/8: a window
      wider than the largest lesions, narrower than the vessel arcades' bends), rounded to the
      next odd number of pixels.
    """

    scoring = "median"

    def __init__(self, size: int, kernel_fraction: float = 1 / 8, clahe: bool = True) -> None:
        if size < 8:
            raise ConfigError(f"baseline: size must be at least 8, got {size}")
        if not 0 < kernel_fraction <= 1:
            raise ConfigError(f"baseline: kernel_fraction must be in (0, 1], got {kernel_fraction}")
        self.size = int(size)
        self.clahe = bool(clahe)
        self.kernel = round(size * kernel_fraction) // 2 * 2 + 1
        self.threshold: float | None = None  # no threshold of its own: it is not calibrated
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        return f"MedianResidual(size={self.size}, kernel={self.kernel})"

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] (or uint8) -> (B, H, W) float32 scores in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"anomaly_map: expected images (B, 3, H, W), got {tuple(x.shape)}")
        images = x.detach().cpu()
        if images.dtype != torch.uint8:
            images = (images.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        green = images[:, 1].numpy()
        maps = np.empty(green.shape, dtype=np.float32)
        for i, g in enumerate(green):
            residual = cv2.absdiff(g, cv2.medianBlur(np.ascontiguousarray(g), self.kernel))
            maps[i] = residual.astype(np.float32) / 255.0
        return torch.from_numpy(maps).to(x.device)
