"""Memory-layout helpers for the training step.

Training runs channels_last by default (``train.channels_last``). Concatenating skips breaks
that layout on the way back: the gradient autograd hands an upsampling layer is a channel
slice of the concatenation's gradient, so it is dense in neither layout, and
``upsample_*_backward`` then makes it NCHW-contiguous and takes its slow NCHW path (for
VGG16-U-Net's decoder about 0.45 s of a 6.2 s step at batch 4, 256 x 256, one thread, of
which :func:`dense_grad` wins back about 0.3 s: the copy it makes is cheaper).
"""
from __future__ import annotations

import torch
import torch.fx


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-D tensor stored channels_last, and so not NCHW-contiguous (a tensor with C or
    H * W of 1 is both, and counts as NCHW)."""
    return (t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


class _DenseGrad(torch.autograd.Function):
    """Identity forward; the backward makes the gradient dense in the input's layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = is_channels_last(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        return grad.contiguous(memory_format=layout)


# A leaf for torch.fx (BatchNorm folding traces the models): call it as
# ``layout.dense_grad`` so the lookup sees fx's patch of this module's globals.
@torch.fx.wrap
def dense_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself; in training, its gradient arrives contiguous in ``x``'s layout.

    Put it between a layer whose backward wants a dense gradient (upsampling) and the
    ``torch.cat`` that slices that gradient. A no-op (not even a graph node) without
    autograd, so inference, export and tracing see plain ``x``.
    """
    if not (torch.is_grad_enabled() and x.requires_grad) or torch.jit.is_scripting():
        return x
    return _DenseGrad.apply(x)
