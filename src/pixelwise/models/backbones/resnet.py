"""ResNet34 and ResNet50 encoders (He et al. 2016) with torchvision's module names
(conv1, bn1, layer1..4), so torchvision's ImageNet checkpoints load strictly."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..weights import adapt_input_channels, check_state_dict


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and an identity (or 1x1 projection) shortcut: ResNet18/34."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _downsample(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4): ResNet50. The stride sits on the 3x3 conv, as in
    torchvision ("ResNet v1.5"), whose weights these names and shapes take."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def init_resnet(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: He-normal convolutions (fan-out), BatchNorm at
    weight 1 and bias 0. It matters when training from scratch: PyTorch's default conv
    init is about 2.4x narrower, which under Adam reads as a larger learning rate."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNetEncoder(nn.Module):
    """A ResNet without its classifier. ``forward`` returns the four stage outputs.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        blocks: blocks per stage (``(3, 4, 6, 3)`` for both ResNet34 and ResNet50).
        in_channels: image channels.

        with_stem: also return the stem's output (after conv1/bn1/relu, stride 2, 64
            channels) first, for decoders that want a skip at stride 2. No parameters change.

    Shape: input ``(N, in_channels, H, W)``; stages at strides ``stage_strides`` with
    ``stage_channels`` channels (sizes are ``ceil(H / stride)``).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: tuple[int, ...],
                 in_channels: int = 3, with_stem: bool = False):
        super().__init__()
        self.with_stem = with_stem
        stem = ((64,), (2,)) if with_stem else ((), ())
        self.stage_channels = stem[0] + tuple(c * block.expansion for c in (64, 128, 256, 512))
        self.stage_strides = stem[1] + (4, 8, 16, 32)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(*[block(c_in if j == 0 else c * block.expansion, c,
                                          stride if j == 0 else 1) for j in range(n)])
            setattr(self, f"layer{i + 1}", layer)
            c_in = c * block.expansion
        init_resnet(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        stages = [x] if self.with_stem else []
        x = self.maxpool(x)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            stages.append(x)
        return stages


class ResNet34Encoder(ResNetEncoder):
    """ResNet34 (basic blocks): stage channels 64, 128, 256, 512 (after the stem's 64)."""

    def __init__(self, in_channels: int = 3, with_stem: bool = False):
        super().__init__(BasicBlock, (3, 4, 6, 3), in_channels, with_stem)


class ResNet50Encoder(ResNetEncoder):
    """ResNet50 (bottleneck blocks): stage channels 256, 512, 1024, 2048 (after the stem's 64)."""

    def __init__(self, in_channels: int = 3, with_stem: bool = False):
        super().__init__(Bottleneck, (3, 4, 6, 3), in_channels, with_stem)


RESNET_ENCODERS = {34: ResNet34Encoder, 50: ResNet50Encoder}


def resnet_state_dict_for_encoder(state_dict: dict[str, torch.Tensor], in_channels: int = 3,
                                  depth: int = 34) -> dict[str, torch.Tensor]:
    """A torchvision ResNet34 / ResNet50 state_dict -> :class:`ResNetEncoder` state_dict.

    Drops the ImageNet classifier (``fc.*``). For ``in_channels != 3`` the first conv's RGB
    filters are adapted (:func:`~pixelwise.models.weights.adapt_input_channels`).
    Raises ValueError naming missing, unexpected or mis-shaped keys.
    """
    if depth not in RESNET_ENCODERS:
        raise ValueError(f"depth must be one of {sorted(RESNET_ENCODERS)}, got {depth}")
    out = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    if "conv1.weight" in out:
        out["conv1.weight"] = adapt_input_channels(out["conv1.weight"], in_channels)
    check_state_dict(out, RESNET_ENCODERS[depth](in_channels).state_dict(), f"ResNet{depth}")
    return out
