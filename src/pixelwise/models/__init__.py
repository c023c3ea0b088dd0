"""The model zoo: FCN-32s/16s/8s (VGG16), U-Net (valid and padded), ResNet34 U-Net, tiny U-Net,
and the U-Net zoo: UNet++, Attention U-Net, R2U-Net, R2AttU-Net, CE-Net, SegNet, VGG16 and
ResNet50 U-Nets."""
from .registry import build_model, list_models, register_model
from . import (attention_unet, ce_net, efficientnet_unet, encoder_unet, fcn,  # noqa: F401
               resnet_unet, segnet,
               unet, unet_plus_plus)  # (importing registers the builders)
from .attention_unet import AttentionUNet
from .ce_net import CENet
from .encoder_unet import EncoderUNet
from .fcn import FCN
from .resnet_unet import ResNetUNet
from .segnet import SegNet
from .unet import UNet
from .unet_plus_plus import NestedUNet

__all__ = ["build_model", "list_models", "register_model", "AttentionUNet", "CENet",
           "EncoderUNet", "FCN", "NestedUNet", "ResNetUNet", "SegNet", "UNet"]
