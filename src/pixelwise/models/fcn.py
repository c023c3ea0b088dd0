"""Fully Convolutional Networks (Long, Shelhamer & Darrell, "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015 / TPAMI 2017), VGG16 versions FCN-32s, FCN-16s and FCN-8s.

Follows the reference Caffe nets (fcn.berkeleyvision.org, voc-fcn*s): conv1_1 padded by 100,
max-pools rounding up, fc6/fc7 as 7x7 and 1x1 convolutions, zero-initialised score layers on
fc7, pool4 (16s, 8s) and pool3 (8s), fusion by addition, and upsampling by transposed
convolutions initialised to bilinear interpolation and kept fixed. Each fused or upsampled
map is cropped at the reference's offsets, so the logits are aligned to the input pixel grid
for any input size.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .backbones.vgg import VGG16Backbone, vgg16_to_fcn_state_dict
from .registry import register_model
from .weights import load_state_dict, normalization_of, resolve_pretrained

# Crop offsets of the reference nets (Caffe "Crop" layers), in pixels of the larger map.
POOL4_OFFSET, POOL3_OFFSET = 5, 9
FINAL_OFFSET = {32: 19, 16: 27, 8: 31}


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights ``(C, C, k, k)`` that make a stride-``k//2`` transposed conv bilinear upsampling.

    Each channel is upsampled on its own (diagonal), as in the reference ``upsample_filt``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = (filt1d[:, None] * filt1d[None, :]).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


def upsampler(channels: int, factor: int, learnable: bool) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    up.weight.requires_grad_(learnable)
    return up


def score_layer(in_channels: int, num_classes: int) -> nn.Conv2d:
    score = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(score.weight)  # the reference zero-initialises every score layer
    nn.init.zeros_(score.bias)
    return score


def crop_like(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    return x[..., offset:offset + height, offset:offset + width]


class FCN(nn.Module):
    """FCN on VGG16 with output stride 32, 16 or 8.

    Args:
        num_classes: output channels (PASCAL VOC: 21).
        stride: 32, 16 or 8 for FCN-32s / 16s / 8s.
        learnable_upsampling: train the transposed convolutions (the reference keeps them
            fixed at bilinear interpolation).
        dropout: dropout after fc6 and fc7.

    Shape:
        input ``(N, 3, H, W)`` of any size; output ``(N, num_classes, H, W)``.
    """

    total_stride = 32  # five 2x2 max-pools, whichever stride the logits fuse at (see models.geometry)

    def __init__(self, num_classes: int = 21, stride: int = 8, learnable_upsampling: bool = False,
                 dropout: float = 0.5):
        super().__init__()
        if stride not in FINAL_OFFSET:
            raise ValueError(f"stride must be 32, 16 or 8, got {stride}")
        self.stride = stride
        self.backbone = VGG16Backbone(first_padding=100, ceil_mode=True, dropout=dropout)
        c3, c4, c7 = self.backbone.stage_channels
        self.score_fr = score_layer(c7, num_classes)
        if stride <= 16:
            self.score_pool4 = score_layer(c4, num_classes)
            self.upscore2 = upsampler(num_classes, 2, learnable_upsampling)
        if stride == 8:
            self.score_pool3 = score_layer(c3, num_classes)
            self.upscore_pool4 = upsampler(num_classes, 2, learnable_upsampling)
        self.upscore = upsampler(num_classes, stride, learnable_upsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pool3, pool4, fc7 = self.backbone(x)
        score = self.score_fr(fc7)
        if self.stride <= 16:
            score = self.upscore2(score)
            score = score + crop_like(self.score_pool4(pool4), POOL4_OFFSET, *score.shape[-2:])
        if self.stride == 8:
            score = self.upscore_pool4(score)
            score = score + crop_like(self.score_pool3(pool3), POOL3_OFFSET, *score.shape[-2:])
        return crop_like(self.upscore(score), FINAL_OFFSET[self.stride], height, width)

    def load_backbone(self, source: str | os.PathLike) -> None:
        """Load torchvision ImageNet VGG16 weights (path or URL) into the backbone, strictly."""
        state = vgg16_to_fcn_state_dict(load_state_dict(source))
        self.backbone.load_state_dict(state, strict=True)
        self.backbone.pretrained_normalization = normalization_of("vgg16")


def _fcn(stride: int, num_classes: int, learnable_upsampling: bool, dropout: float,
         pretrained: bool | str | None) -> FCN:
    model = FCN(num_classes, stride, learnable_upsampling, dropout)
    source = resolve_pretrained(pretrained, "vgg16")
    if source is not None:
        model.load_backbone(source)
    return model


@register_model
def fcn32s(num_classes: int = 21, learnable_upsampling: bool = False, dropout: float = 0.5,
           pretrained: bool | str | None = None) -> FCN:
    """FCN-32s. ``pretrained``: True (torchvision URL), a path or URL of VGG16 weights."""
    return _fcn(32, num_classes, learnable_upsampling, dropout, pretrained)


@register_model
def fcn16s(num_classes: int = 21, learnable_upsampling: bool = False, dropout: float = 0.5,
           pretrained: bool | str | None = None) -> FCN:
    """FCN-16s: FCN-32s plus a pool4 score layer fused at stride 16."""
    return _fcn(16, num_classes, learnable_upsampling, dropout, pretrained)


@register_model
def fcn8s(num_classes: int = 21, learnable_upsampling: bool = False, dropout: float = 0.5,
          pretrained: bool | str | None = None) -> FCN:
    """FCN-8s: FCN-16s plus a pool3 score layer fused at stride 8."""
    return _fcn(8, num_classes, learnable_upsampling, dropout, pretrained)
