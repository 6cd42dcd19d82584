"""Residual backbones for BlockDrop: CIFAR ResNets and wrapped torchvision and timm ResNets, by
name through :func:`get_model` (the grammar is in :mod:`.registry`), and the policy networks."""

from . import policy  # noqa: F401  (registers the policy spec kinds cifar, imagenet)
from .base import SHORTCUT_KINDS, BlockView, Chain, ResNetBackbone
from .cifar import CifarResNet, cifar_resnet, load_cifar_resnet
from .registry import (
    backbone_spec,
    build_backbone,
    build_policy,
    get_model,
    list_models,
    register_model,
    resolve_model,
)
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
    "backbone_spec",
    "build_backbone",
    "build_policy",
    "cifar_resnet",
    "from_timm",
    "from_torchvision",
    "get_model",
    "list_models",
    "load_cifar_resnet",
    "register_model",
    "resolve_model",
    "unwrap",
]
