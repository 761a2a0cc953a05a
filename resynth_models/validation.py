"""Stage 2's validation on the held-out shards: the focal loss and pixel AUROC / AUPR /
balanced accuracy inside each sample's field of view (as the evaluation counts them), summed
over every process."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from resynth_models.losses import focal_loss
from resynth_models.metrics import PixelMetrics
from resynth_models.runtime import Dist, to_device
from resynth_models.step import FOCAL_TAU, autocast

__all__ = ["describe_validation", "validate"]


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    dist: Dist,
    focal_tau: float = FOCAL_TAU,
    flip: bool = False,
    threshold_fpr: float = 0.0,
) -> dict[str, Any]:
    """Pixel AUROC / AUPR (and the focal loss at ``focal_tau``) on the held-out shards, inside
    each sample's field of view, with :class:`~resynth_models.metrics.PixelMetrics`.

    ``flip``: score the maps as a detector with test-time flips does (the probability averaged
    with that of the mirrored image), so that the chosen threshold fits its maps; the loss is
    the plain forward pass's. ``val_threshold``, the detector's own threshold, is where
    ``threshold_fpr`` of the normal pixels score at or above it (0: ``val_best_threshold``, where
    the balanced accuracy is best)."""
    model.eval()
    metrics = PixelMetrics()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    for batch in loader:
        images, masks = to_device(batch, device)
        with autocast(device, amp_dtype):
            logits = model(images)
        loss_sum += focal_loss(logits, masks, tau=focal_tau).double() * len(images)
        count += len(images)
        probs = torch.sigmoid(logits.float())[:, 0]
        if flip:
            with autocast(device, amp_dtype):
                mirrored = model(images.flip(-1)).flip(-1)
            probs = (probs + torch.sigmoid(mirrored.float())[:, 0]) * 0.5
        probs = probs.cpu().numpy()
        metrics.update(probs, batch["mask"].numpy(), valid=batch["fov"].numpy())
    if dist.world > 1:
        counts = torch.from_numpy(metrics.counts).to(device)
        thresholds = torch.from_numpy(metrics.threshold_counts).to(device)
        for t in (counts, thresholds, loss_sum, count):
            torch.distributed.all_reduce(t)
        metrics.counts = counts.cpu().numpy()
        metrics.threshold_counts = thresholds.cpu().numpy()
    out: dict[str, Any] = {"val_loss": float(loss_sum / count.clamp(min=1))}
    try:
        m = metrics.compute()
    except ValueError as err:  # no lesion pixels (or no normal ones) among the held-out samples
        out["val_note"] = str(err)
        return out
    if threshold_fpr > 0:
        threshold, _ = metrics.threshold_at_fpr(threshold_fpr)
    else:
        threshold = m["best_threshold"]
    out.update(
        val_threshold=threshold,
        val_auroc=m["auroc"],
        val_aupr=m["aupr"],
        val_balanced_accuracy=m["balanced_accuracy"],
        val_best_threshold=m["best_threshold"],
        val_best_balanced_accuracy=m["best_balanced_accuracy"],
        val_pixels=m["n_pixels"],
        val_lesion_pixels=m["n_lesion_pixels"],
    )
    return out


def describe_validation(stage: int, step: int, v: dict[str, Any]) -> str:
    """One line for the progress display."""
    if "val_auroc" in v:
        return (
            f"stage {stage} step {step}: validation loss {v['val_loss']:.4g}, pixel AUROC "
            f"{v['val_auroc']:.4f}, AUPR {v['val_aupr']:.4f}"
        )
    return f"stage {stage} step {step}: validation loss {v['val_loss']:.4g} ({v['val_note']})"
