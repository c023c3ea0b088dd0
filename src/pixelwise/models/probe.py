"""What an architecture accepts and returns, found without weights or arithmetic.

Models are built on PyTorch's meta device, where tensors have shapes but no storage: a
134 M-parameter FCN builds in milliseconds and a forward pass only propagates shapes. So a
config or checkpoint can be checked against the network it describes before any real work.
The first meta forward of a process imports PyTorch's shape machinery (``torch._dynamo``,
about 1-2 s); later ones take milliseconds.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .registry import build_model


def meta_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build a registered model on the meta device (``pretrained`` dropped: nothing is fetched).

    Raises:
        ValueError, TypeError: the builder refuses the arguments.
    """
    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained"}
    with torch.device("meta"):
        return build_model(name, **kwargs)


def meta_forward(model: nn.Module, in_channels: int, height: int, width: int, batch: int = 1,
                 train: bool = False) -> tuple[int, ...]:
    """Shape of ``model``'s output for a ``(batch, in_channels, height, width)`` input.

    ``model`` must be on the meta device (see :func:`meta_model`). ``train=True`` runs the
    training-mode forward, where BatchNorm refuses a single value per channel.

    Raises:
        ValueError, RuntimeError: the model cannot take that input.
    """
    x = torch.empty(batch, in_channels, height, width, device="meta")
    was_training = model.training
    model.train(train)
    try:
        with torch.no_grad():
            out = model(x)
            # A deeply supervised model returns its heads in training: all of one shape.
            return tuple((out[-1] if isinstance(out, (list, tuple)) else out).shape)
    finally:
        model.train(was_training)


def _takes(model: nn.Module, in_channels: int, size: int) -> bool:
    try:
        meta_forward(model, in_channels, size, size)
    except (ValueError, RuntimeError):
        return False
    return True


def min_input_size(model: nn.Module, in_channels: int, limit: int = 1 << 14) -> int:
    """Smallest square side ``model`` (on the meta device) takes, by search on shapes.

    A padded U-Net of depth ``d`` needs ``2**d`` (each pooling halves the side, flooring);
    a valid-convolution one its smallest tile; FCN (which pads its input by 100 px) and the
    ResNet U-Net (which crops its upsampled maps) take any size. Above the minimum every size
    works, so a doubling search then a bisection finds it in a few dozen shape passes.

    Raises:
        ValueError: no side up to ``limit`` works.
    """
    if _takes(model, in_channels, 1):
        return 1
    low, high = 1, 2  # low fails, high is tried next
    while not _takes(model, in_channels, high):
        if high >= limit:
            raise ValueError(f"the model takes no input up to {limit}x{limit} pixels")
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _takes(model, in_channels, mid) else (mid, high)
    return high
