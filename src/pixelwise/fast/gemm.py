"""Convolutions computed as one matrix product on channels_last tensors (CPU training).

Two kinds of convolution run far below the matmul rate in PyTorch's CPU training step, one
thread, batch 4 (forward + backward, channels_last, measured layer by layer):

- stride-1 1x1 convolutions: PyTorch sends them to its generic im2col path at small batches;
  as a matrix product they are 0.94-1.66x as fast (ResNet50 bottlenecks, attention gates,
  LinkNet decoders, heads), because a channels_last activation already *is* the
  ``(N*H*W, C)`` matrix: no copy at all.
- FCN's fc6, a 7x7 convolution with 4096 outputs over a 15 x 15 map: oneDNN takes 5.3 s
  forward + backward, unfolding the patches once and multiplying takes 2.4 s. Unfolding
  copies ``N*Ho*Wo x C*kh*kw`` values, cheap against ``2 * out_channels`` FLOPs per value
  only when the output is wide, hence :data:`MIN_WIDE_OUT`.

:func:`use_gemm_convs` swaps such ``nn.Conv2d`` layers for :class:`GemmConv2d`, and the deep
3x3 ones for :class:`~pixelwise.fast.winograd.WinogradConv2d` (36 matrix products, 4x fewer
FLOPs). Both keep the same parameters (same state dict) and compute the same function up to
float rounding.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import _checks
from .winograd import WinogradConv2d, winograd_eligible

# k x k convolutions (k > 1, no padding) with at least this many outputs go through a GEMM.
MIN_WIDE_OUT = 1024


def gemm_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` (stride 1, no padding, no groups) as one matrix product.

    Fast when ``x`` and ``weight`` are channels_last (both are then views, but for the patch
    unfolding of a k x k kernel); correct for any layout. The result is channels_last.
    """
    n, o = x.shape[0], weight.shape[0]
    kh, kw = weight.shape[-2:]
    rows = x.permute(0, 2, 3, 1)  # (N, H, W, C)
    if (kh, kw) != (1, 1):
        # (N, Ho, Wo, C, kh, kw) -> (N, Ho, Wo, kh, kw, C): the order of a channels_last weight
        rows = rows.unfold(1, kh, 1).unfold(2, kw, 1).permute(0, 1, 2, 4, 5, 3)
    ho, wo = rows.shape[1:3]
    cols = rows.reshape(n * ho * wo, -1)
    matrix = weight.permute(0, 2, 3, 1).reshape(o, -1)  # (O, kh * kw * C)
    out = cols @ matrix.t() if bias is None else torch.addmm(bias, cols, matrix.t())
    return out.view(n, ho, wo, o).permute(0, 3, 1, 2)


class GemmConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (stride 1, no padding, no groups) that runs as :func:`gemm_conv2d`.

    Scripting, tracing and ONNX export see the plain convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _checks.capturing_graph() or x.dim() != 4:
            return super().forward(x)
        return gemm_conv2d(x, self.weight, self.bias)


def _adopt(cls: type, conv: nn.Conv2d) -> nn.Conv2d:
    """A ``cls`` (an nn.Conv2d subclass) with ``conv``'s settings holding ``conv``'s own
    parameter objects, so optimisers built on them stay valid."""
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
              padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
              bias=conv.bias is not None, padding_mode=conv.padding_mode,
              device="meta")  # meta: no memory for weights
    new.weight, new.bias = conv.weight, conv.bias
    return new.train(conv.training)


def gemm_eligible(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` that a matrix product computes faster (see the module text)."""
    if type(conv) is not nn.Conv2d:
        return False
    pointwise = conv.kernel_size == (1, 1)
    unpadded = conv.padding in ((0, 0), "valid") or (pointwise and conv.padding == "same")
    plain = conv.groups == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1) and unpadded
    return plain and (pointwise or conv.out_channels >= MIN_WIDE_OUT)


def use_gemm_convs(model: nn.Module) -> int:
    """Replace every :func:`gemm_eligible` convolution of ``model`` by a :class:`GemmConv2d`,
    and every :func:`~pixelwise.fast.winograd.winograd_eligible` one by a
    :class:`~pixelwise.fast.winograd.WinogradConv2d`, in place; returns how many.

    Meant for a channels_last model (``pixelwise train`` and ``optimize_for_inference`` call
    it); a model with parameters off the CPU is left alone (cuDNN is fast there). Parameters,
    buffers and state-dict keys are unchanged.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        return 0
    swaps = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children()
             if gemm_eligible(child) or winograd_eligible(child)]
    for parent, name, child in swaps:
        setattr(parent, name, _adopt(GemmConv2d if gemm_eligible(child) else WinogradConv2d, child))
    return len(swaps)
