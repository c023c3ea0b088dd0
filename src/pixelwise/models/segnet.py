"""SegNet (Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", IEEE TPAMI 2017).

The encoder is VGG16-BN's 13 convolutions (torchvision ``vgg16_bn`` names, so ImageNet
weights load strictly). Each 2x2 max-pool remembers where its maxima were; the decoder
mirrors the encoder and upsamples by *max-unpooling* with those indices (a sparse map, the
pooled value back at its original position), then densifies with 3x3 conv + BatchNorm +
ReLU. No skip features are stored, only the indices. The last conv gives the logits.

Unpooling restores the pre-pool size, so odd sizes (floored at a pooling) come back exactly.
It is written as a scatter into a zero map (:class:`MaxUnpool`): ``F.max_unpool2d`` checks
its output size against the input's in a way ONNX export with dynamic sizes cannot keep.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.vgg import VGG16Encoder, vgg16_state_dict_for_encoder
from . import _checks
from .registry import register_model
from .weights import load_pretrained

# Decoder convolutions per stage, deepest stage first: (in, out) pairs mirroring VGG16.
DECODER_CFG = [
    [(512, 512), (512, 512), (512, 512)],
    [(512, 512), (512, 512), (512, 256)],
    [(256, 256), (256, 256), (256, 128)],
    [(128, 128), (128, 64)],
    [(64, 64)],
]


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class MaxUnpool(nn.Module):
    """Put each value of ``x`` back at its max-pool ``indices`` (flat positions in a map of
    ``size``); zeros elsewhere. The same as ``F.max_unpool2d(x, indices, 2, 2, output_size=size)``,
    as a scatter into fresh zeros (in place: out of place it would copy them first).

    Shape: ``x`` and ``indices`` ``(N, C, h, w)`` -> ``(N, C, *size)``.
    """

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: list[int]) -> torch.Tensor:
        n, c = x.shape[:2]
        flat = x.new_zeros(n, c, size[0] * size[1])
        return flat.scatter_(2, indices.flatten(2), x.flatten(2)).view(n, c, size[0], size[1])


class SegNet(nn.Module):
    """VGG16-BN encoder, pooling indices, mirrored decoder.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).

    Shape:
        input ``(N, in_channels, H, W)`` with sides >= 32; output ``(N, num_classes, H, W)``.
    """

    total_stride = 32  # five 2x2 poolings (see models.geometry)

    def __init__(self, in_channels: int = 3, num_classes: int = 1):
        super().__init__()
        self.encoder = VGG16Encoder(in_channels, batch_norm=True)
        self.decoder = nn.ModuleList(
            nn.Sequential(*[m for c_in, c_out in stage for m in conv_bn_relu(c_in, c_out)])
            for stage in DECODER_CFG)
        self.head = nn.Conv2d(64, num_classes, 3, padding=1)
        self.unpool = MaxUnpool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.check_min_size(x, 32, "SegNet (five 2x2 poolings)")
        pooled: list[tuple[torch.Tensor, list[int]]] = []
        for i in range(len(DECODER_CFG)):
            x = self.encoder.stage(i, x)
            size = [x.shape[-2], x.shape[-1]]
            x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
            pooled.append((indices, size))
        for stage in self.decoder:
            indices, size = pooled.pop()
            x = stage(self.unpool(x, indices, size))
        return self.head(x)


@register_model
def segnet(in_channels: int = 3, num_classes: int = 1,
           pretrained: bool | str | None = None) -> SegNet:
    """SegNet on VGG16-BN. ``pretrained``: True (torchvision URL), or a path or URL of
    torchvision ``vgg16_bn`` weights for the encoder."""
    model = SegNet(in_channels, num_classes)
    load_pretrained(model.encoder, pretrained, "vgg16_bn",
                    lambda state: vgg16_state_dict_for_encoder(state, in_channels, True))
    return model
