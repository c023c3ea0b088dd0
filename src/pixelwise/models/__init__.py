"""The model zoo: FCN-32s/16s/8s (VGG16), U-Net (valid and padded), ResNet34 U-Net, tiny U-Net."""
from .registry import build_model, list_models, register_model
from . import unet  # noqa: F401  (registers the builders)
from .unet import UNet

__all__ = ["build_model", "list_models", "register_model", "UNet"]
