"""Backbones with torchvision's (or timm's) module names: ImageNet checkpoints load strictly."""
from .efficientnet import (EfficientNetLite, EfficientNetLiteEncoder,
                           efficientnet_lite_from_eff_pytorch,
                           efficientnet_lite_state_dict_for_encoder)
from .resnet import (ResNet34Encoder, ResNet50Encoder, ResNetEncoder,
                     resnet_state_dict_for_encoder)
from .vgg import (VGG16Backbone, VGG16Encoder, vgg16_state_dict_for_encoder,
                  vgg16_to_fcn_state_dict)

__all__ = ["EfficientNetLite", "EfficientNetLiteEncoder", "ResNet34Encoder", "ResNet50Encoder",
           "ResNetEncoder", "VGG16Backbone", "VGG16Encoder", "efficientnet_lite_from_eff_pytorch",
           "efficientnet_lite_state_dict_for_encoder", "resnet_state_dict_for_encoder",
           "vgg16_state_dict_for_encoder", "vgg16_to_fcn_state_dict"]
