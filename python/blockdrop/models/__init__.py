"""Residual backbones for BlockDrop: CIFAR ResNets and wrapped torchvision ResNets."""

from .base import SHORTCUT_KINDS, BlockView, Chain, ResNetBackbone
from .cifar import CifarResNet, cifar_resnet, load_cifar_resnet
from .torchvision import TorchvisionResNet, from_torchvision

__all__ = [
    "SHORTCUT_KINDS",
    "BlockView",
    "Chain",
    "CifarResNet",
    "ResNetBackbone",
    "TorchvisionResNet",
    "cifar_resnet",
    "from_torchvision",
    "load_cifar_resnet",
]
