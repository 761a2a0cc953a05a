"""Tests of resynth_models.losses: the focal loss of Eq. 2 and the L2 loss of Eq. 1."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from resynth_models.losses import focal_loss, reconstruction_loss  # noqa: E402


def logits_and_mask(shape=(2, 1, 8, 8), scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    m = (torch.rand(shape, generator=g) > 0.7).double()
    return z, m


def direct_focal(z: torch.Tensor, m: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 2 written in probability space, as in the paper."""
    p = torch.sigmoid(z)
    return torch.where(m == 1, -((1 - p) ** tau) * torch.log(p), -(p**tau) * torch.log(1 - p))


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0, 3.0])
def test_focal_matches_eq2(tau: float) -> None:
    z, m = logits_and_mask()
    per_pixel = focal_loss(z, m, tau=tau, reduction="none")
    expected = direct_focal(z, m, tau).float()
    assert per_pixel.shape == z.shape
    assert torch.allclose(per_pixel, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(focal_loss(z, m, tau=tau), expected.mean(), rtol=1e-5)
    assert torch.allclose(focal_loss(z, m, tau=tau, reduction="sum"), expected.sum(), rtol=1e-5)


def test_focal_default_tau_is_2() -> None:
    z, m = logits_and_mask()
    assert torch.equal(focal_loss(z, m), focal_loss(z, m, tau=2.0))


def test_tau_0_is_bce_with_logits() -> None:
    z, m = logits_and_mask(scale=5.0)
    bce = torch.nn.BCEWithLogitsLoss()(z.float(), m.float())
    assert torch.allclose(focal_loss(z, m, tau=0.0), bce, rtol=1e-6)


@pytest.mark.parametrize("tau", [0.0, 2.0])
def test_focal_finite_for_extreme_logits(tau: float) -> None:
    z = torch.tensor([100.0, -100.0, 100.0, -100.0, 0.0], requires_grad=True)
    m = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    loss = focal_loss(z, m, tau=tau, reduction="none")
    assert torch.isfinite(loss).all()
    # confident and right: ~0; confident and wrong: ~100 (the log-sigmoid of -100)
    assert loss[0] < 1e-30 and loss[1] < 1e-30
    assert torch.allclose(loss[2:4], torch.tensor([100.0, 100.0]), rtol=1e-4)
    loss.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_focal_down_weights_easy_pixels() -> None:
    z = torch.tensor([3.0, -3.0])  # easy: right and confident
    m = torch.tensor([1.0, 0.0])
    assert (focal_loss(z, m, reduction="none") < 0.01 * focal_loss(z, m, 0.0, "none")).all()


def test_focal_accepts_masks_without_channel_axis_and_uint8() -> None:
    z, m = logits_and_mask()
    ref = focal_loss(z, m)
    assert torch.equal(focal_loss(z, m[:, 0]), ref)
    assert torch.allclose(focal_loss(z, m.to(torch.uint8)), ref)


def test_focal_computes_in_float32_under_bf16() -> None:
    z, m = logits_and_mask()
    loss = focal_loss(z.bfloat16(), m)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, focal_loss(z.bfloat16().float(), m))


def test_focal_alpha_option() -> None:
    z, m = logits_and_mask()
    plain = focal_loss(z, m, reduction="none")
    weighted = focal_loss(z, m, reduction="none", alpha=0.25)
    expected = torch.where(m == 1, 0.25 * plain, 0.75 * plain)
    assert torch.allclose(weighted, expected.float())


@pytest.mark.parametrize(
    "kwargs, message",
    [({"tau": -1.0}, "tau"), ({"alpha": 1.5}, "alpha"), ({"reduction": "avg"}, "reduction")],
)
def test_focal_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    z, m = logits_and_mask()
    with pytest.raises(ValueError, match=message):
        focal_loss(z, m, **kwargs)
    with pytest.raises(ValueError, match="does not match"):
        focal_loss(z, m[:, :, :4])


def test_reconstruction_loss_is_mean_squared_error() -> None:
    g = torch.Generator().manual_seed(0)
    recon, image = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    diff2 = (recon - image) ** 2
    assert torch.allclose(reconstruction_loss(recon, image), diff2.mean())
    assert torch.allclose(reconstruction_loss(recon, image, reduction="sum"), diff2.sum())  # Eq. 1
    assert reconstruction_loss(image, image) == 0
    assert reconstruction_loss(recon.bfloat16(), image).dtype == torch.float32
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_loss(recon[:, :1], image)
    with pytest.raises(ValueError, match="reduction"):
        reconstruction_loss(recon, image, reduction="max")
