"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, CVPR 2016).

The deep 3x3 convolutions of the zoo (128 channels and more: VGG and SegNet stages 3-5,
ResNet bottlenecks, U-Net's lower levels) are matrix-bound: oneDNN runs them at the matmul
rate on one core. Winograd's F(4x4, 3x3) computes each 4 x 4 output tile from a 6 x 6 input
tile with 36 multiplications per channel pair instead of 144, as 36 independent matrix
products, so the same convolution costs 4x fewer FLOPs plus three cheap linear transforms
(one of cuDNN's algorithms for such layers). Measured on one core, batch 4, channels_last, tuned
allocator (a one-off script timing each layer both ways in one process),
forward + backward against oneDNN's: 256 -> 256 channels at 64 x 64 2.2x as fast, 512 -> 512
at 32 x 32 2.4x, 128 -> 128 at 128 x 128 1.3x, but 128 -> 64 at 128 x 128 0.97x and 64 -> 64
at 256 x 256 0.87x (the transforms are memory-bound, so few channels lose), hence
:data:`MIN_CHANNELS`.

Numerics: the transforms scale values by up to 8, so fp32 results differ from the direct
convolution by about 1e-5 of the output's range (direct against fp64: about 2e-6); the
backward pass is the exact adjoint of this forward computation.

Tensors here are NHWC: ``(N, H, W, C)`` views of channels_last ``(N, C, H, W)`` tensors.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _checks
from .layout import is_channels_last

# Both channel counts must reach this for a layer to use Winograd (see the module text).
MIN_CHANNELS = 128
# Below this many 4 x 4 output tiles in a batch the 36 products are too thin for the matmul
# kernel: forward + backward, 512 -> 512 channels, batch 4, one core: 16 x 16 maps (64 tiles)
# 1.58x as fast as oneDNN, 8 x 8 maps (16 tiles) 0.98x.
MIN_TILES = 64

_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


@functools.lru_cache(maxsize=8)
def _transforms(dtype: torch.dtype, device: torch.device):
    """The 2-D transforms as Kronecker products, acting on row-major flattened tiles:
    input (36, 36), filter (36, 9), output (16, 36)."""
    bt, g, at = (torch.tensor(m, dtype=torch.float64) for m in (_BT, _G, _AT))
    return tuple(torch.kron(m, m).to(dtype=dtype, device=device) for m in (bt, g, at))


def _grid(h: int, w: int) -> tuple[int, int]:
    """Rows and columns of 4 x 4 output tiles covering an h x w map."""
    return -(-h // 4), -(-w // 4)


def _input_tiles(xh: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """(N, H, W, C) -> the overlapping 6 x 6 tiles (stride 4) of its zero-padded copy,
    as (36, N*th*tw*C)."""
    h, w = xh.shape[1:3]
    padded = F.pad(xh, (0, 0, 1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))
    tiles = padded.unfold(1, 6, 4).unfold(2, 6, 4)  # (N, th, tw, C, 6, 6)
    return tiles.permute(4, 5, 0, 1, 2, 3).reshape(36, -1)


def _output_tiles(yh: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """(N, H, W, O) -> its disjoint 4 x 4 tiles (zero-padded to whole tiles), as (16, N*th*tw*O)."""
    n, h, w, o = yh.shape
    padded = F.pad(yh, (0, 0, 0, 4 * tw - w, 0, 4 * th - h))
    return padded.reshape(n, th, 4, tw, 4, o).permute(2, 4, 0, 1, 3, 5).reshape(16, -1)


def _untile(tiles: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """(4, 4, N, th, tw, O) tiles -> the (N, H, W, O) image they cover, cropped, contiguous."""
    th, tw, o = tiles.shape[3:]
    image = tiles.permute(2, 3, 0, 4, 1, 5).reshape(n, 4 * th, 4 * tw, o)
    return image if (4 * th, 4 * tw) == (h, w) else image[:, :h, :w].contiguous()


def _fold(tiles: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Adjoint of :func:`_input_tiles`: add the (6, 6, N, th, tw, C) overlapping tiles back
    into the (N, H, W, C) image (tiles overlap their neighbours by two rows and columns)."""
    n, th, tw, c = tiles.shape[2:]
    out = tiles.new_empty(n, th + 1, 4, tw + 1, 4, c)
    out[:, th].zero_()
    out[:, :, :, tw].zero_()
    t = tiles.permute(2, 3, 0, 4, 1, 5)  # (N, th, 6, tw, 6, C)
    out[:, :th, :, :tw].copy_(t[:, :, :4, :, :4])
    out[:, 1:, :2, :tw] += t[:, :, 4:, :, :4]
    out[:, :th, :, 1:, :2] += t[:, :, :4, :, 4:]
    out[:, 1:, :2, 1:, :2] += t[:, :, 4:, :, 4:]
    image = out.view(n, 4 * (th + 1), 4 * (tw + 1), c)
    return image[:, 1:h + 1, 1:w + 1].contiguous()


class _Winograd3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, padding=1)`` for a 3x3 weight, forward and backward by F(4x4, 3x3)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        o = weight.shape[0]
        th, tw = _grid(h, w)
        kb, kg, ka = _transforms(x.dtype, x.device)
        v = (kb @ _input_tiles(x.permute(0, 2, 3, 1), th, tw)).view(36, -1, c)
        u = (kg @ weight.permute(2, 3, 1, 0).reshape(9, c * o)).view(36, c, o)
        m = torch.bmm(v, u)
        y = (ka @ m.view(36, -1)).view(4, 4, n, th, tw, o)
        ctx.save_for_backward(v, u)
        ctx.shape = n, h, w, th, tw
        ctx.formats = tuple(torch.channels_last if is_channels_last(t) else torch.contiguous_format
                            for t in (x, weight))
        return _untile(y, n, h, w).permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable  # no double backward: a second derivative raises instead of lying
    def backward(ctx, grad: torch.Tensor):
        v, u = ctx.saved_tensors
        n, h, w, th, tw = ctx.shape
        c, o = u.shape[1:]
        kb, kg, ka = _transforms(grad.dtype, grad.device)
        dm = (ka.t() @ _output_tiles(grad.permute(0, 2, 3, 1), th, tw)).view(36, -1, o)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dv = torch.bmm(dm, u.transpose(1, 2))
            tiles = (kb.t() @ dv.view(36, -1)).view(6, 6, n, th, tw, c)
            dx = _fold(tiles, h, w).permute(0, 3, 1, 2).contiguous(memory_format=ctx.formats[0])
        if ctx.needs_input_grad[1]:
            du = torch.bmm(dm.transpose(1, 2), v)  # (36, O, C)
            # one (9, 36) x (36, C) product per output channel writes the channels_last
            # weight's (O, 3, 3, C) order directly: 5-9x faster than transposing
            # afterwards (256 and 512 channels, one thread)
            dw = torch.matmul(kg.t(), du.permute(1, 0, 2)).view(o, 3, 3, c).permute(0, 3, 1, 2)
            dw = dw.contiguous(memory_format=ctx.formats[1])
        return dx, dw


def _tiles(x: torch.Tensor) -> int:
    th, tw = _grid(*x.shape[-2:])
    return x.shape[0] * th * tw


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 ``weight`` by F(4x4, 3x3).

    Fast when ``x`` is channels_last (its NHWC view is then free); the result is channels_last.
    """
    y = _Winograd3x3.apply(x, weight)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 ``nn.Conv2d`` that runs as :func:`winograd_conv3x3` on CPU.

    Other devices and dtypes, autocast, batches of under :data:`MIN_TILES` output tiles,
    scripting, tracing and ONNX export run the plain convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (_checks.capturing_graph() or x.dim() != 4 or x.device.type != "cpu"
                or _tiles(x) < MIN_TILES
                or x.dtype not in (torch.float32, torch.float64)
                or torch.is_autocast_enabled("cpu")):  # bf16 transforms would lose the digits
            return super().forward(x)
        return winograd_conv3x3(x, self.weight, self.bias)


def winograd_eligible(conv: nn.Module) -> bool:
    """A plain 3x3 "same" ``nn.Conv2d`` with enough channels for Winograd to win."""
    if type(conv) is not nn.Conv2d:
        return False
    same = conv.padding in ((1, 1), "same") and conv.padding_mode == "zeros"
    plain = (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1)
             and conv.groups == 1 and same)
    return plain and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
