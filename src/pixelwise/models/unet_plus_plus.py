"""UNet++ (Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: A Nested U-Net Architecture for
Medical Image Segmentation", DLMIA 2018).

The encoder is a U-Net's; the decoder replaces each plain skip by a dense chain of
convolution nodes: node ``X(i, j)`` (level ``i``, ``j``-th node along the skip) sees every
earlier node of its level, ``X(i, 0) ... X(i, j-1)``, concatenated with the upsampled
``X(i+1, j-1)``. With deep supervision a 1x1 head sits on each top node ``X(0, 1) ...
X(0, depth)``; the paper trains on the mean of their losses and, at inference, either keeps
the last head ("accurate mode" in the paper averages the heads; its "fast mode" prunes to an
earlier one).

Upsampling is bilinear (``align_corners=True``) to the skip's size, as in both reference
zoos; resizing to the skip (rather than by exactly 2) lets any input size through.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import _checks
from .registry import register_model
from .resize import Resize
from .unet import DoubleConv

INFERENCE_MODES = ("last", "mean")


class NestedUNet(nn.Module):
    """UNet++ with ``depth`` poolings and channels ``base_channels * 2**i`` at level ``i``.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).
        base_channels: channels of level 0 (UNET-ZOO: 32; Nest of UNets: 64).
        depth: number of poolings (paper: 4).
        deep_supervision: one 1x1 head per top node ``X(0, 1..depth)``.
        inference: with deep supervision, what eval mode returns: ``"last"`` (the head on
            ``X(0, depth)``) or ``"mean"`` (the mean of all heads' logits).
        batch_norm: BatchNorm after every 3x3 conv (both zoos use it).

    Returns (forward):
        logits ``(N, num_classes, H, W)``; only in training mode with deep supervision, the
        list of the ``depth`` heads' logits, shallowest node first, which
        :class:`pixelwise.losses.DeepSupervisionLoss` averages.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_channels: int = 32,
                 depth: int = 4, deep_supervision: bool = False, inference: str = "last",
                 batch_norm: bool = True):
        super().__init__()
        if inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be 'last' or 'mean', got {inference!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth, self.deep_supervision, self.inference = depth, deep_supervision, inference
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.pool = nn.MaxPool2d(2)
        self.upsample = Resize("bilinear", align_corners=True)
        # nodes[i][j] is X(i, j); X(i, 0) is the encoder, X(i, j>0) the nested skip nodes.
        self.nodes = nn.ModuleList()
        for i in range(depth + 1):
            level = nn.ModuleList()
            for j in range(depth + 1 - i):
                if j == 0:
                    c_in = in_channels if i == 0 else widths[i - 1]
                else:
                    c_in = j * widths[i] + widths[i + 1]
                level.append(DoubleConv(c_in, widths[i], 1, batch_norm))
            self.nodes.append(level)
        n_heads = depth if deep_supervision else 1
        self.heads = nn.ModuleList([nn.Conv2d(widths[0], num_classes, 1) for _ in range(n_heads)])

    @property
    def total_stride(self) -> int:
        """Downsampling of the deepest level: ``2**depth`` (see ``models.geometry``)."""
        return 1 << self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outputs = self.head_outputs(x)
        if self.deep_supervision and self.training:
            return outputs
        if self.inference == "mean" and len(outputs) > 1:
            return torch.stack(outputs).mean(0)
        return outputs[-1]

    def head_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every head's logits, shallowest node first (one entry without deep supervision)."""
        _checks.check_min_size(x, 1 << self.depth, f"a UNet++ of depth {self.depth}")
        grid: list[list[torch.Tensor]] = [[] for _ in range(self.depth + 1)]
        for k in range(self.depth + 1):
            # Column by column along the anti-diagonal: encoder node X(k, 0), then the nodes
            # X(k-1, 1), ..., X(0, k) that it completes.
            grid[k].append(self.nodes[k][0](x if k == 0 else self.pool(grid[k - 1][0])))
            for j in range(1, k + 1):
                i = k - j
                up = self.upsample(grid[i + 1][j - 1], grid[i][0].shape[-2:])
                grid[i].append(self.nodes[i][j](torch.cat(grid[i] + [up], dim=1)))
        top = grid[0][1:] if self.deep_supervision else grid[0][-1:]
        return [head(node) for head, node in zip(self.heads, top)]


@register_model
def unet_plus_plus(in_channels: int = 3, num_classes: int = 1, base_channels: int = 32,
                   depth: int = 4, deep_supervision: bool = False, inference: str = "last",
                   batch_norm: bool = True) -> NestedUNet:
    """UNet++. UNET-ZOO's NestedUNet is the default (``base_channels=32``; with
    ``deep_supervision=True`` its four heads); Nest of UNets' is ``base_channels=64``."""
    return NestedUNet(in_channels, num_classes, base_channels, depth, deep_supervision,
                      inference, batch_norm)
