"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015).

Two forms share one class:
- ``padding="valid"``: the paper's network. Unpadded 3x3 convolutions shrink every map, the
  skip connections are centre-cropped before concatenation, and a 572x572 tile yields a
  388x388 output. Predict large images with overlap-tile and mirrored borders
  (``pixelwise.inference.tiling``), using :meth:`UNet.output_shape` to know the margin.
- ``padding="same"``: the common modern form (usually with BatchNorm) that keeps H x W. Sizes
  that do not divide by ``2**depth`` are handled by padding each upsampled map by at most one
  pixel to its skip's size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (BatchNorm and) ReLU."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            # The conv keeps its bias even before BatchNorm, as the published parameter
            # counts of these networks assume.
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=padding))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _pad_needed(dh: int, dw: int) -> bool:
    """Eager mode skips a pad of zero (F.pad would still copy the map, forward and
    backward); a traced graph (torch.export, torch.compile) always pads, because its sizes
    are symbolic and one graph must serve odd and even sizes alike."""
    if torch.jit.is_scripting():
        return dh != 0 or dw != 0
    symbolic = not (isinstance(dh, int) and isinstance(dw, int))  # SymInt under export
    return symbolic or torch.compiler.is_compiling() or dh != 0 or dw != 0


class Up(nn.Module):
    """Upsample by 2 halving the channels, join the skip by concatenation, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, batch_norm: bool,
                 upsample: str, up_batch_norm: bool = False):
        super().__init__()
        self.crop_skip = padding == 0
        if upsample == "transpose":
            # The paper's "up-convolution": a 2x2 transposed conv that halves the channels.
            self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
            if up_batch_norm:
                self.up = nn.Sequential(self.up, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        elif upsample == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, 1),
            )
        else:
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        self.conv = DoubleConv(2 * out_channels, out_channels, padding, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if self.crop_skip:
            # valid padding: crop the skip's centre to the upsampled map (paper, Fig. 1).
            skip = skip[..., dh // 2:dh // 2 + x.shape[-2], dw // 2:dw // 2 + x.shape[-1]]
        else:
            # same padding: a skip of odd size is one pixel larger than the upsampled map.
            if _pad_needed(dh, dw):
                x = F.pad(x, [0, dw, 0, dh])
        return self.conv(torch.cat([skip, x], dim=1))


def init_unet(model: nn.Module) -> None:
    """The paper's initialisation (Section 3): weights from a Gaussian with standard
    deviation sqrt(2 / N), N the incoming nodes of a neuron (k * k * in_channels), i.e.
    He-normal with fan-in; biases at zero. PyTorch's default is about 2.4x narrower."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            # A transposed conv's weight is (in, out, k, k): its fan-in is the second axis.
            mode = "fan_out" if isinstance(m, nn.ConvTranspose2d) else "fan_in"
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; channels ``base_channels * 2**i`` at level ``i``.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).
        base_channels: channels of the first level (paper: 64).
        depth: number of 2x2 max-poolings (paper: 4).
        padding: ``"valid"`` (paper) or ``"same"``.
        batch_norm: BatchNorm after every 3x3 conv.
        upsample: ``"transpose"`` (paper's 2x2 up-convolution) or ``"bilinear"`` + 1x1 conv.
        up_batch_norm: BatchNorm + ReLU after each transposed up-convolution.
        head_kernel_size: kernel of the final classifier conv (paper: 1).

    Shape:
        input ``(N, in_channels, H, W)``; output ``(N, num_classes, *self.output_shape(H, W))``,
        which is ``(H, W)`` for ``padding="same"``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base_channels: int = 64,
                 depth: int = 4, padding: str = "same", batch_norm: bool = True,
                 upsample: str = "transpose", up_batch_norm: bool = False,
                 head_kernel_size: int = 1):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.padding = padding
        pad = 1 if padding == "same" else 0
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels, widths[0], pad, batch_norm)]
            + [DoubleConv(widths[i], widths[i + 1], pad, batch_norm) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList(
            [Up(widths[i + 1], widths[i], pad, batch_norm, upsample, up_batch_norm)
             for i in reversed(range(depth))]
        )
        self.head = nn.Conv2d(widths[0], num_classes, head_kernel_size,
                              padding=head_kernel_size // 2 if padding == "same" else 0)
        init_unet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            # Each pooling floors, so a side under 2**depth reaches the bottom as 0 pixels;
            # say so rather than fail inside max_pool2d. (Valid mode: see output_shape.)
            minimum = 1 << self.depth  # an int under TorchScript too
            if x.shape[-2] < minimum or x.shape[-1] < minimum:
                raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]} is too small for a U-Net of "
                                 f"depth {self.depth}: each side needs at least {minimum} pixels")
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)

    @property
    def total_stride(self) -> int:
        """Downsampling of the deepest level: ``2**depth`` (see ``models.geometry``)."""
        return 1 << self.depth

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the logits for an ``height x width`` input."""
        return self._out(height), self._out(width)

    def _out(self, size: int) -> int:
        if self.padding == "same":
            return size
        shrink = 4  # two unpadded 3x3 convs per level
        sizes = [size - shrink]
        for _ in range(self.depth):
            sizes.append(sizes[-1] // 2 - shrink)
        s = sizes[-1]
        for _ in range(self.depth):
            s = 2 * s - shrink
        if min(sizes) < 1 or s < 1:
            raise ValueError(f"input size {size} is too small for a valid U-Net of depth {self.depth}")
        return s

    def valid_input_size(self, min_output: int) -> int:
        """Smallest input size with output >= ``min_output`` whose every pooling sees an even map.

        The paper picks tiles this way (572 -> 388) so that no pixel is lost at a pooling.
        """
        if self.padding == "same":
            return max(min_output, 1)
        bottom = 1  # size of the bottleneck's input, after the last pooling
        while True:
            size = bottom
            for _ in range(self.depth):
                size = 2 * size + 4  # undo a pooling, then the level's two 3x3 convs
            try:
                if self._out(size) >= min_output:
                    return size
            except ValueError:  # too small to give any output yet
                pass
            bottom += 1


@register_model
def unet(in_channels: int = 3, num_classes: int = 2, base_channels: int = 32, depth: int = 4,
         padding: str = "same", batch_norm: bool = True, upsample: str = "transpose") -> UNet:
    """Configurable U-Net; the paper form is
    ``unet(in_channels=1, num_classes=2, base_channels=64, padding="valid", batch_norm=False)``."""
    return UNet(in_channels, num_classes, base_channels, depth, padding, batch_norm, upsample)


@register_model
def unet_small(in_channels: int = 1, num_classes: int = 1, base_channels: int = 8,
               depth: int = 4) -> UNet:
    """The tiny 8-16-32-64-128 U-Net with BatchNorm and padded convolutions; its up-convolutions
    are followed by BatchNorm + ReLU and its classifier is a 3x3 conv."""
    return UNet(in_channels, num_classes, base_channels, depth, "same", True, "transpose",
                up_batch_norm=True, head_kernel_size=3)
