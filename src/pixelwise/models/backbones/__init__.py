"""Backbones with torchvision's module names, so ImageNet checkpoints load strictly."""
from .resnet import ResNet34Encoder, resnet_state_dict_for_encoder
from .vgg import VGG16Backbone, vgg16_to_fcn_state_dict

__all__ = ["ResNet34Encoder", "VGG16Backbone", "resnet_state_dict_for_encoder",
           "vgg16_to_fcn_state_dict"]
