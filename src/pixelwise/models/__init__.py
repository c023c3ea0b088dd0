"""The model zoo: FCN-32s/16s/8s (VGG16), U-Net (valid and padded), ResNet34 U-Net, tiny U-Net."""
from .registry import build_model, list_models, register_model
from . import fcn, resnet_unet, unet  # noqa: F401  (importing registers the builders)
from .fcn import FCN
from .resnet_unet import ResNetUNet
from .unet import UNet

__all__ = ["build_model", "list_models", "register_model", "FCN", "ResNetUNet", "UNet"]
