"""Stage 2's validation: its metrics are PixelMetrics' on the held-out maps, and with test-time
flips they are those of the flip-averaged maps (so that the chosen threshold fits them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resynth_models.metrics import PixelMetrics
from resynth_models.runtime import Dist
from resynth_models.validation import validate

SIZE = 16


def _batches(seed: int = 0, n: int = 3, batch: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        image = torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
        mask = (torch.rand(batch, SIZE, SIZE, generator=g) < 0.2).to(torch.uint8)
        fov = torch.ones(batch, SIZE, SIZE, dtype=torch.uint8)
        fov[:, :, :2] = 0  # the FOV counts, not the whole square
        out.append({"image": image, "mask": mask, "fov": fov})
    return out


def _expected(model: torch.nn.Module, batches: list[dict], flip: bool) -> dict[str, float]:
    metrics = PixelMetrics()
    with torch.no_grad():
        for b in batches:
            x = b["image"].float() / 255.0
            p = torch.sigmoid(model(x))[:, 0]
            if flip:
                p = (p + torch.sigmoid(model(x.flip(-1)).flip(-1))[:, 0]) / 2
            metrics.update(p.numpy(), b["mask"].numpy(), valid=b["fov"].numpy())
    return metrics.compute()


@pytest.mark.parametrize("flip", [False, True])
def test_validation_scores_the_maps_the_detector_scores(flip: bool) -> None:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 5, padding=2)  # not mirror-symmetric: flips change the map
    batches = _batches()
    got = validate(model, batches, torch.device("cpu"), None, Dist(), flip=flip)
    want = _expected(model, batches, flip)
    assert got["val_auroc"] == pytest.approx(want["auroc"], abs=1e-6)
    assert got["val_aupr"] == pytest.approx(want["aupr"], abs=1e-6)
    assert got["val_best_threshold"] == pytest.approx(want["best_threshold"], abs=1e-6)
    other = validate(model, batches, torch.device("cpu"), None, Dist(), flip=not flip)
    assert other["val_aupr"] != got["val_aupr"]  # the flips are really applied (or not)
    assert np.isfinite(got["val_loss"])


def test_threshold_at_a_false_positive_rate() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random(20_000).astype(np.float32) ** 3
    truth = rng.random(20_000) < 0.1
    metrics = PixelMetrics()
    metrics.update(probs, truth)
    normal = probs[~truth]
    for fpr in (0.0, 0.05, 0.2, 0.5, 1.0):
        t, got = metrics.threshold_at_fpr(fpr)
        share = float(np.mean(normal >= np.float32(t)))
        assert share == pytest.approx(got) and share <= fpr
        below = normal[normal < np.float32(t)]  # the next lower score would pass too many
        if below.size:
            assert float(np.mean(normal >= below.max())) > fpr
    with pytest.raises(ValueError, match="false-positive rate"):
        metrics.threshold_at_fpr(1.5)


def test_validation_threshold_follows_the_rule() -> None:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 5, padding=2)
    batches = _batches()
    best = validate(model, batches, torch.device("cpu"), None, Dist())
    assert best["val_threshold"] == best["val_best_threshold"]
    at = validate(model, batches, torch.device("cpu"), None, Dist(), threshold_fpr=0.2)
    metrics = PixelMetrics()
    with torch.no_grad():
        for b in batches:
            p = torch.sigmoid(model(b["image"].float() / 255.0))[:, 0].numpy()
            metrics.update(p, b["mask"].numpy(), valid=b["fov"].numpy())
    assert at["val_threshold"] == metrics.threshold_at_fpr(0.2)[0]
