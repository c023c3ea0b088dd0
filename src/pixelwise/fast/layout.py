"""Memory layout: the modules of a model that run channels_last (NHWC) without copies.

Training runs channels_last with ``train.fast`` (the default). Concatenating skips breaks
that layout on the way back: the gradient autograd hands an upsampling layer is a channel
slice of the concatenation's gradient, so it is dense in neither layout, and
``upsample_*_backward`` then makes it NCHW-contiguous and takes its slow NCHW path (for
VGG16-U-Net's decoder about 0.45 s of a 6.2 s step at batch 4, 256 x 256, one thread, of
which :func:`dense_grad` wins back about 0.3 s: the copy it makes is cheaper). SegNet's
unpooling scatters in the map's own layout for the same reason. :func:`use_layout_modules`
puts both into a built model; its ``forward()`` stays the paper's.
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn

from ..models.resize import Resize
from ..models.segnet import MaxUnpool


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


class DenseGradResize(Resize):
    """:class:`~pixelwise.models.resize.Resize` whose output's gradient arrives dense in the
    output's layout (:func:`dense_grad`): a resize feeds a ``torch.cat`` in the U-Net
    decoders."""

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        return dense_grad(super().forward(x, size))


class ChannelsLastMaxUnpool(MaxUnpool):
    """:class:`~pixelwise.models.segnet.MaxUnpool` that scatters a channels_last map in its own
    layout, so it is neither copied to NCHW nor handed on NCHW to the next convolution."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: list[int]) -> torch.Tensor:
        if not is_channels_last(x):
            return super().forward(x, indices, size)
        # the same scatter over (N, H*W, C), the map's order in memory
        n, c = x.shape[:2]
        flat = x.new_zeros(n, size[0] * size[1], c)
        rows = x.permute(0, 2, 3, 1).reshape(n, -1, c)
        positions = indices.permute(0, 2, 3, 1).reshape(n, -1, c)
        return flat.scatter_(1, positions, rows).view(n, size[0], size[1], c).permute(0, 3, 1, 2)


def use_layout_modules(model: nn.Module) -> int:
    """Replace, in place, every :class:`Resize` by a :class:`DenseGradResize` and every
    :class:`MaxUnpool` by a :class:`ChannelsLastMaxUnpool` (same outputs, no parameters, so
    state dicts are unchanged); returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is Resize:
                setattr(parent, name, DenseGradResize(child.mode, child.align_corners))
            elif type(child) is MaxUnpool:
                setattr(parent, name, ChannelsLastMaxUnpool())
            else:
                continue
            count += 1
    return count
