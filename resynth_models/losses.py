"""The two training losses of ReSynthDetect (paper Eq. 1 and Eq. 2).

Both compute in float32 whatever the input dtype (bf16/fp16 autocast), so the loss value and its
reduction do not lose precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    tau: float = 2.0,
    reduction: str = "mean",
    alpha: float | None = None,
) -> torch.Tensor:
    """Focal loss of Eq. 2 from logits, with p = sigmoid(logits):

        -(1 - p)**tau * log(p)       where M_G = 1
        -p**tau * log(1 - p)         where M_G = 0

    ``tau`` = 2 in the paper; tau = 0 is binary cross-entropy. ``target`` is M_G in {0, 1} (soft
    values in [0, 1], e.g. from resampled masks, interpolate the two cases), of the logits' shape
    or that shape without the channel axis of size 1. log p and log(1 - p) are log-sigmoids of
    +/- logits, so the loss stays finite for any finite logit. ``reduction`` "mean" averages over
    every pixel (as DRAEM does), "sum" adds, "none" returns the per-pixel loss. ``alpha`` (off by
    default; the paper has none) weighs anomalous pixels by alpha and normal ones by 1 - alpha.
    """
    if tau < 0:
        raise ValueError(f"focal_loss: tau must be >= 0, got {tau}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"focal_loss: alpha must be in [0, 1] or None, got {alpha}")
    if target.ndim == logits.ndim - 1 and logits.ndim >= 2 and logits.shape[1] == 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(
            f"focal_loss: target shape {tuple(target.shape)} does not match logits "
            f"{tuple(logits.shape)}"
        )
    z = logits.float()
    t = target.to(z.dtype)
    log_p, log_1mp = F.logsigmoid(z), F.logsigmoid(-z)
    pos = -torch.exp(tau * log_1mp) * log_p  # (1 - p)**tau = exp(tau * log(1 - p)), no 0**0 issue
    neg = -torch.exp(tau * log_p) * log_1mp
    if alpha is not None:
        pos, neg = alpha * pos, (1.0 - alpha) * neg
    return _reduce(t * pos + (1.0 - t) * neg, reduction)


def reconstruction_loss(
    recon: torch.Tensor, image: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """L2 loss of Eq. 1, ||D_r(E_r(I)) - I||_2^2, as the MEAN squared error over pixels and
    channels (the paper writes the sum; the mean differs by the constant B*C*H*W and keeps the
    learning rate independent of the image size). ``reduction="sum"`` gives Eq. 1 literally."""
    if recon.shape != image.shape:
        raise ValueError(
            f"reconstruction_loss: shapes differ, {tuple(recon.shape)} vs {tuple(image.shape)}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return F.mse_loss(recon.float(), image.float(), reduction=reduction)
