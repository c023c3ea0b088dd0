"""models/geometry.py: sizes worked out by hand for the valid U-Net, and every registered
model's declared total stride."""
from __future__ import annotations

import pytest
import torch

from pixelwise.models import build_model, geometry, list_models
from pixelwise.models.probe import meta_forward, meta_model

from common import TINY

# A valid U-Net of depth 2 loses 4 px per level of two 3x3 convs. From a bottleneck input of b
# pixels: input 4b + 12 (exact: every pooling sees an even map), output 4b - 28, margin 20.
VALID2 = dict(in_channels=1, num_classes=1, base_channels=2, depth=2, padding="valid",
              batch_norm=False)

# Hand-known downsampling of each registered model (TINY's arguments).
STRIDES = {"unet": 8, "unet_small": 16, "unet_plus_plus": 8, "attention_unet": 8, "r2unet": 8,
           "r2attention_unet": 8, "fcn8s": 32, "fcn16s": 32, "fcn32s": 32, "segnet": 32,
           "resnet34_unet": 32, "resnet34_unet_concat": 32, "resnet50_unet": 32, "ce_net": 32,
           "vgg16_unet": 16, "efficientnet_lite0_unet": 32, "efficientnet_lite1_unet": 32,
           "efficientnet_lite2_unet": 32}


def test_valid_unet_sizes_by_hand():
    net = build_model("unet", **VALID2)
    assert geometry.shrinks(net) and geometry.margin(net) == 20
    assert geometry.valid_input_size(net, 37) == 80    # b = 17: output 40 >= 37
    assert geometry.valid_input_size(net, 50) == 92    # b = 20: output 52
    assert geometry.output_shape(net, 80, 92) == (40, 52)
    assert geometry.largest_valid_input(net, 64) == 64  # b = 13 exactly
    assert geometry.largest_valid_input(net, 70) == 68  # 70 -> output 28 -> b = 14
    with pytest.raises(ValueError, match="too small"):
        geometry.largest_valid_input(net, 20)
    assert geometry.total_stride(net) == 4


def test_padded_models_keep_their_size():
    net = build_model("unet", **{**VALID2, "padding": "same"})
    assert not geometry.shrinks(net) and geometry.margin(net) == 0
    assert geometry.valid_input_size(net, 37) == 37
    assert geometry.output_shape(torch.nn.Identity(), 5, 7) == (5, 7)  # declares nothing
    assert geometry.total_stride(torch.nn.Identity()) == 1


def test_search_without_valid_input_size():
    class Shrink(torch.nn.Module):  # valid 5x5 conv: 2 px per side, any size >= 5
        def output_shape(self, h, w):
            if min(h, w) < 5:
                raise ValueError("too small")
            return h - 4, w - 4

    assert geometry.valid_input_size(Shrink(), 10) == 14
    assert geometry.margin(Shrink()) == 2


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_model_declares_its_stride(name):
    assert sorted(STRIDES) == list_models()
    net = meta_model(name, TINY[name])
    assert hasattr(type(net), "total_stride")  # declared by the class, not defaulted
    assert geometry.total_stride(net) == STRIDES[name]
    # A side of one stride reaches the deepest level as a single pixel: every model takes it.
    side = STRIDES[name]
    channels = TINY[name].get("in_channels", 3)
    assert meta_forward(net, channels, side, side)[-2:] == (side, side)
