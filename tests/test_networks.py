"""Tests of resynth_models.networks: shapes, the F_c^i wiring, the frozen E_r, the Table 3 modes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from anomalygen.config import from_dict, to_dict  # noqa: E402
from anomalygen.errors import ConfigError  # noqa: E402
from resynth_models.losses import focal_loss  # noqa: E402
from resynth_models.networks import (  # noqa: E402
    PRESETS,
    LocalizationNet,
    NetworkConfig,
    ReconstructionNet,
    ReSynthDetect,
    build_model,
    check_input_size,
    level_channels,
    reconstruction_error_map,
)


def tiny(rec_features: str = "trained", depth: int = 3, width: int = 4, **kw) -> NetworkConfig:
    return NetworkConfig(
        rec_width=width,
        rec_depth=depth,
        loc_width=width,
        loc_depth=depth,
        rec_features=rec_features,
        **kw,
    )


def make(config: NetworkConfig, seed: int = 0) -> ReSynthDetect:
    torch.manual_seed(seed)
    return build_model(config)


def images(b: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def perturb_(module: torch.nn.Module, seed: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


# --- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, width, size", [(2, 4, 64), (3, 8, 64), (4, 4, 96), (4, 6, 128)])
def test_reconstruction_net_shapes(depth: int, width: int, size: int) -> None:
    net = ReconstructionNet(width, depth)
    x = images(2, size)
    feats = net.encoder(x)
    assert len(feats) == depth == net.depth
    assert net.channels == level_channels(width, depth)
    for i, f in enumerate(feats):  # level i+1 at stride 2**i
        assert f.shape == (2, net.channels[i], size >> i, size >> i)
    recon = net(x)
    assert recon.shape == x.shape
    assert recon.min() >= 0 and recon.max() <= 1  # sigmoid output


def test_level_channels_double_up_to_8x() -> None:
    assert level_channels(16, 6) == (16, 32, 64, 128, 128, 128)
    assert level_channels(4, 1) == (4,)


@pytest.mark.parametrize("mode", ["trained", "random", "none", "image"])
@pytest.mark.parametrize("depth, width", [(2, 4), (3, 8), (4, 4)])
def test_detector_logits_shape(mode: str, depth: int, width: int) -> None:
    model = make(tiny(mode, depth, width))
    x = images(2, 64)
    logits = model(x)
    assert logits.shape == (2, 1, 64, 64)
    probs = model.anomaly_map(x)
    assert probs.shape == (2, 64, 64)
    assert torch.allclose(probs, torch.sigmoid(logits.detach())[:, 0])


def test_loc_depth_may_differ_without_feature_concat() -> None:
    cfg = NetworkConfig(rec_width=4, rec_depth=2, loc_width=4, loc_depth=4, rec_features="image")
    assert make(cfg)(images(1, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_run(name: str) -> None:
    model = build_model(name).eval()
    size = max(64, PRESETS[name].size_multiple)
    assert model.anomaly_map(images(1, size)).shape == (1, size, size)
    assert build_model(PRESETS[name]).config == PRESETS[name]


def test_channels_last_gives_the_same_logits() -> None:
    model = make(tiny("trained", 3, 8)).eval()
    x = images(2, 64)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.to(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-5)


# --- F_c^i = concat(F_r^i, F_l^i) wiring ------------------------------------------------------


def test_concatenated_channels_at_every_level() -> None:
    model = make(tiny("trained", 4, 4)).eval()
    rec_c = model.rec_net.channels
    loc_c = level_channels(4, 4)
    assert model.loc_net.channels == tuple(r + c for r, c in zip(rec_c, loc_c, strict=True))

    seen_in: dict[str, int] = {}
    hooks = []
    for i, block in enumerate(model.loc_net.encoder.blocks):
        hooks.append(
            block.register_forward_pre_hook(
                lambda m, a, i=i: seen_in.__setitem__(f"enc{i}", a[0].shape[1])
            )
        )
    for k, block in enumerate(model.loc_net.decoder.blocks):
        hooks.append(
            block.register_forward_pre_hook(
                lambda m, a, k=k: seen_in.__setitem__(f"dec{k}", a[0].shape[1])
            )
        )
    model(images(1, 64))
    for h in hooks:
        h.remove()
    # E_l's level i+1 is computed from the pooled F_c^i (rec + loc channels) ...
    assert seen_in["enc0"] == 3
    for i in range(1, 4):
        assert seen_in[f"enc{i}"] == rec_c[i - 1] + loc_c[i - 1]
    # ... and D_l's block at level i gets its upsampled input plus the skip F_c^i.
    for k, level in enumerate(reversed(range(3))):
        assert seen_in[f"dec{k}"] == loc_c[level] + rec_c[level] + loc_c[level]


def test_encoder_features_start_with_the_exact_rec_features() -> None:
    model = make(tiny("trained", 3, 4)).eval()
    x = images(1, 64)
    f_r = model.rec_net.encoder(x)
    f_c = model.loc_net.encoder(x, f_r)
    for r, c in zip(f_r, f_c, strict=True):
        assert c.shape[1] == 2 * r.shape[1]  # rec + loc channels (same widths here)
        assert torch.equal(c[:, : r.shape[1]], r)


def test_output_depends_on_rec_features_at_every_level() -> None:
    """Fails if LocalizationNet ignores E_r's feature of any level."""
    model = make(tiny("trained", 4, 4)).eval()
    x = images(1, 64)
    feats = model.rec_net.encoder(x)
    ref = model.loc_net(x, feats)
    for i in range(len(feats)):
        changed = list(feats)
        changed[i] = feats[i] + 1.0
        out = model.loc_net(x, changed)
        assert (out - ref).abs().max() > 1e-4, f"F_r^{i + 1} has no effect on the output"


@pytest.mark.parametrize("mode, depends", [("trained", True), ("random", True), ("none", False)])
def test_output_depends_on_E_r_weights_exactly_when_features_are_used(
    mode: str, depends: bool
) -> None:
    model = make(tiny(mode, 3, 4)).eval()
    x = images(2, 64)
    ref = model(x)
    perturb_(model.rec_net.encoder)
    out = model(x)
    if depends:
        assert (out - ref).abs().max() > 1e-4
    else:
        assert torch.equal(out, ref)


def test_none_mode_is_a_plain_unet_on_the_image() -> None:
    model = make(tiny("none", 3, 4)).eval()
    assert model.loc_net.channels == level_channels(4, 3)
    x = images(1, 64)
    assert torch.equal(model(x), model.loc_net(x))


def test_image_mode_feeds_input_and_reconstruction() -> None:
    model = make(tiny("image", 3, 4)).eval()
    x = images(2, 64)
    captured = {}
    hook = model.loc_net.register_forward_pre_hook(lambda m, a: captured.setdefault("in", a[0]))
    ref = model(x)
    hook.remove()
    assert captured["in"].shape == (2, 6, 64, 64)
    assert torch.equal(captured["in"][:, :3], x)
    assert torch.allclose(captured["in"][:, 3:], model.rec_net(x))
    perturb_(model.rec_net.decoder)  # D_r's output is used
    assert (model(x) - ref).abs().max() > 1e-4


def test_loc_net_rejects_missing_or_extra_features() -> None:
    net = LocalizationNet(width=4, depth=3, rec_channels=level_channels(4, 3))
    with pytest.raises(ValueError, match="E_r's features"):
        net(images(1, 64))
    plain = LocalizationNet(width=4, depth=3)
    with pytest.raises(ValueError, match="E_r's features"):
        plain(images(1, 64), [torch.zeros(1)] * 3)


# --- frozen E_r -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["trained", "image"])
def test_rec_net_frozen_through_a_training_step(mode: str) -> None:
    model = make(tiny(mode, 3, 4, norm="batch"))  # BatchNorm: running stats must not move either
    before = {k: v.clone() for k, v in model.rec_net.state_dict().items()}
    loc_before = {k: v.clone() for k, v in model.loc_net.state_dict().items()}
    assert all(not p.requires_grad for p in model.rec_net.parameters())
    trainable = list(model.trainable_parameters())
    assert {id(p) for p in trainable} == {id(p) for p in model.loc_net.parameters()}

    model.train()
    opt = torch.optim.Adam(trainable, lr=1e-2)
    x = images(2, 64)
    mask = (torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3)) > 0.9).float()
    for _ in range(2):
        opt.zero_grad()
        focal_loss(model(x), mask).backward()
        opt.step()

    after = model.rec_net.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"rec_net.{k} changed"
    assert all(p.grad is None for p in model.rec_net.parameters())
    assert any(not torch.equal(v, model.loc_net.state_dict()[k]) for k, v in loc_before.items())


def test_rec_net_stays_in_eval_mode() -> None:
    model = make(tiny("trained", 3, 4, norm="batch"))
    model.train()
    assert model.training and model.loc_net.training
    assert not any(m.training for m in model.rec_net.modules())
    model.eval()
    assert not model.loc_net.training
    model.train(True)
    assert not any(m.training for m in model.rec_net.modules())


def test_rec_net_loads_stage1_weights_and_stays_frozen() -> None:
    cfg = tiny("trained", 3, 4)
    stage1 = ReconstructionNet(cfg.rec_width, cfg.rec_depth, cfg.norm)
    model = make(cfg, seed=5)
    model.rec_net.load_state_dict(stage1.state_dict())
    x = images(1, 64)
    assert torch.equal(model.rec_net.encoder(x)[0], stage1.encoder(x)[0])
    assert all(not p.requires_grad for p in model.rec_net.parameters())


def test_overfits_a_tiny_batch() -> None:
    """A few dozen Adam steps on the localisation network halve the focal loss on a fixed batch."""
    torch.manual_seed(0)
    model = build_model(tiny("trained", 3, 8)).train()
    x = images(2, 64, seed=2) * 0.3
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 10:26, 20:40] = 1
    mask[1, :, 40:56, 8:20] = 1
    x = x + 0.5 * mask  # bright "lesions"
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = focal_loss(model(x), mask)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# --- reconstruction error (Table 3, row 1) ----------------------------------------------------


def test_reconstruction_error_map() -> None:
    torch.manual_seed(0)
    net = ReconstructionNet(4, 3).eval()
    x = images(2, 64)
    err = reconstruction_error_map(net, x)
    assert err.shape == (2, 64, 64) and err.dtype == torch.float32
    assert torch.allclose(err, ((net(x) - x) ** 2).mean(1))
    smooth = reconstruction_error_map(net, x, sigma=2.0)
    assert smooth.shape == err.shape
    assert smooth.std() < err.std()  # blurred
    assert torch.allclose(smooth.mean(), err.mean(), rtol=0.05)  # mass roughly kept
    with pytest.raises(ValueError, match="sigma"):
        reconstruction_error_map(net, x, sigma=-1)


# --- configuration and validation -------------------------------------------------------------


def test_input_size_must_fit_the_depth() -> None:
    model = make(tiny("trained", 4, 4))
    with pytest.raises(ValueError, match=r"multiples of 8"):
        model(torch.rand(1, 3, 100, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        check_input_size(768, 760, 6)
    check_input_size(768, 768, 6)
    assert PRESETS["default"].size_multiple == 32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rec_depth": 4, "loc_depth": 3}, "loc_depth"),
        ({"rec_width": 2}, "rec_width"),
        ({"loc_width": 8.0}, "loc_width"),
        ({"rec_depth": 0}, "rec_depth"),
        ({"rec_features": "pretrained"}, "rec_features"),
        ({"norm": "layer"}, "norm"),
        ({"head_prior": 1.0}, "head_prior"),
    ],
)
def test_invalid_configs_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**kwargs)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown network preset 'huge'"):
        build_model("huge")


def test_config_round_trips_through_json_dicts() -> None:
    cfg = NetworkConfig(rec_width=8, rec_depth=3, loc_width=4, loc_depth=3, rec_features="random")
    assert from_dict(NetworkConfig, to_dict(cfg)) == cfg
    assert not cfg.needs_stage1 and cfg.concat_features
    assert PRESETS["default"].needs_stage1


def test_head_starts_at_the_prior() -> None:
    model = make(tiny("none", 3, 4, head_prior=0.05))
    bias = model.loc_net.decoder.head.bias
    assert torch.allclose(torch.sigmoid(bias), torch.tensor([0.05]))


def test_logits_are_float32_under_bf16_autocast() -> None:
    """bf16 logits would tie most pixel scores; the 1x1 head runs in float32."""
    config = NetworkConfig(rec_width=4, rec_depth=2, loc_width=4, loc_depth=2)
    model = build_model(config).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        recon = model.rec_net(x)
    assert logits.dtype == torch.float32 and recon.dtype == torch.float32


def test_local_contrast_input() -> None:
    from resynth_models.networks import local_contrast

    x = torch.zeros(1, 3, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc = ((yy - 31.5) ** 2 + (xx - 31.5) ** 2) <= 28**2
    x[:, :, disc] = torch.tensor([0.6, 0.3, 0.1])[:, None]
    spot = ((yy - 30) ** 2 + (xx - 36) ** 2) <= 9
    x[:, 1, spot] = 0.1  # a dark spot in green
    lc = local_contrast(x, sigma=4.0)
    assert lc.shape == x.shape
    assert (lc[:, :, ~disc] == 0).all()  # outside the field of view: nothing
    flat = disc & ~(((yy - 30) ** 2 + (xx - 36) ** 2) <= 15**2)
    assert lc[:, :, flat].abs().max() < 0.02  # a flat retina, rim included: about 0
    assert lc[0, 1, 30, 36] < -0.5  # the spot stands out, x4
    config = NetworkConfig(
        rec_width=4, rec_depth=3, loc_width=4, loc_depth=3, local_contrast=(1 / 16,)
    )
    model = build_model(config)
    assert model.loc_net.encoder.in_channels == 6
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 1, 32, 32)
    image_mode = NetworkConfig(**{**config.__dict__, "rec_features": "image"})
    assert build_model(image_mode).loc_net.encoder.in_channels == 9
    with pytest.raises(ConfigError, match="local_contrast"):
        NetworkConfig(local_contrast=(0.9,))
