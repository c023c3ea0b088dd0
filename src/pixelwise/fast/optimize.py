"""The fast path, applied to a built model: for training (``train.fast``, the default) and
for inference (``Predictor(fast=True)``, ``pixelwise predict --fast``), without changing
results beyond float tolerance. The models themselves are plain PyTorch; everything here
swaps modules or changes memory layouts from outside.

Training: channels_last weights and inputs, the layout modules of :mod:`pixelwise.fast.layout`,
the convolutions of :mod:`pixelwise.fast.gemm`, the optimisers of :mod:`pixelwise.fast.optim`
and the allocator settings of :mod:`pixelwise.fast.allocator`. Inference:

- BatchNorm folding (:mod:`pixelwise.fast.fold`).
- ``channels_last``: NHWC weights let oneDNN convolutions skip layout reorders; on CPU the
  1x1 and fc-like convolutions then run as matrix products and the deep 3x3 ones by
  Winograd's F(4x4, 3x3) (:func:`pixelwise.fast.gemm.use_gemm_convs`; ``fcn8s`` at
  512 x 512, batch 1, one thread: 3.12 -> 2.71 s by the products, 2.25 -> 1.81 s by Winograd).
- ``torch.compile`` with inductor and freezing (weights become constants, so inductor can
  pre-pack them and fold more), only useful under ``torch.no_grad`` / inference mode.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .fold import fold_batchnorm
from .gemm import use_gemm_convs
from .layout import use_layout_modules


def optimize_for_training(model: nn.Module) -> nn.Module:
    """``model`` (on its device) made fast for training, in place: channels_last weights, the
    layout modules, and on CPU 1x1 and fc-like convolutions as matrix products and deep 3x3
    ones by Winograd's F(4x4, 3x3). Same parameters, state dict and function; feed it
    channels_last inputs."""
    model.to(memory_format=torch.channels_last)
    use_layout_modules(model)
    use_gemm_convs(model)  # CPU only
    return model


def optimize_for_inference(model: nn.Module, fold_bn: bool = True, channels_last: bool = False,
                           compile: bool = False, freezing: bool = True,
                           inplace: bool = False) -> nn.Module:
    """Return a faster eval-mode version of ``model`` with the same outputs (float tolerance).

    Args:
        model: a model (logits out).
        fold_bn: fold BatchNorm into the preceding convolutions.
        channels_last: convert the weights to NHWC; convolutions then run (and return) NHWC,
            on CPU without ``compile`` with the GEMM convolutions of ``fast.gemm``.
        compile: wrap with ``torch.compile`` (inductor). The first call compiles (seconds to
            minutes); every new input shape compiles again.
        freezing: with ``compile``, let inductor treat the weights as constants. Call the
            result under ``torch.inference_mode()`` / ``torch.no_grad()``.
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        The optimised module (a compiled wrapper when ``compile``; the original model stays
        reachable as ``._orig_mod`` there).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fold_bn:
        model = fold_batchnorm(model, inplace=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        use_layout_modules(model)
        if not compile:  # inductor chooses its own convolution kernels
            use_gemm_convs(model)
    if compile:
        model = torch.compile(model, backend="inductor", options={"freezing": freezing})
    return model
