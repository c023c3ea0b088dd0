"""U-Net decoders on ImageNet encoders: VGG16 and ResNet50 (Ronneberger et al. 2015's
decoder, concatenated skips, on Simonyan & Zisserman 2015's and He et al. 2016's networks).

The decoder reads only the encoder's ``stage_channels`` and ``stage_strides``: from the
deepest stage it upsamples (bilinear, to the next skip's size, so odd sizes fit),
concatenates the skip and applies two 3x3 conv + BatchNorm + ReLU; once the skips are used
up it keeps doubling without skips until stride 1 (ResNet50's shallowest skip, the stem, is
at stride 2). A 1x1 conv gives the logits. Encoders keep torchvision's names, so
``vgg16`` / ``vgg16_bn`` / ``resnet50`` ImageNet weights load strictly.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.resnet import ResNet34Encoder, ResNet50Encoder, resnet_state_dict_for_encoder
from .backbones.vgg import VGG16Encoder, vgg16_state_dict_for_encoder
from . import _checks
from .registry import register_model
from .resize import Resize
from .unet import DoubleConv
from .weights import load_pretrained

DECODER_CHANNELS = (256, 128, 64, 32, 16)


def init_decoder(blocks: nn.Module, head: nn.Conv2d) -> None:
    """He-uniform (fan-in) decoder convolutions and a Glorot-uniform head, biases at zero:
    the usual initialisation of U-Net decoders on pretrained or from-scratch encoders
    (segmentation_models.pytorch's), instead of PyTorch's narrower default."""
    for m in blocks.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)


class EncoderUNet(nn.Module):
    """A U-Net decoder on any encoder that returns its stages shallow to deep.

    Args:
        encoder: module returning a list of stage maps; exposes ``stage_channels`` and
            ``stage_strides`` (powers of 2, the first may be > 1).
        num_classes: output channels (logits).
        decoder_channels: width of each decoder block, deepest first; the first
            ``len(stages) - 1 + log2(stage_strides[0])`` entries are used.
        input_skip: for an encoder whose first stage is strided, the width of a skip at full
            resolution (one 3x3 conv + BN + ReLU on the input, joined by the last decoder
            block); 0 (smp's layout): none. Thin structures (vessels, membranes) are one or
            two pixels wide, finer than any strided stage.
        in_channels: the input's channels (for ``input_skip``).
        input_scale: run the network on the input upsampled by this factor (bilinear) and
            average the logits back over each input pixel's ``s x s`` sub-pixels. An
            ImageNet encoder halves the resolution in its first convolution, where a vessel
            one or two pixels wide blurs away; at 2x it keeps two to four pixels. Costs
            ``s**2`` per pixel (train on crops ``s`` times smaller for the same step time).

    Shape:
        input ``(N, C, H, W)`` of any size the encoder takes; output ``(N, num_classes, H, W)``.
    """

    def __init__(self, encoder: nn.Module, num_classes: int,
                 decoder_channels: Sequence[int] = DECODER_CHANNELS, input_skip: int = 0,
                 in_channels: int = 3, input_scale: int = 1):
        super().__init__()
        if input_scale < 1:
            raise ValueError(f"input_scale must be a whole factor >= 1, got {input_scale}")
        self.encoder = encoder
        self.input_scale = input_scale
        chans, strides = list(encoder.stage_channels), list(encoder.stage_strides)
        self.min_size = max(1, strides[-1] // input_scale)
        skips = chans[-2::-1]  # skip widths, deepest first
        extra = int(math.log2(strides[0]))  # skip-less doublings down to stride 1
        n_blocks = len(skips) + extra
        if len(decoder_channels) < n_blocks:
            raise ValueError(f"decoder_channels needs {n_blocks} entries for this encoder, "
                             f"got {list(decoder_channels)}")
        widths = [chans[-1]] + list(decoder_channels[:n_blocks])
        skip_widths = skips + [0] * extra
        self.input_skip = None
        if input_skip:
            if extra != 1:
                raise ValueError("input_skip needs an encoder whose first stage has stride 2, "
                                 f"got {strides[0]}")
            skip_widths[-1] = input_skip
            self.input_skip = nn.Sequential(nn.Conv2d(in_channels, input_skip, 3, padding=1),
                                            nn.BatchNorm2d(input_skip), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(DoubleConv(widths[k] + skip_widths[k], widths[k + 1], 1, True)
                                    for k in range(n_blocks))
        self.head = nn.Conv2d(widths[-1], num_classes, 1)
        self.upsample_to_skip = Resize("bilinear", align_corners=False)
        decoder = [self.blocks] + ([self.input_skip] if self.input_skip is not None else [])
        init_decoder(nn.ModuleList(decoder), self.head)

    @property
    def total_stride(self) -> int:
        """The encoder's deepest stride (see ``models.geometry``)."""
        return self.min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.check_min_size(x, self.min_size, "this encoder's U-Net")
        if self.input_scale > 1:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear",
                              align_corners=False)
        height, width = x.shape[-2:]
        stages = self.encoder(x)
        if self.input_skip is not None:
            stages.insert(0, self.input_skip(x))
        d = stages.pop()
        for k, block in enumerate(self.blocks):
            if stages:
                skip = stages.pop()
                d = torch.cat([skip, self.upsample_to_skip(d, skip.shape[-2:])], dim=1)
            else:
                # Skip-less doublings: stride 2**(remaining) of the input, the last at H x W.
                scale = 1 << (len(self.blocks) - k - 1)
                size = [-(-height // scale), -(-width // scale)]
                d = F.interpolate(d, size=size, mode="bilinear", align_corners=False)
            d = block(d)
        logits = self.head(d)
        return F.avg_pool2d(logits, self.input_scale) if self.input_scale > 1 else logits


@register_model
def vgg16_unet(in_channels: int = 3, num_classes: int = 1, batch_norm: bool = False,
               decoder_channels: Sequence[int] = DECODER_CHANNELS[:4],
               pretrained: bool | str | None = None) -> EncoderUNet:
    """U-Net on VGG16's five stages (skips at strides 1-8, bottom at 16). ``batch_norm``
    selects the ``vgg16_bn`` encoder; ``pretrained``: True (torchvision URL of the chosen
    layout), or a path or URL of torchvision weights."""
    model = EncoderUNet(VGG16Encoder(in_channels, batch_norm), num_classes, decoder_channels)
    load_pretrained(model.encoder, pretrained, "vgg16_bn" if batch_norm else "vgg16",
                    lambda state: vgg16_state_dict_for_encoder(state, in_channels, batch_norm))
    return model


@register_model
def resnet50_unet(in_channels: int = 3, num_classes: int = 1,
                  decoder_channels: Sequence[int] = DECODER_CHANNELS,
                  pretrained: bool | str | None = None) -> EncoderUNet:
    """U-Net on ResNet50 (skips: stem at stride 2, layer1-3; bottom: layer4 at 32).
    ``pretrained``: True (torchvision URL), or a path or URL of torchvision ResNet50 weights."""
    model = EncoderUNet(ResNet50Encoder(in_channels, with_stem=True), num_classes,
                        decoder_channels)
    load_pretrained(model.encoder, pretrained, "resnet50",
                    lambda state: resnet_state_dict_for_encoder(state, in_channels, 50))
    return model


@register_model
def resnet34_unet_concat(in_channels: int = 3, num_classes: int = 2,
                         decoder_channels: Sequence[int] = DECODER_CHANNELS,
                         pretrained: bool | str | None = None) -> EncoderUNet:
    """U-Net on ResNet34 with concatenated skips (stem at stride 2, layer1-3; bottom: layer4
    at 32): segmentation_models.pytorch's ``Unet("resnet34")`` layout, next to the LinkNet
    decoder of ``resnet34_unet``. ``pretrained``: True (torchvision URL), or a path or URL of
    torchvision ResNet34 weights."""
    model = EncoderUNet(ResNet34Encoder(in_channels, with_stem=True), num_classes,
                        decoder_channels)
    load_pretrained(model.encoder, pretrained, "resnet34",
                    lambda state: resnet_state_dict_for_encoder(state, in_channels, 34))
    return model
