"""U-Net with a ResNet34 encoder and a LinkNet decoder (Chaurasia & Culurciello, "LinkNet:
Exploiting Encoder Representations for Efficient Semantic Segmentation", 2017).

Decoder blocks reduce channels 4x with a 1x1 conv, upsample with a 3x3 stride-2 transposed
conv, expand with a 1x1 conv, and join the encoder by addition (not concatenation). A final
transposed conv and two 3x3 convs give logits at the input resolution. The encoder keeps
torchvision's names, so ImageNet ResNet34 weights load strictly. CE-Net (``ce_net.py``) reuses
this decoder.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .backbones.resnet import ResNet34Encoder, resnet_state_dict_for_encoder
from .registry import register_model
from .weights import load_pretrained


def conv_bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class LinkNetDecoderBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        mid = in_channels // 4
        super().__init__(
            conv_bn_relu(nn.Conv2d(in_channels, mid, 1), mid),
            conv_bn_relu(nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1), mid),
            conv_bn_relu(nn.Conv2d(mid, out_channels, 1), out_channels),
        )


def linknet_decoders(stage_channels: tuple[int, ...], bottom_channels: int | None = None
                     ) -> nn.ModuleList:
    """One block per stage, deepest first: block ``k`` takes its map up to the next
    shallower stage's size and channels; the last one goes to stride 2 keeping its channels.
    ``bottom_channels`` overrides the deepest block's input (CE-Net's 516)."""
    chans = stage_channels
    blocks = [LinkNetDecoderBlock(chans[i], chans[max(i - 1, 0)])
              for i in reversed(range(len(chans)))]
    if bottom_channels is not None:
        blocks[0] = LinkNetDecoderBlock(bottom_channels, chans[-2])
    return nn.ModuleList(blocks)


def linknet_final(in_channels: int, num_classes: int) -> nn.Sequential:
    """Transposed conv to full resolution, then two 3x3 convs to the logits."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, num_classes, 3, padding=1),
    )


def linknet_decode(decoders: nn.ModuleList, final: nn.Module, bottom: torch.Tensor,
                   skips: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """Run the LinkNet decoder from ``bottom`` adding ``skips`` (shallow first) on the way."""
    d = bottom
    for decoder, skip in zip(decoders, list(reversed(skips)) + [None]):
        d = decoder(d)
        if skip is not None:
            # Encoder maps are ceil(H / stride) in size and each decoder doubles, so the
            # upsampled map is never smaller than its skip: crop it to the skip.
            d = d[..., : skip.shape[-2], : skip.shape[-1]] + skip
    return final(d)[..., :height, :width]


class ResNetUNet(nn.Module):
    """ResNet34 encoder + LinkNet decoder.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).

    Shape:
        input ``(N, in_channels, H, W)`` of any size; output ``(N, num_classes, H, W)``.
    """

    total_stride = 32  # the ResNet34 encoder's layer4 (see models.geometry)

    def __init__(self, in_channels: int = 3, num_classes: int = 2):
        super().__init__()
        self.encoder = ResNet34Encoder(in_channels)
        self.decoders = linknet_decoders(self.encoder.stage_channels)
        self.final = linknet_final(self.encoder.stage_channels[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.encoder(x)
        return linknet_decode(self.decoders, self.final, stages[-1], stages[:-1],
                              x.shape[-2], x.shape[-1])

    def load_encoder(self, source: str | os.PathLike) -> None:
        """Load torchvision ImageNet ResNet34 weights (path or URL) into the encoder, strictly."""
        in_channels = self.encoder.conv1.in_channels
        load_pretrained(self.encoder, source, "resnet34",
                        lambda state: resnet_state_dict_for_encoder(state, in_channels))


@register_model
def resnet34_unet(in_channels: int = 3, num_classes: int = 2,
                  pretrained: bool | str | None = None) -> ResNetUNet:
    """ResNet34-encoder U-Net with a LinkNet decoder. ``pretrained``: True (torchvision URL),
    or a path or URL of torchvision ResNet34 weights."""
    model = ResNetUNet(in_channels, num_classes)
    if pretrained:
        model.load_encoder(pretrained)
    return model
