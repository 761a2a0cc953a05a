"""Built-in demo photographs, so that ``anomalygen render --demo`` works on a fresh machine.

The photograph is scikit-image's ``data.retina()``: "Fundus photograph of normal left eye" by
Mikael Häggström, CC0 1.0, bundled in the scikit-image wheel (the ``demo`` extra installs it).
One photograph is not a training set: the demo folder holds it and its mirror image (a plausible
right eye), so that the generator's source and target can differ. It is for trying the tool out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anomalygen.errors import AnomalygenError

DEMO_NAMES = ("retina_left.png", "retina_mirrored.png")


def demo_images() -> list[tuple[str, np.ndarray]]:
    """The demo photographs as ``(file name, RGB uint8 array)`` pairs."""
    try:
        from skimage import data
    except ImportError:
        raise AnomalygenError(
            "--demo needs scikit-image, which ships the demo photograph: "
            "pip install 'anomalygen[demo]'"
        ) from None
    retina = np.ascontiguousarray(data.retina())
    return [(DEMO_NAMES[0], retina), (DEMO_NAMES[1], np.ascontiguousarray(retina[:, ::-1]))]


def demo_folder(cache: Path | None = None) -> Path:
    """A folder holding the demo photographs as PNG files (written once, then reused).

    The default folder is ``$XDG_CACHE_HOME/anomalygen/demo`` (``~/.cache/anomalygen/demo``).
    """
    if cache is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache = base / "anomalygen" / "demo"
    if all((cache / name).is_file() for name in DEMO_NAMES):
        return cache
    from PIL import Image

    cache.mkdir(parents=True, exist_ok=True)
    for name, rgb in demo_images():
        tmp = cache / f".{name}.tmp"
        Image.fromarray(rgb).save(tmp, format="PNG")
        tmp.replace(cache / name)  # atomic: a concurrent reader never sees half a file
    return cache
