"""Residual backbones for BlockDrop: CIFAR ResNets and wrapped torchvision and timm ResNets."""

from .base import SHORTCUT_KINDS, BlockView, Chain, ResNetBackbone
from .cifar import CifarResNet, cifar_resnet, load_cifar_resnet
from .timm import TimmResNet, from_timm
from .torchvision import TorchvisionResNet, from_torchvision
from .wrap import as_backbone, unwrap

__all__ = [
    "SHORTCUT_KINDS",
    "BlockView",
    "Chain",
    "CifarResNet",
    "ResNetBackbone",
    "TimmResNet",
    "TorchvisionResNet",
    "as_backbone",
    "cifar_resnet",
    "from_timm",
    "from_torchvision",
    "load_cifar_resnet",
    "unwrap",
]
