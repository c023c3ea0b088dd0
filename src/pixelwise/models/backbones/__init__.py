"""Backbones with torchvision's module names, so ImageNet checkpoints load strictly."""
from .resnet import (ResNet34Encoder, ResNet50Encoder, ResNetEncoder,
                     resnet_state_dict_for_encoder)
from .vgg import (VGG16Backbone, VGG16Encoder, vgg16_state_dict_for_encoder,
                  vgg16_to_fcn_state_dict)

__all__ = ["ResNet34Encoder", "ResNet50Encoder", "ResNetEncoder", "VGG16Backbone",
           "VGG16Encoder", "resnet_state_dict_for_encoder", "vgg16_state_dict_for_encoder",
           "vgg16_to_fcn_state_dict"]
