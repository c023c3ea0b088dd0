"""Resizing a feature map to a given size, as a module."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Resize(nn.Module):
    """``F.interpolate(x, size=size, mode=mode, align_corners=align_corners)``.

    A module rather than a call so that each resize is a named part of the model that code
    outside it can find and replace (:mod:`pixelwise.fast` does, for its memory layout). It
    holds no parameters: state dicts are the same as with the call.
    """

    def __init__(self, mode: str = "bilinear", align_corners: bool = False):
        super().__init__()
        self.mode, self.align_corners = mode, align_corners

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode=self.mode, align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, align_corners={self.align_corners}"
