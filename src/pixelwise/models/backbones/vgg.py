"""VGG16 (Simonyan & Zisserman 2015): the FCN backbone and a plain five-stage encoder.

``features`` is built with torchvision's layer indices (``features.0`` ... ``features.28`` for
``vgg16``, ``features.0`` ... ``features.43`` for ``vgg16_bn``) so a torchvision ImageNet
state_dict maps onto it key for key. For FCN, the classifier's fully connected fc6 and fc7
become convolutions (7x7 and 1x1), the "convolutionalization" of Long et al.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..weights import adapt_input_channels, check_state_dict

# torchvision's "D" configuration: channel counts, "M" = 2x2 max-pool.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_features(in_channels: int = 3, batch_norm: bool = False, first_padding: int = 1,
                   ceil_mode: bool = False) -> nn.Sequential:
    """torchvision's ``vgg16`` / ``vgg16_bn`` ``features``: conv (+ BatchNorm) + ReLU per
    layer, a 2x2 max-pool after each of the five stages, same indices as torchvision."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, v in enumerate(VGG16_CFG):
        if v == "M":
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=ceil_mode))
            continue
        layers.append(nn.Conv2d(c_in, v, 3, padding=first_padding if i == 0 else 1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        c_in = v
    return nn.Sequential(*layers)


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
        self.features = vgg16_features(3, False, first_padding, ceil_mode)
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
    check_state_dict(out, expected, "VGG16")
    return out


class VGG16Encoder(nn.Module):
    """VGG16 or VGG16-BN convolutions as a five-stage encoder (no classifier).

    Args:
        in_channels: image channels.
        batch_norm: ``vgg16_bn`` layout (BatchNorm after every conv) instead of ``vgg16``.

    ``forward`` returns the five stages' outputs *before* their max-pool: strides
    ``stage_strides`` (1 ... 16), channels ``stage_channels``. :meth:`stage` runs one
    stage's convolutions alone, for decoders that pool themselves (SegNet keeps the
    pooling indices).
    """

    stage_channels = (64, 128, 256, 512, 512)
    stage_strides = (1, 2, 4, 8, 16)

    def __init__(self, in_channels: int = 3, batch_norm: bool = False):
        super().__init__()
        self.features = vgg16_features(in_channels, batch_norm)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        # stage i = features[starts[i]:pools[i]] (convs only); the pool at pools[i] follows.
        self._bounds = list(zip([0] + [p + 1 for p in pools[:-1]], pools))

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run stage ``index``'s convolutions (no pooling) on ``x``."""
        start, stop = self._bounds[index]
        return self.features[start:stop](x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stages = []
        for i, (start, stop) in enumerate(self._bounds):
            if i > 0:
                x = self.features[start - 1](x)  # the previous stage's max-pool
            x = self.features[start:stop](x)
            stages.append(x)
        return stages


def vgg16_state_dict_for_encoder(state_dict: dict[str, torch.Tensor], in_channels: int = 3,
                                 batch_norm: bool = False) -> dict[str, torch.Tensor]:
    """A torchvision ``vgg16`` / ``vgg16_bn`` state_dict -> :class:`VGG16Encoder` state_dict.

    Keeps ``features.*`` (the classifier has no place in a segmentation encoder), adapts the
    first conv to ``in_channels``, and raises ValueError naming missing, unexpected or
    mis-shaped keys (a ``vgg16`` file offered to a BatchNorm encoder fails here).
    """
    out = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    if "features.0.weight" in out:
        out["features.0.weight"] = adapt_input_channels(out["features.0.weight"], in_channels)
    expected = VGG16Encoder(in_channels, batch_norm).state_dict()
    check_state_dict(out, expected, "VGG16-BN" if batch_norm else "VGG16")
    return out
