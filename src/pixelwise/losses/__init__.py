"""Segmentation losses behind one contract.

Every loss is an ``nn.Module`` called as ``loss(logits, target)`` with logits ``(N, C, H, W)``
and target ``(N, H, W)`` long, returns a scalar, and skips pixels equal to ``ignore_index``
(default 255) in both its value and its gradient. Losses that read the channels in two
ways take ``mode="multiclass"`` (softmax over ``C >= 2`` channels) or ``mode="binary"``
(sigmoid of a single channel, target in {0, 1}).

Build by name with :func:`build_loss`, e.g. ``build_loss("dice_ce", mode="binary")``.
Models with several heads (UNet++ with deep supervision, in training) return a list of logits:
:class:`DeepSupervisionLoss` wraps any loss to average it over the heads.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .border import UNetWeightedCELoss, unet_weight_map
from .ce import BCELoss, CrossEntropyLoss
from .deep_supervision import DeepSupervisionLoss
from .dice import DiceCELoss, DiceLoss
from .focal import FocalLoss
from .lovasz import LovaszLoss

_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropyLoss,
    "bce": BCELoss,
    "dice": DiceLoss,
    "dice_ce": DiceCELoss,
    "focal": FocalLoss,
    "lovasz": LovaszLoss,
    "unet_weighted_ce": UNetWeightedCELoss,
}


def list_losses() -> list[str]:
    """Names accepted by :func:`build_loss`, sorted."""
    return sorted(_LOSSES)


def build_loss(name: str, **kwargs) -> nn.Module:
    """Build a loss by name with its keyword arguments.

    Args:
        name: one of :func:`list_losses` ("ce", "bce", "dice", "dice_ce", "focal", "lovasz",
            "unet_weighted_ce").
        **kwargs: the loss class's arguments (``ignore_index``, ``mode``, ``class_weights``...).

    Returns:
        The loss module.

    Raises:
        ValueError: an unknown name, or arguments the loss does not take.
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(list_losses())}")
    try:
        return _LOSSES[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"loss {name!r}: {exc}") from None


__all__ = ["build_loss", "list_losses", "BCELoss", "CrossEntropyLoss", "DeepSupervisionLoss",
           "DiceLoss", "DiceCELoss", "FocalLoss", "LovaszLoss", "UNetWeightedCELoss",
           "unet_weight_map"]
