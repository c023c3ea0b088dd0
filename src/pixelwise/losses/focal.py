"""Focal loss (Lin, Goyal, Girshick, He & Dollar, "Focal Loss for Dense Object Detection", 2017)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import (check_inputs, check_mode, check_num_weights, class_weight_tensor,
                      masked_mean, valid_and_safe)


class FocalLoss(nn.Module):
    """``FL = -alpha_t (1 - p_t)^gamma log(p_t)``, averaged over non-ignored pixels.

    ``p_t`` is the predicted probability of the true class (softmax in ``multiclass`` mode,
    sigmoid in ``binary`` mode). ``gamma=0`` and no ``alpha`` give plain (B)CE. The paper
    normalises by the number of positive anchors; for dense segmentation every pixel has a
    label, so the mean over valid pixels is used.

    Args:
        mode: ``"multiclass"`` or ``"binary"``.
        gamma: focusing parameter (paper: 2).
        alpha: ``binary``: a float in [0, 1], the weight of positives (negatives get
            ``1 - alpha``; paper: 0.25). ``multiclass``: one weight per class. None: no weighting.
        ignore_index: target value whose pixels are skipped.

    Shape:
        logits ``(N, C, H, W)``; target ``(N, H, W)`` long -> scalar.
    """

    def __init__(self, mode: str = "multiclass", gamma: float = 2.0,
                 alpha: float | Sequence[float] | None = None, ignore_index: int = 255):
        super().__init__()
        self.mode = check_mode(mode)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.ignore_index = int(ignore_index)
        self.alpha_binary: float | None = None
        alpha_vec = None
        if alpha is not None and mode == "binary":
            if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
                raise ValueError(f"binary focal alpha must be a number in [0, 1], got {alpha!r}")
            self.alpha_binary = float(alpha)
        elif alpha is not None:
            if isinstance(alpha, (int, float)):
                raise ValueError("multiclass focal alpha must be a list with one weight per class")
            alpha_vec = class_weight_tensor(alpha, name="alpha")
        self.register_buffer("alpha", alpha_vec, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, self.mode, self.ignore_index)
        valid, safe = valid_and_safe(target, self.ignore_index)
        if self.mode == "binary":
            x = logits.float().squeeze(1)
            t = safe.float()
            # log p_t = -BCE: numerically stable for large |logits|.
            logpt = -F.binary_cross_entropy_with_logits(x, t, reduction="none")
            alpha_t = None
            if self.alpha_binary is not None:
                alpha_t = t * self.alpha_binary + (1.0 - t) * (1.0 - self.alpha_binary)
        else:
            check_num_weights(self.alpha, logits.shape[1], name="alpha")
            logp = F.log_softmax(logits.float(), dim=1)
            logpt = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
            alpha_t = None if self.alpha is None else self.alpha.to(logits.device)[safe]
        pt = logpt.exp()
        loss = -((1.0 - pt).clamp_min(0.0) ** self.gamma) * logpt
        if alpha_t is not None:
            loss = alpha_t * loss
        return masked_mean(loss, valid)
