"""ResNet34 encoder (He et al. 2016) with torchvision's module names (conv1, bn1, layer1..4)."""
from __future__ import annotations

import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet34Encoder(nn.Module):
    """ResNet34 without the classifier. ``forward`` returns the four stage outputs.

    Shape: input ``(N, in_channels, H, W)``; stages at strides ``stage_strides`` with
    ``stage_channels`` channels (sizes are ``ceil(H / stride)``).
    """

    stage_channels = (64, 128, 256, 512)
    stage_strides = (4, 8, 16, 32)
    blocks = (3, 4, 6, 3)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for i, (c, n) in enumerate(zip(self.stage_channels, self.blocks)):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(*[BasicBlock(c_in if j == 0 else c, c, stride if j == 0 else 1)
                                    for j in range(n)])
            setattr(self, f"layer{i + 1}", layer)
            c_in = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            stages.append(x)
        return stages


def resnet_state_dict_for_encoder(state_dict: dict[str, torch.Tensor],
                                  in_channels: int = 3) -> dict[str, torch.Tensor]:
    """A torchvision ResNet34 state_dict -> :class:`ResNet34Encoder` state_dict.

    Drops the ImageNet classifier (``fc.*``). For ``in_channels != 3`` the first conv's RGB
    filters are adapted the usual way (summed to one channel, or repeated and rescaled).
    Raises ValueError naming missing, unexpected or mis-shaped keys.
    """
    out = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    w = out.get("conv1.weight")
    if w is not None and in_channels != w.shape[1]:
        if in_channels == 1:
            out["conv1.weight"] = w.sum(dim=1, keepdim=True)
        else:
            reps = -(-in_channels // w.shape[1])
            out["conv1.weight"] = w.repeat(1, reps, 1, 1)[:, :in_channels] * (w.shape[1] / in_channels)
    expected = ResNet34Encoder(in_channels).state_dict()
    missing, unexpected = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    if missing or unexpected:
        raise ValueError(f"ResNet34 state_dict does not match: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    for key, value in out.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"ResNet34 key {key!r} has shape {tuple(value.shape)}, "
                             f"expected {tuple(expected[key].shape)}")
    return out
