"""Soft Dice loss (Milletari et al., V-Net, 2016) and Dice + cross-entropy."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import check_inputs, check_mode, valid_and_safe
from .ce import BCELoss, CrossEntropyLoss


def soft_dice_per_class(probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor,
                        smooth: float, eps: float = 1e-7) -> torch.Tensor:
    """Soft Dice ``(2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)`` per channel.

    Sums run over the whole batch and all non-ignored pixels (one score per class, not per
    image), which is stabler on small crops where a class is often absent from one image.

    Shape:
        probs, onehot ``(N, K, H, W)``; valid ``(N, H, W)`` bool -> ``(K,)``.
    """
    v = valid.unsqueeze(1).to(probs.dtype)
    # Multiplying by the mask (rather than selecting) keeps the tensor shape; the factor 0
    # also makes the gradient at ignored pixels exactly 0.
    p = probs * v
    g = onehot.to(probs.dtype) * v
    dims = (0, 2, 3)
    inter = (p * g).sum(dims)
    denom = p.sum(dims) + g.sum(dims)
    return (2.0 * inter + smooth) / (denom + smooth).clamp_min(eps)


class DiceLoss(nn.Module):
    """Soft Dice loss ``1 - mean_c Dice_c``.

    ``multiclass``: softmax probabilities against the one-hot target, one Dice score per class
    (or per class in ``classes``), then the unweighted mean. ``binary``: sigmoid of the single
    channel, one Dice score for the foreground.

    The smooth term ``smooth`` (default 1.0) is added to numerator and denominator: a class
    absent from the target scores ``smooth / (sum(p) + smooth)``, i.e. 1 when nothing is
    predicted for it and towards 0 as false positives accumulate, and the ratio never divides
    by zero. With ``smooth=0`` the score is the plain soft Dice (denominator clamped at 1e-7).
    Ignored pixels are removed from every sum.

    Args:
        mode: ``"multiclass"`` or ``"binary"``.
        smooth: additive smoothing (see above).
        classes: indices of the classes to average over (multiclass only); None = all.
        ignore_index: target value whose pixels are skipped.

    Shape:
        logits ``(N, C, H, W)``; target ``(N, H, W)`` long -> scalar.
    """

    def __init__(self, mode: str = "multiclass", smooth: float = 1.0,
                 classes: Sequence[int] | None = None, ignore_index: int = 255):
        super().__init__()
        self.mode = check_mode(mode)
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        if classes is not None and mode == "binary":
            raise ValueError("classes applies to mode='multiclass' only")
        self.smooth = float(smooth)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, self.mode, self.ignore_index)
        valid, safe = valid_and_safe(target, self.ignore_index)
        if self.mode == "binary":
            probs = torch.sigmoid(logits.float())
            onehot = safe.unsqueeze(1)
        else:
            num_classes = logits.shape[1]
            probs = F.softmax(logits.float(), dim=1)
            onehot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2)
        dice = soft_dice_per_class(probs, onehot, valid, self.smooth)
        if self.classes is not None:
            if max(self.classes) >= dice.numel() or min(self.classes) < 0:
                raise ValueError(f"classes {self.classes} out of range for {dice.numel()} classes")
            dice = dice[self.classes]
        return 1.0 - dice.mean()


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice`` (BCE + Dice in binary mode).

    Args:
        mode: ``"multiclass"`` (softmax CE) or ``"binary"`` (BCE).
        ce_weight, dice_weight: the two terms' factors.
        class_weights: per-class weights of the CE term (multiclass only).
        pos_weight: positive weight of the BCE term (binary only).
        smooth: Dice smoothing, see :class:`DiceLoss`.
        ignore_index: target value whose pixels are skipped by both terms.

    Shape:
        logits ``(N, C, H, W)``; target ``(N, H, W)`` long -> scalar.
    """

    def __init__(self, mode: str = "multiclass", ce_weight: float = 1.0, dice_weight: float = 1.0,
                 class_weights: Sequence[float] | None = None, pos_weight: float | None = None,
                 smooth: float = 1.0, ignore_index: int = 255):
        super().__init__()
        check_mode(mode)
        if mode == "binary":
            if class_weights is not None:
                raise ValueError("class_weights applies to mode='multiclass'; use pos_weight")
            self.ce = BCELoss(pos_weight=pos_weight, ignore_index=ignore_index)
        else:
            if pos_weight is not None:
                raise ValueError("pos_weight applies to mode='binary'; use class_weights")
            self.ce = CrossEntropyLoss(class_weights=class_weights, ignore_index=ignore_index)
        self.dice = DiceLoss(mode=mode, smooth=smooth, ignore_index=ignore_index)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce_weight * self.ce(logits, target) + self.dice_weight * self.dice(logits, target)
