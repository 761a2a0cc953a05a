"""One optimiser step (:func:`train_step`: forward, loss, backward, clip, step) and the
optimiser it steps (:func:`make_optimizer`: AdamW).

Stage 1 (paper 3.1): the L2 reconstruction loss of Eq. 1 over the whole image: it includes the
black border outside the field of view (FOV), as the paper writes it; D_r learns that border in
a few steps, after which it only scales the loss by the FOV's share of the image (pi/4 for a
full circle), so masking it would change only the learning rate's meaning. Stage 2 (paper
3.2): the focal loss of Eq. 2 (tau = 2, ``TrainConfig.focal_tau``).

AdamW: the paper's learning rates (5e-5) are Adam-sized (DRAEM, the paper's base, uses Adam);
AdamW's decoupled weight decay keeps the decay independent of Adam's per-weight step sizes
(Loshchilov & Hutter 2019); decay applies to convolution weights only, not to biases or
normalisation gains (as nanoGPT does).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from resynth_models.losses import focal_loss, reconstruction_loss
from resynth_models.train_config import TrainConfig

__all__ = ["FOCAL_TAU", "autocast", "make_optimizer", "train_step"]

FOCAL_TAU = TrainConfig.focal_tau  # paper Eq. 2 (the config's default)
_DEFAULTS = TrainConfig()


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; None: full precision (a no-op context)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    stage: int,
    autocast_dtype: torch.dtype | None = None,
    scaler: Any = None,
    config: TrainConfig = _DEFAULTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch; returns (loss, gradient norm) as tensors (no GPU sync).

    ``images`` (B, 3, H, W) float in [0, 1]. Stage 1: ``model`` is the ReconstructionNet and the
    loss is Eq. 1 between D_r(E_r(I)) and I. Stage 2: ``model`` is ReSynthDetect (or its DDP
    wrapper), ``masks`` M_G (B, H, W) in {0, 1} and the loss is the focal loss of Eq. 2.
    From ``config``: ``grad_clip`` (0 computes the norm without clipping) and ``focal_tau``
    (Eq. 2's tau). ``scaler``: a GradScaler for fp16.
    """
    with autocast(images.device, autocast_dtype):
        out = model(images)
    if stage == 1:
        loss = reconstruction_loss(out, images)
    else:
        loss = focal_loss(out, masks, tau=config.focal_tau)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip or math.inf)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach(), grad_norm.detach()


def make_optimizer(params: Any, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on convolution weights (2-D and more), none on biases and norms."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=config.betas, fused=device.type == "cuda" or None
    )
