"""Backbones and policy networks by name: the JSON *spec* a checkpoint stores, and the module
it rebuilds.

A backbone spec is ``{"kind": ..., ...}`` with kinds ``cifar`` (``depth``, ``num_classes``),
``torchvision`` and ``timm`` (``arch``, ``num_classes``), ``official_cifar`` and
``official_imagenet`` (``layers``, ``num_classes``; the official BlockDrop networks). A policy
spec is the policy module's own ``spec()``: ``cifar``/``imagenet`` (:mod:`.policy`), the
fixed baselines (:mod:`blockdrop.training.baselines`) and ``official32``/``official224``.
"""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["backbone_spec", "build_backbone", "parse_arch", "build_policy"]


def backbone_spec(model: nn.Module, arch: str | None = None) -> dict[str, Any]:
    """JSON description from which :func:`build_backbone` rebuilds ``model``'s architecture."""
    from blockdrop.interop.official_models import OfficialCifarResNet, OfficialImageNetResNet
    from .cifar import CifarResNet
    from .timm import TimmResNet
    from .torchvision import TorchvisionResNet
    if isinstance(model, CifarResNet):
        return {"kind": "cifar", "depth": int(model.depth), "num_classes": int(model.num_classes)}
    if isinstance(model, (OfficialCifarResNet, OfficialImageNetResNet)):
        kind = "official_cifar" if isinstance(model, OfficialCifarResNet) else "official_imagenet"
        return {"kind": kind, "layers": list(model.layer_config), "num_classes": int(model.num_classes)}
    if isinstance(model, (TorchvisionResNet, TimmResNet)):
        arch = arch or getattr(model.resnet, "default_cfg", {}).get("architecture")
        if arch is None:
            raise ValueError("arch: a torchvision backbone needs its arch name (e.g. 'resnet50')")
        kind = "timm" if isinstance(model, TimmResNet) else "torchvision"
        return {"kind": kind, "arch": arch, "num_classes": int(model.num_classes)}
    raise TypeError(f"unsupported backbone {type(model).__name__}")


def build_backbone(spec: dict[str, Any]) -> nn.Module:
    """A freshly initialised backbone from :func:`backbone_spec`'s output."""
    from blockdrop.interop.official_models import OfficialCifarResNet, OfficialImageNetResNet
    from .cifar import cifar_resnet
    from .timm import from_timm
    from .torchvision import from_torchvision
    kind = spec.get("kind")
    if kind == "cifar":
        return cifar_resnet(int(spec["depth"]), int(spec["num_classes"]))
    if kind == "torchvision":
        import torchvision
        names = [n for n in dir(torchvision.models) if n.startswith(("resnet", "resnext", "wide_resnet"))
                 and callable(getattr(torchvision.models, n))]
        if spec["arch"] not in names:
            raise ValueError(f"arch: {spec['arch']!r} is not a torchvision ResNet "
                             f"(one of {', '.join(sorted(names))}; CIFAR depths are 6n+2)")
        ctor = getattr(torchvision.models, spec["arch"])
        return from_torchvision(ctor(weights=None, num_classes=int(spec["num_classes"])))
    if kind == "timm":
        import timm
        if not timm.is_model(spec["arch"]):
            raise ValueError(f"arch: {spec['arch']!r} is not a timm model name")
        return from_timm(timm.create_model(spec["arch"], pretrained=False,
                                           num_classes=int(spec["num_classes"])))
    if kind == "official_cifar":
        return OfficialCifarResNet(list(spec["layers"]), int(spec["num_classes"]))
    if kind == "official_imagenet":
        return OfficialImageNetResNet(list(spec["layers"]), int(spec["num_classes"]))
    raise ValueError(f"unknown backbone kind {kind!r}")


def build_policy(spec: dict[str, Any]) -> nn.Module:
    """A freshly initialised policy module from its ``spec()``."""
    from blockdrop.training.baselines import BASELINE_KINDS, BaselinePolicy
    from blockdrop.interop.official_models import OfficialPolicy32, OfficialPolicy224
    from .policy import policy_net_from_spec
    kind = spec.get("kind")
    if kind in BASELINE_KINDS:
        return BaselinePolicy(**spec)
    if kind in ("official32", "official224"):
        cls = OfficialPolicy32 if kind == "official32" else OfficialPolicy224
        return cls(int(spec["num_blocks"]))
    return policy_net_from_spec(spec)


def parse_arch(arch: str, num_classes: int) -> dict[str, Any]:
    """``"resnet32"`` / ``"cifar-resnet32"`` (CIFAR, depth 6n+2), ``"tv-resnet50"`` /
    ``"resnet50"`` (torchvision, when not 6n+2) or ``"timm-resnet50d"`` -> a backbone spec."""
    a = arch.lower()
    if a.startswith("tv-"):
        return {"kind": "torchvision", "arch": a[3:], "num_classes": num_classes}
    if a.startswith("timm-"):
        return {"kind": "timm", "arch": a[5:], "num_classes": num_classes}
    a = a.removeprefix("cifar-")
    if a.startswith("resnet") and a[6:].isdigit():
        d = int(a[6:])
        if d >= 8 and (d - 2) % 6 == 0:
            return {"kind": "cifar", "depth": d, "num_classes": num_classes}
        return {"kind": "torchvision", "arch": a, "num_classes": num_classes}
    raise ValueError(f"arch: unknown architecture {arch!r} (try resnet32, resnet110, tv-resnet50, "
                     "timm-resnet50d)")
