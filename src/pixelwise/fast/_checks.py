"""Checks shared by the fast convolution modules."""
from __future__ import annotations

import torch


def capturing_graph() -> bool:
    """Scripting, tracing or ONNX export: the fast CPU convolution modules (``fast.gemm``,
    ``fast.winograd``) then run as the plain ``nn.Conv2d`` they replace, so exported
    graphs hold standard convolutions."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
