"""Export checkpoints to ONNX (dynamic batch/height/width) and TorchScript, metadata included."""
from .metadata import checkpoint_metadata
from .onnx import export_onnx, make_ort_session, read_onnx_metadata
from .torchscript import export_torchscript, load_torchscript

__all__ = ["checkpoint_metadata", "export_onnx", "make_ort_session", "read_onnx_metadata",
           "export_torchscript", "load_torchscript"]
