"""``as_backbone``: any supported ResNet as a :class:`~blockdrop.models.ResNetBackbone`.

Accepted: a ``ResNetBackbone`` itself, a torchvision ``ResNet`` or a timm ResNet (wrapped on the
fly; the wrapper shares the user's weights), each optionally inside DistributedDataParallel,
DataParallel or ``torch.compile`` wrappers, however nested. A user module is wrapped once: the
wrapper is cached in a :class:`weakref.WeakKeyDictionary` keyed by the module. Nothing is set on
the user's module, and the cache entry dies with it: the wrapper holds a *view* of the module (a
shallow copy sharing its children, parameters, buffers and hooks -- the same dicts, so later
changes such as a replaced ``fc`` show through), never the module itself, which would keep the
key alive.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from .base import ResNetBackbone

__all__ = ["as_backbone", "unwrap"]

_WRAPPERS: weakref.WeakKeyDictionary[nn.Module, ResNetBackbone] = weakref.WeakKeyDictionary()


def unwrap(model: Any) -> Any:
    """The module inside DistributedDataParallel / DataParallel (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers, however nested; anything else as it is."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _wrap(model: nn.Module) -> ResNetBackbone | None:
    """A torchvision or timm ResNet as a backbone over a view of it (see the module docstring),
    or None."""
    import copy

    import torchvision

    from .timm import from_timm, is_timm_resnet
    from .torchvision import from_torchvision

    if isinstance(model, torchvision.models.ResNet):
        return from_torchvision(copy.copy(model))
    return from_timm(copy.copy(model)) if is_timm_resnet(model) else None


def as_backbone(model: Any) -> ResNetBackbone:
    """``model`` (see the module docstring) as a ``ResNetBackbone``; ValueError naming ``model``
    for anything else."""
    model = unwrap(model)
    if isinstance(model, ResNetBackbone):
        return model
    if isinstance(model, nn.Module):
        cached = _WRAPPERS.get(model)
        if cached is not None:
            return cached
        wrapped = _wrap(model)
        if wrapped is not None:
            _WRAPPERS[model] = wrapped
            return wrapped
    raise ValueError(
        "model: expected a blockdrop.models.ResNetBackbone (cifar_resnet, load_cifar_resnet, "
        "from_torchvision, from_timm), a torchvision or timm ResNet (optionally inside "
        f"DDP/DataParallel/torch.compile), got {type(model).__name__}"
    )
