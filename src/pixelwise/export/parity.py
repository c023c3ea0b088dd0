"""Parity of an exported model with the checkpoint's PyTorch model: one check, one tolerance.

Both exports (ONNX, TorchScript) are run on two inputs and compared with the checkpoint's own
model: another batch size and another (odd) side catch a graph whose sizes were baked in at
tracing, and the tolerance catches a graph that computes something else.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..io.checkpoint import Checkpoint
from ..errors import PixelwiseError
from ..models import geometry

# |export - PyTorch| <= TOLERANCE * (1 + |PyTorch|) on every logit (torch.allclose with
# atol = rtol). Measured on the zoo: below 1e-6; folding BatchNorm moves logits by ~1e-7.
TOLERANCE = 1e-4

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def example_input(ckpt: Checkpoint, size: int | None = None, batch: int = 1) -> torch.Tensor:
    """A seeded random input the model accepts: ``size`` pixels, or the smallest valid >= 64."""
    size = size if size is not None else geometry.valid_input_size(ckpt.model, 64)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, ckpt.in_channels, size, size, generator=generator)


def parity_inputs(ckpt: Checkpoint) -> list[torch.Tensor]:
    """The two inputs of :func:`check_parity`: batch 2 at the smallest valid size >= 64,
    batch 1 at the smallest >= 81 (odd for padded models)."""
    return [example_input(ckpt, geometry.valid_input_size(ckpt.model, 64), batch=2),
            example_input(ckpt, geometry.valid_input_size(ckpt.model, 81), batch=1)]


def check_parity(what: str, ckpt: Checkpoint, exported: ModelFn) -> float:
    """Compare ``exported`` with ``ckpt.model`` on :func:`parity_inputs`.

    Args:
        what: the export's name in the error (``"ONNX export of 'unet'"``).
        ckpt: the checkpoint the export came from.
        exported: ``(N, C, H, W) float32 tensor -> logits tensor``.

    Returns:
        The largest absolute difference seen.

    Raises:
        PixelwiseError: another shape, or a difference beyond :data:`TOLERANCE`.
    """
    worst = 0.0
    ckpt.model.eval()
    for x in parity_inputs(ckpt):
        with torch.no_grad():
            want, got = ckpt.model(x), exported(x)
        if tuple(want.shape) != tuple(got.shape):
            raise PixelwiseError(f"{what} returns shape {tuple(got.shape)} for input "
                                 f"{tuple(x.shape)}, PyTorch {tuple(want.shape)}")
        worst = max(worst, float((got - want).abs().max()))
        if not torch.allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE):
            raise PixelwiseError(f"{what} does not reproduce the model on input "
                                 f"{tuple(x.shape)}: max |difference| {worst:.2e} beyond the "
                                 f"tolerance {TOLERANCE:g}")
    return worst
