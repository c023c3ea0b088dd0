"""pixelwise: semantic segmentation on PyTorch."""
from .io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .models import build_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["Checkpoint", "build_model", "list_models", "load_checkpoint", "register_model",
           "save_checkpoint"]
