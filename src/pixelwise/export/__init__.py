"""Export checkpoints to ONNX (dynamic batch/height/width) and TorchScript, metadata included.

Running an exported ONNX model is the inference backend's job (``inference.backend``)."""
from .onnx import export_onnx, onnx_bytes, verify_onnx
from .parity import TOLERANCE
from .torchscript import export_torchscript, load_torchscript

__all__ = ["export_onnx", "onnx_bytes", "verify_onnx", "TOLERANCE", "export_torchscript",
           "load_torchscript"]
