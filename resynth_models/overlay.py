"""Pictures of anomaly maps: pure drawing functions (numpy + OpenCV), no I/O, no torch.

- :func:`fig4_overlay`: the paper's Fig. 4 style, a binary prediction against the ground truth in
  translucent colours over the photograph: green true positives, yellow false positives, red
  misses (false negatives).
- :func:`heatmap_overlay`: the anomaly probability map in a perceptual colour map (inferno by
  default, or turbo) over the photograph, inside the field of view (FOV) only, with an optional
  colour bar.
- :func:`side_by_side`, :func:`caption`: compose panels and write a line of text on them.

Every function takes RGB uint8 images (H, W, 3), maps (H, W) and returns a new RGB uint8 array;
the inputs are never modified. Outside the FOV the photograph is left untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "FIG4_COLOURS",
    "caption",
    "colorbar",
    "fig4_legend",
    "fig4_overlay",
    "heatmap_overlay",
    "side_by_side",
]

#: Fig. 4 of the paper: green = true positive, yellow = false positive, red = missed lesion.
FIG4_COLOURS = {
    "TP": (0, 255, 0),
    "FP": (255, 255, 0),
    "FN": (255, 0, 0),
}
FIG4_LABELS = {"TP": "true positive", "FP": "false positive", "FN": "missed"}

#: cv2 colour maps by name: perceptually ordered maps only (no jet).
COLORMAPS = {
    "inferno": cv2.COLORMAP_INFERNO,
    "turbo": cv2.COLORMAP_TURBO,
    "magma": cv2.COLORMAP_MAGMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
}

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _check_map(arr: np.ndarray | None, shape: tuple[int, int], what: str) -> np.ndarray:
    """A boolean (H, W) map; ``None`` means everywhere (for a FOV)."""
    if arr is None:
        return np.ones(shape, dtype=bool)
    arr = np.asarray(arr)
    if arr.shape != shape:
        raise ValueError(f"{what}: shape {arr.shape} != image shape {shape}")
    return arr.astype(bool)


def _blend(image: np.ndarray, colour: np.ndarray, where: np.ndarray, alpha: float) -> np.ndarray:
    """``image`` with ``(1 - alpha) * image + alpha * colour`` where ``where`` is true."""
    out = image.copy()
    mixed = (1.0 - alpha) * image[where].astype(np.float32) + alpha * colour[where]
    out[where] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def fig4_overlay(
    image: np.ndarray,
    pred_binary: np.ndarray,
    gt_mask: np.ndarray,
    fov: np.ndarray | None = None,
    *,
    alpha: float = 0.7,
    legend: bool = False,
) -> np.ndarray:
    """The paper's Fig. 4: prediction vs ground truth in translucent colours over ``image``.

    ``pred_binary`` and ``gt_mask`` are (H, W), nonzero = lesion; pixels outside ``fov`` (nonzero
    = inside; default everywhere) are left untouched. Green: predicted and true (TP); yellow:
    predicted, not true (FP); red: true, not predicted (FN, a miss). ``alpha`` in [0, 1] is the
    colours' opacity. ``legend`` draws a key in the top-left corner (black outside a fundus).
    """
    image = _check_image(image)
    shape = image.shape[:2]
    inside = _check_map(fov, shape, "FOV")
    pred = _check_map(pred_binary, shape, "prediction") & inside
    gt = _check_map(gt_mask, shape, "ground truth") & inside
    colour = np.zeros(image.shape, dtype=np.float32)
    colour[pred & gt] = FIG4_COLOURS["TP"]
    colour[pred & ~gt] = FIG4_COLOURS["FP"]
    colour[~pred & gt] = FIG4_COLOURS["FN"]
    out = _blend(image, colour, pred | gt, alpha)
    if legend:
        out = _draw_legend(out, [(FIG4_COLOURS[k], FIG4_LABELS[k]) for k in ("TP", "FP", "FN")])
    return out


def colorbar(
    height: int,
    *,
    colormap: str = "inferno",
    width: int | None = None,
    ticks: Sequence[float] = (0.0, 0.5, 1.0),
) -> np.ndarray:
    """A vertical colour bar (height, width, 3) RGB: 1 at the top, 0 at the bottom, tick labels
    on the right on a black background."""
    code = _colormap(colormap)
    width = width if width is not None else max(48, height // 7)
    bar_w = max(6, width // 4)
    margin = max(4, height // 40)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    span = height - 2 * margin
    values = np.linspace(255, 0, span).astype(np.uint8)[:, None]
    strip = cv2.applyColorMap(values, code)[:, 0, ::-1]  # (span, 3) RGB
    out[margin : margin + span, margin : margin + bar_w] = strip[:, None, :]
    scale, thickness = _font_for(height * 0.8)
    for t in ticks:
        y = margin + round((1.0 - float(t)) * (span - 1))
        x0 = margin + bar_w
        cv2.line(out, (x0, y), (x0 + 3, y), (255, 255, 255), 1)
        (_, th), _ = cv2.getTextSize(f"{t:g}", _FONT, scale, thickness)
        y_text = int(np.clip(y + th // 2, th, height - 1))
        cv2.putText(out, f"{t:g}", (x0 + 5, y_text), _FONT, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)  # fmt: skip
    return out


def heatmap_overlay(
    image: np.ndarray,
    prob_map: np.ndarray,
    fov: np.ndarray | None = None,
    alpha: float = 0.55,
    *,
    colormap: str = "inferno",
    with_colorbar: bool = False,
) -> np.ndarray:
    """The anomaly map in a perceptual colour map over ``image``, inside ``fov`` only.

    ``prob_map`` (H, W) in [0, 1] (clipped) is coloured with ``cv2.applyColorMap`` (``colormap``:
    inferno (default), turbo, magma, viridis) and blended with opacity ``alpha`` inside the FOV
    (nonzero = inside; default everywhere); outside, the photograph is untouched.
    ``with_colorbar`` appends a colour bar on the right (the result is then wider).
    """
    image = _check_image(image)
    shape = image.shape[:2]
    inside = _check_map(fov, shape, "FOV")
    prob = np.asarray(prob_map, dtype=np.float32)
    if prob.shape != shape:
        raise ValueError(f"probability map: shape {prob.shape} != image shape {shape}")
    levels = np.rint(np.nan_to_num(prob, nan=0.0).clip(0.0, 1.0) * 255).astype(np.uint8)
    colour = cv2.applyColorMap(levels, _colormap(colormap))[..., ::-1].astype(np.float32)
    out = _blend(image, colour, inside, alpha)
    if with_colorbar:
        out = np.concatenate([out, colorbar(shape[0], colormap=colormap)], axis=1)
    return out


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels of the same height next to each other, separated by ``gap`` black pixels."""
    if not panels:
        raise ValueError("side_by_side: no panels")
    height = panels[0].shape[0]
    parts: list[np.ndarray] = []
    for k, panel in enumerate(panels):
        panel = _check_image(panel)
        if panel.shape[0] != height:
            raise ValueError(f"side_by_side: panel {k} is {panel.shape[0]} px high, not {height}")
        if k and gap:
            parts.append(np.zeros((height, gap, 3), dtype=np.uint8))
        parts.append(panel)
    return np.concatenate(parts, axis=1)


def caption(image: np.ndarray, text: str, *, where: str = "top") -> np.ndarray:
    """``image`` with a black band above (``where="top"``) or below holding one line of white
    text, sized to the image width (shrunk to fit)."""
    image = _check_image(image)
    width = image.shape[1]
    scale, thickness = _font_for(min(image.shape[0], width))
    (_, th), base = cv2.getTextSize("Xg", _FONT, scale, thickness)
    pad = max(4, th // 2)
    band = np.zeros((th + base + 2 * pad, width, 3), dtype=np.uint8)  # same for any text
    tw = cv2.getTextSize(text, _FONT, scale, thickness)[0][0]
    if tw > width - 8:  # shrink to fit
        scale *= (width - 8) / tw
        thickness = max(1, round(thickness * (width - 8) / tw))
    cv2.putText(band, text, (4, pad + th), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return np.concatenate([band, image] if where == "top" else [image, band], axis=0)


def fig4_legend(width: int, *, side: int | None = None) -> np.ndarray:
    """A black band (h, width, 3) with the Fig. 4 key side by side (green true positive, yellow
    false positive, red missed), to put under a panel of :func:`fig4_overlay` images. Text is
    sized as :func:`caption` sizes it for an image whose smaller side is ``side`` (default
    ``width``)."""
    scale, thickness = _font_for(side if side is not None else width)
    (_, th), base = cv2.getTextSize("Xg", _FONT, scale, thickness)
    pad = max(4, th // 2)
    height = th + base + 2 * pad
    band = np.zeros((height, width, 3), dtype=np.uint8)
    x, y = pad, (height - th) // 2
    for key in ("TP", "FP", "FN"):
        label = FIG4_LABELS[key]
        cv2.rectangle(band, (x, y), (x + th, y + th), FIG4_COLOURS[key], -1)
        x += th + pad
        cv2.putText(band, label, (x, y + th), _FONT, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)  # fmt: skip
        x += cv2.getTextSize(label, _FONT, scale, thickness)[0][0] + 3 * pad
    return band


def _colormap(name: str) -> int:
    try:
        return COLORMAPS[name]
    except KeyError:
        choices = ", ".join(COLORMAPS)
        raise ValueError(f"colour map must be one of {choices}, got {name!r}") from None


def _font_for(side: float) -> tuple[float, int]:
    """(scale, thickness) of text about side/32 pixels high (readable from 64 to 2048 px)."""
    height = max(8.0, side / 32.0)
    scale = height / 22.0  # FONT_HERSHEY_SIMPLEX is ~22 px high at scale 1
    return scale, max(1, round(height / 12))


def _draw_legend(image: np.ndarray, entries: Sequence[tuple[Sequence[int], str]]) -> np.ndarray:
    """A key (colour swatch + label per entry) in a translucent black box, top-left."""
    out = image.copy()
    scale, thickness = _font_for(min(image.shape[:2]) * 0.8)
    (_, th), base = cv2.getTextSize("Xg", _FONT, scale, thickness)
    pad, line = max(3, th // 2), th + base + max(3, th // 2)
    text_w = max(cv2.getTextSize(label, _FONT, scale, thickness)[0][0] for _, label in entries)
    box_w, box_h = pad * 3 + th + text_w, pad * 2 + line * len(entries)
    box_w, box_h = min(box_w, out.shape[1]), min(box_h, out.shape[0])
    region = out[:box_h, :box_w].astype(np.float32)
    out[:box_h, :box_w] = (region * 0.35).astype(np.uint8)
    for k, (colour, label) in enumerate(entries):
        y = pad + k * line
        cv2.rectangle(out, (pad, y), (pad + th, y + th), tuple(int(c) for c in colour), -1)
        cv2.putText(out, label, (2 * pad + th, y + th), _FONT, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)  # fmt: skip
    return out
