"""VGG16 (Simonyan & Zisserman 2015) as the FCN backbone.

``features`` is built with torchvision's layer indices (``features.0`` ... ``features.28``) so a
torchvision ImageNet state_dict maps onto it key for key. The classifier's fully connected fc6
and fc7 become convolutions (7x7 and 1x1), the "convolutionalization" of Long et al.
"""
from __future__ import annotations

import torch
import torch.nn as nn

# torchvision's "D" configuration: channel counts, "M" = 2x2 max-pool.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16Backbone(nn.Module):
    """VGG16 conv layers plus fc6/fc7 as convolutions.

    Args:
        first_padding: padding of conv1_1. The FCN reference uses 100 so that any input,
            however small, survives the 32x reduction and the 7x7 fc6; the extra margin is
            cropped away after upsampling.
        ceil_mode: max-pool rounding; the Caffe reference rounds up.

    ``forward`` returns ``(pool3, pool4, fc7)``: strides 8, 16, 32; channels 256, 512, 4096
    (see ``stage_channels``).
    """

    stage_channels = (256, 512, 4096)
    stage_strides = (8, 16, 32)

    def __init__(self, first_padding: int = 100, ceil_mode: bool = True, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, v in enumerate(VGG16_CFG):
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=ceil_mode))
            else:
                layers.append(nn.Conv2d(c_in, v, 3, padding=first_padding if i == 0 else 1))
                layers.append(nn.ReLU(inplace=True))
                c_in = v
        self.features = nn.Sequential(*layers)
        # indices just after pool3 and pool4 in torchvision's numbering
        self._pool3, self._pool4 = 17, 24
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        # Element-wise, as Caffe's Dropout layer in the reference nets (Dropout2d would drop
        # whole fc6/fc7 maps instead).
        self.drop = nn.Dropout(dropout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pool3 = self.features[: self._pool3](x)
        pool4 = self.features[self._pool3: self._pool4](pool3)
        pool5 = self.features[self._pool4:](pool4)
        fc6 = self.drop(self.relu(self.fc6(pool5)))
        fc7 = self.drop(self.relu(self.fc7(fc6)))
        return pool3, pool4, fc7


def vgg16_to_fcn_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a torchvision VGG16 state_dict into a :class:`VGG16Backbone` state_dict.

    ``features.*`` keep their names; ``classifier.0`` (25088 -> 4096) becomes the 7x7 conv fc6,
    ``classifier.3`` (4096 -> 4096) the 1x1 conv fc7; the ImageNet classifier
    ``classifier.6`` is dropped. Raises ValueError naming any missing, unexpected or
    mis-shaped key.
    """
    expected = VGG16Backbone().state_dict()
    out: dict[str, torch.Tensor] = {}
    renames = {"classifier.0": ("fc6", (4096, 512, 7, 7)), "classifier.3": ("fc7", (4096, 4096, 1, 1))}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if key.startswith("features."):
            out[key] = value
        elif prefix in renames:
            name, shape = renames[prefix]
            out[f"{name}.{leaf}"] = value.reshape(shape) if leaf == "weight" else value
        elif prefix == "classifier.6":
            continue  # the 1000-way ImageNet classifier has no place in FCN
        else:
            raise ValueError(f"unexpected key in VGG16 state_dict: {key!r}")
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ValueError(f"VGG16 state_dict is missing keys: {missing}")
    for key, value in out.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"VGG16 key {key!r} has shape {tuple(value.shape)}, "
                             f"expected {tuple(expected[key].shape)}")
    return out
