"""CE-Net (Gu, Cheng, Fu, Zhou, Hao, Zhao, Zhang, Gao & Liu, "CE-Net: Context Encoder Network
for 2D Medical Image Segmentation", IEEE TMI 2019).

A ResNet34 encoder (torchvision names, so ImageNet weights load strictly), a context
extractor on its stride-32 map, and a LinkNet decoder (:mod:`.resnet_unet`):

- DAC, dense atrous convolution: four cascaded branches of 3x3 convolutions with dilation
  1, 3, 5 (receptive fields 3, 7, 9, 19), each closed by a shared 1x1 conv, summed with the
  input.
- RMP, residual multi-kernel pooling: max-pools of 2, 3, 5 and 6 pixels, each reduced to one
  channel by a shared 1x1 conv and upsampled back, concatenated with the input (512 + 4).

The pools round up: the stride-32 map of a small or odd image is often narrower than 5 or 6
pixels, where a floor would leave nothing (the reference needs inputs of at least 192 px);
a pool's receptive field is the same either way. Rounding up is done by padding with
``k - 1`` pixels of -inf (rather than ``ceil_mode``, whose "last window must start inside
the map" rule is a size test that ONNX export with dynamic sizes cannot keep).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.resnet import ResNet34Encoder, resnet_state_dict_for_encoder
from .registry import register_model
from .resnet_unet import linknet_decode, linknet_decoders, linknet_final
from .weights import load_pretrained


class DACBlock(nn.Module):
    """Dense atrous convolution: ``x`` plus four cascaded atrous branches (shared weights)."""

    def __init__(self, channels: int):
        super().__init__()
        self.dilate1 = nn.Conv2d(channels, channels, 3, padding=1, dilation=1)
        self.dilate3 = nn.Conv2d(channels, channels, 3, padding=3, dilation=3)
        self.dilate5 = nn.Conv2d(channels, channels, 3, padding=5, dilation=5)
        self.conv1x1 = nn.Conv2d(channels, channels, 1)
        for conv in (self.dilate1, self.dilate3, self.dilate5, self.conv1x1):
            nn.init.zeros_(conv.bias)  # as the reference initialises them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.dilate1(x)
        d13 = self.dilate3(d1)
        branches = [d1, self.conv1x1(self.dilate3(x)), self.conv1x1(d13),
                    self.conv1x1(self.dilate5(d13))]
        return x + sum(F.relu(b) for b in branches)


class RMPBlock(nn.Module):
    """Residual multi-kernel pooling: ``x`` concatenated with one channel per pool size."""

    kernels = (2, 3, 5, 6)

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)
        self.out_channels = channels + len(self.kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled = []
        for k in self.kernels:
            # ceil(size / k) windows; -inf never wins a max, every window holds a real pixel.
            padded = F.pad(x, [0, k - 1, 0, k - 1], value=float("-inf"))
            pooled.append(F.interpolate(self.conv(F.max_pool2d(padded, k, k)), size=[h, w],
                                        mode="bilinear", align_corners=False))
        return torch.cat(pooled + [x], dim=1)


class CENet(nn.Module):
    """CE-Net: ResNet34 encoder, DAC + RMP context extractor, LinkNet decoder.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits; the paper's vessel/disc models use 1).

    Shape:
        input ``(N, in_channels, H, W)`` of any size; output ``(N, num_classes, H, W)``.
    """

    total_stride = 32  # the ResNet34 encoder's layer4 (see models.geometry)

    def __init__(self, in_channels: int = 3, num_classes: int = 1):
        super().__init__()
        self.encoder = ResNet34Encoder(in_channels)
        chans = self.encoder.stage_channels
        self.dac = DACBlock(chans[-1])
        self.rmp = RMPBlock(chans[-1])
        self.decoders = linknet_decoders(chans, bottom_channels=self.rmp.out_channels)
        self.final = linknet_final(chans[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.encoder(x)
        bottom = self.rmp(self.dac(stages[-1]))
        return linknet_decode(self.decoders, self.final, bottom, stages[:-1],
                              x.shape[-2], x.shape[-1])


@register_model
def ce_net(in_channels: int = 3, num_classes: int = 1,
           pretrained: bool | str | None = None) -> CENet:
    """CE-Net. ``pretrained``: True (torchvision URL), or a path or URL of torchvision
    ResNet34 weights for the encoder."""
    model = CENet(in_channels, num_classes)
    load_pretrained(model.encoder, pretrained, "resnet34",
                    lambda state: resnet_state_dict_for_encoder(state, in_channels, 34))
    return model
