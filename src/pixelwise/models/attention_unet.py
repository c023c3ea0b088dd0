"""Attention U-Net and R2U-Net, one padded U-Net family with two switches:

- Attention gates (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas",
  MIDL 2018): before concatenation each skip is multiplied by a map
  ``alpha = sigmoid(psi(relu(W_g g + W_x x)))`` computed from the skip ``x`` and the decoder
  signal ``g`` coming up from below (additive attention), so irrelevant regions are damped.
- Recurrent residual convolution units (Alom et al., "Recurrent Residual Convolutional Neural
  Network based on U-Net (R2U-Net) for Medical Image Segmentation", 2018): each level's two
  3x3 convolutions become a 1x1 projection followed by two recurrent convolution layers of
  ``t`` steps, ``x_{k+1} = f(W (x + x_k))`` with shared weights, plus a residual connection.

Both switches on give R2AttU-Net. The layout (64-1024 channels, BatchNorm, nearest-neighbour
upsampling followed by a 3x3 conv, gate width half the skip's) follows the reference
implementation the zoos share (LeeJunHyun/Image_Segmentation, copied in "Nest of UNets"), so
the parameter counts match it exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks
from .registry import register_model
from .unet import DoubleConv


def conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out_channels)]


class AttentionGate(nn.Module):
    """Additive attention gate: returns the skip ``x`` weighted by a one-channel map in (0, 1).

    Args:
        gate_channels: channels of the gating signal ``g`` (from the coarser level).
        skip_channels: channels of the skip ``x``.
        inter_channels: width of the intermediate 1x1 projections.
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int):
        super().__init__()
        self.w_g = nn.Sequential(*conv_bn(gate_channels, inter_channels, 1))
        self.w_x = nn.Sequential(*conv_bn(skip_channels, inter_channels, 1))
        self.psi = nn.Sequential(*conv_bn(inter_channels, 1, 1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(self.relu(self.w_g(g) + self.w_x(x)))


class RecurrentConv(nn.Module):
    """A recurrent convolutional layer unrolled for ``t`` steps with one shared 3x3 conv."""

    def __init__(self, channels: int, t: int):
        super().__init__()
        self.t = t
        self.conv = nn.Sequential(*conv_bn(channels, channels, 3), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.conv(x)
        for _ in range(self.t):
            state = self.conv(x + state)  # feed-forward input plus the recurrent state
        return state


class RRCNNBlock(nn.Module):
    """Recurrent residual unit: 1x1 projection, two recurrent conv layers, residual sum."""

    def __init__(self, in_channels: int, out_channels: int, t: int):
        super().__init__()
        self.project = nn.Conv2d(in_channels, out_channels, 1)
        self.rcnn = nn.Sequential(RecurrentConv(out_channels, t), RecurrentConv(out_channels, t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        return x + self.rcnn(x)


class UpConv(nn.Module):
    """Nearest-neighbour upsampling to the skip's size, then 3x3 conv + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(*conv_bn(in_channels, out_channels, 3), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        # To the skip's size rather than exactly 2x: odd sizes (a floor at the pooling) fit.
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class AttentionUNet(nn.Module):
    """Padded U-Net with optional attention gates and optional recurrent residual blocks.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).
        base_channels: channels of level 0 (references: 64).
        depth: number of 2x2 max-poolings (references: 4).
        attention: gate every skip (Attention U-Net).
        recurrent_steps: 0 for two plain 3x3 conv + BN + ReLU per level; ``t >= 1`` for
            R2U-Net's recurrent residual units with ``t`` recurrent steps (paper: 2).

    Shape:
        input ``(N, in_channels, H, W)`` with sides >= ``2**depth``; output
        ``(N, num_classes, H, W)``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_channels: int = 64,
                 depth: int = 4, attention: bool = True, recurrent_steps: int = 0):
        super().__init__()
        if depth < 1 or recurrent_steps < 0:
            raise ValueError(f"need depth >= 1 and recurrent_steps >= 0, got {depth}, "
                             f"{recurrent_steps}")
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]

        def block(c_in: int, c_out: int) -> nn.Module:
            if recurrent_steps:
                return RRCNNBlock(c_in, c_out, recurrent_steps)
            return DoubleConv(c_in, c_out, 1, True)

        self.encoder = nn.ModuleList([block(in_channels, widths[0])] + [
            block(widths[i], widths[i + 1]) for i in range(depth)])
        self.pool = nn.MaxPool2d(2)
        levels = list(reversed(range(depth)))
        self.ups = nn.ModuleList([UpConv(widths[i + 1], widths[i]) for i in levels])
        self.gates = nn.ModuleList([AttentionGate(widths[i], widths[i], widths[i] // 2)
                                    for i in levels]) if attention else None
        self.decoder = nn.ModuleList([block(2 * widths[i], widths[i]) for i in levels])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def total_stride(self) -> int:
        """Downsampling of the deepest level: ``2**depth`` (see ``models.geometry``)."""
        return 1 << self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.check_min_size(x, 1 << self.depth, f"a U-Net of depth {self.depth}")
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for k, (up, block) in enumerate(zip(self.ups, self.decoder)):
            skip = skips.pop()
            x = up(x, skip.shape[-2:])
            if self.gates is not None:
                skip = self.gates[k](x, skip)
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


@register_model
def attention_unet(in_channels: int = 3, num_classes: int = 1, base_channels: int = 64,
                   depth: int = 4) -> AttentionUNet:
    """Attention U-Net (Oktay et al. 2018); the defaults are the reference AttU_Net."""
    return AttentionUNet(in_channels, num_classes, base_channels, depth, attention=True)


@register_model
def r2unet(in_channels: int = 3, num_classes: int = 1, base_channels: int = 64, depth: int = 4,
           t: int = 2) -> AttentionUNet:
    """R2U-Net (Alom et al. 2018), ``t`` recurrent steps; the defaults are the reference
    R2U_Net."""
    return AttentionUNet(in_channels, num_classes, base_channels, depth, attention=False,
                         recurrent_steps=t)


@register_model
def r2attention_unet(in_channels: int = 3, num_classes: int = 1, base_channels: int = 64,
                     depth: int = 4, t: int = 2) -> AttentionUNet:
    """R2U-Net with attention gates (R2AttU-Net); the defaults are the reference
    R2AttU_Net."""
    return AttentionUNet(in_channels, num_classes, base_channels, depth, attention=True,
                         recurrent_steps=t)
