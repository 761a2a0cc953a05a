"""The ReSynthDetect networks (paper sections 3.1 and 3.2, Fig. 2).

- :class:`ReconstructionNet`: the stage-1 autoencoder, encoder E_r and decoder D_r, WITHOUT skip
  connections (a U-Net with skips could copy its input and learn nothing about normal fundi).
- :class:`LocalizationNet`: the stage-2 U-shaped network, encoder E_l and decoder D_l with skips.
  At every level i the frozen E_r's feature F_r^i is concatenated with E_l's own F_l^i, and
  F_c^i = concat(F_r^i, F_l^i) feeds both the next level of E_l and the skip of D_l at level i.
- :class:`ReSynthDetect`: frozen E_r (and D_r for the "image" ablation) plus the localisation
  network; ``forward(x)`` returns anomaly logits.

Shapes: images are float (B, 3, H, W) in [0, 1]. Level i (1..depth) runs at stride 2**(i-1), so H
and W must be multiples of 2**(depth-1) (:func:`check_input_size`). Level i has
``width * 2**min(i-1, 3)`` channels: doubling per level up to 8x the base width, as DRAEM's
encoders do. Each level is two 3x3 convolutions, each followed by a normalisation and ReLU; levels
are joined by 2x2 max-pooling on the way down and bilinear x2 upsampling + 3x3 convolution on the
way up (DRAEM's layout; plain ops only, channels-last friendly).

Normalisation defaults to GroupNorm: at 768x768 a GPU holds 1-8 images per step, where BatchNorm's
batch statistics are noisy; GroupNorm also behaves the same in train and eval mode (no running
statistics), so the frozen E_r and DDP need no special care. ``norm="batch"`` is kept for DRAEM
parity.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anomalygen.errors import ConfigError
from anomalygen.store.format import MAX_SIZE

REC_FEATURES = ("trained", "random", "none", "image")  # the rows of the paper's Table 3
NORMS = ("group", "batch", "instance")
MAX_MULT_LOG2 = 3  # channel multiplier doubles per level up to 8x (DRAEM's encoders)
#: Widest first level accepted (ours: 8x our default of 32, twice DRAEM's 128; 2,048 channels at
#: the deepest levels). A config.json asking for more is damaged or hostile: it would try to
#: allocate terabytes.
MAX_WIDTH = 256
#: Largest image side a network trains on or scores at (px): the store's own bound.
MAX_SIDE = MAX_SIZE


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of both stages. The paper gives no widths or depths; the defaults are ours.

    Defaults target a GPU at 768x768 (the paper's input size). Depth 6 gives a bottleneck at
    stride 32 (24x24 at 768); the convolutional receptive field of an output pixel is 508 px (284
    px for F_r^6), enough to see the optic disc and vessel context around a lesion (depth 4: 124
    px; measured by back-propagating from one output pixel). Widths 32: a 3x3 convolution at
    width w costs H*W * w**2 * 18 flops at every level (channels double as pixels quarter), so
    w = 32 at 768 px costs about twice DRAEM's discriminative w = 64 at 256 px and half its
    reconstructive w = 128 (DRAEM: 128 and 64 at 256x256).
    """

    rec_width: int = 32  # E_r/D_r channels at level 1 (ours; DRAEM: 128 at 256 px)
    rec_depth: int = 6  # levels of E_r, level i at stride 2**(i-1) (ours, for 768 px)
    loc_width: int = 32  # E_l/D_l channels at level 1 (ours; DRAEM: 64 at 256 px)
    loc_depth: int = 6  # must equal rec_depth when features are concatenated (F_c^i per level)
    rec_features: str = "trained"  # Table 3: "trained" (paper) | "random" | "none" | "image"
    norm: str = "group"  # "group" (ours, small batches) | "batch" (DRAEM) | "instance"
    head_prior: float = 0.01  # D_l's initial anomaly probability (RetinaNet's focal-loss init)
    # Ours: E_l also sees the image's local contrast (:func:`local_contrast`: the image minus
    # its Gaussian-blurred background inside the field of view, x4), 3 channels per scale; ()
    # = off (the paper's). Each value is a blur sigma as a fraction of the image side. Lesions
    # are local departures from the background; handing E_l that difference makes them visible
    # from its first layer and removes the photograph's overall illumination (Graham's preprocessing
    # for diabetic retinopathy, Kaggle 2015, uses the same difference at sigma = radius / 30).
    local_contrast: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("rec_width", "loc_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 4:
                raise ConfigError(f"NetworkConfig.{name}: must be an integer >= 4, got {value!r}")
            if value > MAX_WIDTH:
                raise ConfigError(f"NetworkConfig.{name}: must be at most {MAX_WIDTH}, got {value}")
        for name in ("rec_depth", "loc_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
                raise ConfigError(f"NetworkConfig.{name}: must be an integer 1..8, got {value!r}")
        if self.rec_features not in REC_FEATURES:
            raise ConfigError(
                f"NetworkConfig.rec_features: must be one of {', '.join(REC_FEATURES)}, "
                f"got {self.rec_features!r}"
            )
        if self.norm not in NORMS:
            raise ConfigError(
                f"NetworkConfig.norm: must be one of {', '.join(NORMS)}, got {self.norm!r}"
            )
        if self.concat_features and self.loc_depth != self.rec_depth:
            raise ConfigError(
                f"NetworkConfig: loc_depth ({self.loc_depth}) must equal rec_depth "
                f"({self.rec_depth}) when rec_features={self.rec_features!r}: "
                "F_c^i = concat(F_r^i, F_l^i) needs one E_r feature per E_l level"
            )
        if isinstance(self.local_contrast, int | float):
            object.__setattr__(
                self, "local_contrast", (self.local_contrast,) if self.local_contrast else ()
            )
        object.__setattr__(self, "local_contrast", tuple(float(v) for v in self.local_contrast))
        if not all(0.0 < v <= 0.5 for v in self.local_contrast):
            raise ConfigError(
                "NetworkConfig.local_contrast: each scale must be in (0, 0.5] (a fraction of the "
                f"side), got {self.local_contrast}"
            )
        if not 0.0 < self.head_prior < 1.0:
            raise ConfigError(f"NetworkConfig.head_prior: must be in (0, 1), got {self.head_prior}")

    @property
    def concat_features(self) -> bool:
        """Whether E_r's features are concatenated into E_l (the "trained" and "random" rows)."""
        return self.rec_features in ("trained", "random")

    @property
    def needs_stage1(self) -> bool:
        """Whether stage 2 needs the stage-1 weights ("trained" features, or "image")."""
        return self.rec_features in ("trained", "image")

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (2**(depth-1) of the deeper network)."""
        return 2 ** (max(self.rec_depth, self.loc_depth) - 1)


#: Local-contrast scales of our presets (fractions of the side): 8 px and 26 px at 256 px. One
#: scale at 1/32 raised real-lesion AUPR on idrid-512 from 0.116 to 0.186 after 2,000 samples,
#: the second scale to 0.236 (benchmarks/bench_detect.py, README "What the CPU preset learns").
LOCAL_CONTRAST = (1 / 32, 0.1)

PRESETS: dict[str, NetworkConfig] = {
    # GPU at 768x768 (the paper's size); see NetworkConfig's docstring. Ours: with the local
    # contrast, which helps at every size we measured (256 px) and costs 2% of a step.
    "default": NetworkConfig(local_contrast=LOCAL_CONTRAST),
    # The paper's network (section 3.2; widths and depth are ours, the paper gives none).
    "paper": NetworkConfig(),
    # A 2-core CPU at 256x256: depth 4 (32x32 bottleneck, 124 px receptive field) and width 16.
    # Measured 78 ms (stage 1) and 114 ms (stage 2) per sample forward+backward at 256 px,
    # batch 4, channels-last, on the 2-core dev machine (default preset: ~2.6 s).
    "small": NetworkConfig(
        rec_width=16, rec_depth=4, loc_width=16, loc_depth=4, local_contrast=LOCAL_CONTRAST
    ),
}


def level_channels(width: int, depth: int) -> tuple[int, ...]:
    """Channels of levels 1..depth: ``width * 2**min(i-1, 3)``."""
    return tuple(width * 2 ** min(i, MAX_MULT_LOG2) for i in range(depth))


def check_input_size(height: int, width: int, depth: int) -> None:
    """Raise ConfigError unless an image of ``height`` x ``width`` fits a network of ``depth``."""
    if max(height, width) > MAX_SIDE:
        raise ConfigError(
            f"image size {height}x{width}: larger than {MAX_SIDE} px, the largest side a "
            "network trains on or scores at"
        )
    multiple = 2 ** (depth - 1)
    if height % multiple or width % multiple:
        raise ConfigError(
            f"image size {height}x{width}: height and width must be multiples of {multiple} "
            f"(2**(depth-1) for a network of depth {depth}); resize or crop, e.g. to 256 or 768"
        )


def _check_images(x: torch.Tensor, channels: int, depth: int) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise ConfigError(f"expected images of shape (B, {channels}, H, W), got {tuple(x.shape)}")
    check_input_size(x.shape[2], x.shape[3], depth)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)  # one group per channel == InstanceNorm, affine
    # Groups of at least 4 channels, at most 32 groups (Wu & He 2018 found 32 groups robust).
    return nn.GroupNorm(math.gcd(channels, min(32, max(1, channels // 4))), channels)


def _conv_norm_act(c_in: int, c_out: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), _norm(norm, c_out), nn.ReLU(True)]


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, norm, ReLU): the unit of every level."""

    def __init__(self, c_in: int, c_out: int, norm: str = "group") -> None:
        super().__init__(*_conv_norm_act(c_in, c_out, norm), *_conv_norm_act(c_out, c_out, norm))


class Up(nn.Sequential):
    """x2 bilinear upsampling then (3x3 conv, norm, ReLU); avoids transposed-conv checkerboards."""

    def __init__(self, c_in: int, c_out: int, norm: str = "group") -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            *_conv_norm_act(c_in, c_out, norm),
        )


class Encoder(nn.Module):
    """E_r or E_l: returns the per-level features, level i at stride 2**(i-1).

    With ``guide_channels`` (E_l), ``forward(x, guide)`` concatenates the guide feature F_r^i
    before its own F_l^i at every level and returns F_c^i = concat(F_r^i, F_l^i); the next level
    is computed from the max-pooled F_c^i.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        norm: str = "group",
        guide_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        guide = tuple(guide_channels) if guide_channels is not None else (0,) * len(channels)
        if len(guide) != len(channels):
            raise ConfigError(f"guide has {len(guide)} levels, the encoder {len(channels)}")
        self.in_channels = in_channels
        self.guide_channels = guide if guide_channels is not None else None
        self.blocks = nn.ModuleList()
        c_in = in_channels
        for c, g in zip(channels, guide, strict=True):
            self.blocks.append(ConvBlock(c_in, c, norm))
            c_in = c + g
        self.out_channels = tuple(c + g for c, g in zip(channels, guide, strict=True))

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def forward(
        self, x: torch.Tensor, guide: Sequence[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        _check_images(x, self.in_channels, self.depth)
        if (guide is None) != (self.guide_channels is None):
            raise ValueError("pass E_r's features exactly when the encoder was built for them")
        if guide is not None and len(guide) != self.depth:
            raise ValueError(f"expected {self.depth} guide features, got {len(guide)}")
        features = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            if guide is not None:
                x = torch.cat([guide[i].to(x.dtype), x], dim=1)  # F_c^i = concat(F_r^i, F_l^i)
            features.append(x)
        return features


class Decoder(nn.Module):
    """D_r or D_l: from the deepest feature back to stride 1, then a 1x1 head.

    ``feature_channels`` are the encoder's per-level output channels. With ``skips`` (D_l, a
    U-Net), level i concatenates the encoder's feature of level i after upsampling; without (D_r)
    only the deepest feature is used.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        channels: Sequence[int],
        out_channels: int,
        skips: bool,
        norm: str = "group",
    ) -> None:
        super().__init__()
        self.skips = skips
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        c_in = feature_channels[-1]
        for level in reversed(range(len(channels) - 1)):
            c = channels[level]
            self.ups.append(Up(c_in, c, norm))
            self.blocks.append(ConvBlock(c + (feature_channels[level] if skips else 0), c, norm))
            c_in = c
        self.head = nn.Conv2d(c_in, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for k, (up, block) in enumerate(zip(self.ups, self.blocks, strict=True)):
            x = up(x)
            if self.skips:
                x = torch.cat([features[-2 - k], x], dim=1)
            x = block(x)
        # The 1x1 head runs in float32 even under autocast: bf16 logits keep 8 significant bits
        # (a step of 0.06 at |logit| = 10), which would tie millions of pixel scores.
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())


class ReconstructionNet(nn.Module):
    """Stage 1 (paper 3.1): autoencoder E_r -> D_r, no skips; ``forward(x)`` = D_r(E_r(x)).

    ``encoder(x)`` returns [F_r^1 .. F_r^depth]; D_r decodes F_r^depth alone to an image in [0, 1]
    (sigmoid output). Trained with Eq. 1 (:func:`resynth_models.losses.reconstruction_loss`).
    """

    def __init__(self, width: int = 32, depth: int = 6, norm: str = "group") -> None:
        super().__init__()
        channels = level_channels(width, depth)
        self.encoder = Encoder(3, channels, norm)
        self.decoder = Decoder(channels, channels, 3, skips=False, norm=norm)

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of F_r^1 .. F_r^depth."""
        return self.encoder.out_channels

    @property
    def depth(self) -> int:
        return self.encoder.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x)))


class LocalizationNet(nn.Module):
    """Stage 2 (paper 3.2): U-Net E_l/D_l; ``forward(x, rec_features) -> logits (B, 1, H, W)``.

    With ``rec_channels`` (the per-level channels of E_r), ``rec_features`` = [F_r^1 .. F_r^depth]
    must be given and F_c^i = concat(F_r^i, F_l^i) feeds E_l's next level and D_l's skip at level
    i. Without, it is a plain U-Net (the "none" and "image" rows of Table 3).
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 32,
        depth: int = 6,
        rec_channels: Sequence[int] | None = None,
        norm: str = "group",
        head_prior: float = 0.01,
    ) -> None:
        super().__init__()
        channels = level_channels(width, depth)
        self.encoder = Encoder(in_channels, channels, norm, guide_channels=rec_channels)
        self.decoder = Decoder(self.encoder.out_channels, channels, 1, skips=True, norm=norm)
        # Start at p = head_prior everywhere so the many normal pixels do not swamp the first
        # focal-loss steps (Lin et al. 2017, "Focal loss for dense object detection", 4.1).
        nn.init.constant_(self.decoder.head.bias, -math.log((1 - head_prior) / head_prior))

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of F_c^1 .. F_c^depth (F_l^i alone without reconstruction features)."""
        return self.encoder.out_channels

    def forward(
        self, x: torch.Tensor, rec_features: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        return self.decoder(self.encoder(x, rec_features))


class ReSynthDetect(nn.Module):
    """The detector: frozen ReconstructionNet + trainable LocalizationNet; ``forward`` -> logits.

    ``config.rec_features`` selects the row of the paper's Table 3:
    "trained" (E_r from stage 1; load it into ``rec_net``), "random" (E_r randomly initialised by
    torch's RNG, never trained), "none" (``rec_net`` is held but unused), "image" (DRAEM-style:
    concat(x, D_r(E_r(x))) as a 6-channel input, no feature concatenation).

    The reconstruction network is frozen: its parameters have ``requires_grad=False``, it runs
    under ``torch.no_grad`` and stays in eval mode even after ``.train()``. Optimise only
    :meth:`trainable_parameters`.
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else NetworkConfig()
        self.rec_net = ReconstructionNet(config.rec_width, config.rec_depth, config.norm)
        self.loc_net = LocalizationNet(
            in_channels=3 * (1 + (config.rec_features == "image") + len(config.local_contrast)),
            width=config.loc_width,
            depth=config.loc_depth,
            rec_channels=self.rec_net.channels if config.concat_features else None,
            norm=config.norm,
            head_prior=config.head_prior,
        )
        self.rec_net.requires_grad_(False)
        self.rec_net.eval()

    def train(self, mode: bool = True) -> ReSynthDetect:
        super().train(mode)
        self.rec_net.eval()  # frozen: BatchNorm running statistics must never move
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The localisation network's parameters (E_r and D_r are frozen)."""
        return self.loc_net.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, 3, max(self.config.rec_depth, self.config.loc_depth))
        mode = self.config.rec_features
        extra = []
        for scale in self.config.local_contrast:
            extra.append(local_contrast(x.float(), scale * x.shape[-1]).to(x.dtype))
        if mode == "none":
            return self.loc_net(torch.cat([x, *extra], dim=1) if extra else x)
        with torch.no_grad():
            if mode == "image":
                guide = None
                extra.insert(0, self.rec_net(x).to(x.dtype))
            else:
                guide = self.rec_net.encoder(x)
        return self.loc_net(torch.cat([x, *extra], dim=1) if extra else x, guide)

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly probabilities (B, H, W) in [0, 1] = sigmoid(logits). Call ``.eval()`` first
        where ``norm="batch"``; with GroupNorm train and eval mode give the same result."""
        return torch.sigmoid(self(x).float())[:, 0]


def build_model(config: NetworkConfig | str = "default", stage: int = 2) -> nn.Module:
    """The network that stage ``stage`` trains, from a config or a preset name (see
    :data:`PRESETS`): stage 1 the :class:`ReconstructionNet` (E_r, D_r), stage 2 the detector
    :class:`ReSynthDetect`. Its weights are torch's random init (seed torch first for a given
    one); training, checkpoint loading and the benchmarks build every model here."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ConfigError(f"unknown network preset {config!r}: choose {', '.join(PRESETS)}")
        config = PRESETS[config]
    if stage == 1:
        return ReconstructionNet(config.rec_width, config.rec_depth, config.norm)
    if stage != 2:
        raise ConfigError(f"stage: must be 1 or 2, got {stage!r}")
    return ReSynthDetect(config)


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps, reflect padding, kernel radius 4 sigma (cut to
    the image: reflect padding needs radius < side)."""
    radius = max(1, min(math.ceil(4 * sigma), *(s - 1 for s in maps.shape[-2:])))
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = maps[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    return x[:, 0]


#: Gain of the local contrast (Graham's x4: a lesion 10 levels off its background becomes 40).
LOCAL_CONTRAST_GAIN = 4.0


def local_contrast(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``4 * (x - background)`` inside the field of view, 0 outside: (B, 3, H, W) float.

    The background is the Gaussian blur (``sigma`` pixels) of the image over the field of view
    only (normalised convolution: blur(x * fov) / blur(fov)), so the black border outside the
    disc does not darken the background near the rim. The field of view is where any channel
    is above 0 (prepared photographs are exactly 0 outside it).
    """
    fov = (x.amax(dim=1, keepdim=True) > 0.5 / 255).to(x.dtype)
    b, c, h, w = x.shape
    stack = torch.cat([x * fov, fov], dim=1).reshape(b * (c + 1), h, w)
    blurred = _gaussian_blur(stack, sigma).reshape(b, c + 1, h, w)
    background = blurred[:, :c] / blurred[:, c:].clamp_min(1e-3)
    return LOCAL_CONTRAST_GAIN * (x - background) * fov


@torch.no_grad()
def reconstruction_error_map(
    rec_net: ReconstructionNet, x: torch.Tensor, sigma: float = 0.0
) -> torch.Tensor:
    """Table 3, row 1 (stage 1 alone): per-pixel squared error (D_r(E_r(x)) - x)**2 averaged
    over the 3 channels, shape (B, H, W), float32, in [0, 1].

    ``sigma`` > 0 (pixels) smooths it with a Gaussian, as reconstruction-based methods commonly do
    before scoring; 0 (default) returns the raw error. Uses ``rec_net`` in its current mode.
    """
    if sigma < 0:
        raise ConfigError(f"reconstruction_error_map: sigma must be >= 0, got {sigma}")
    error = ((rec_net(x).float() - x.float()) ** 2).mean(dim=1)
    if sigma > 0 and min(error.shape[-2:]) > 1:
        error = _gaussian_blur(error, sigma)
    return error
