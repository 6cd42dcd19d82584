"""torchvision ResNets (18/34/50/101/152, also wide/ResNeXt variants built from the same blocks)
exposed as a :class:`~blockdrop.models.base.ResNetBackbone` that shares the user's module.

No parameter is copied: the wrapper holds the user's ``torchvision.models.ResNet`` as its
``resnet`` submodule and every :class:`BlockView` calls that module's own layers, so pretrained
weights (and later updates to them) are used as they are.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .base import BlockView, Chain, ResNetBackbone
from .registry import register_backbone_kind, register_model, register_old_prefix

if TYPE_CHECKING:  # torchvision is imported when a model is built
    from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["TORCHVISION_RESNETS", "TorchvisionResNet", "from_torchvision", "infer_arch"]

#: The ResNets of ``torchvision.models`` (BasicBlock / Bottleneck), registered by these names.
TORCHVISION_RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


def _tv():
    import torchvision.models.resnet as tvr

    return tvr


def _basic_residual(b: BasicBlock) -> Chain:
    """``F(x)`` of a torchvision BasicBlock: conv-BN-ReLU-conv-BN (no add, no final ReLU)."""
    return Chain(b.conv1, b.bn1, b.relu, b.conv2, b.bn2)


def _bottleneck_residual(b: Bottleneck) -> Chain:
    """``F(x)`` of a torchvision Bottleneck: 1x1-3x3-1x1 convs with BN/ReLU (no add, no final ReLU)."""
    return Chain(b.conv1, b.bn1, b.relu, b.conv2, b.bn2, b.relu, b.conv3, b.bn3)


class _Shortcut:
    """The block's ``downsample`` module (projection) or the identity."""

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        self.b = block

    def __call__(self, x: Tensor) -> Tensor:
        ds = self.b.downsample
        return x if ds is None else ds(x)


class TorchvisionResNet(ResNetBackbone):
    """A :class:`ResNetBackbone` view of a ``torchvision.models.ResNet`` (weights shared).
    ``arch`` is its name in :data:`TORCHVISION_RESNETS` (found from the shapes when None)."""

    def __init__(self, resnet: nn.Module, arch: str | None = None) -> None:
        super().__init__()
        self.arch = arch
        tvr = _tv()
        if not isinstance(resnet, tvr.ResNet):
            raise ValueError(f"resnet: expected a torchvision.models.ResNet, got {type(resnet).__name__}")
        if not isinstance(resnet.fc, nn.Linear) or not isinstance(resnet.conv1, nn.Conv2d):
            raise ValueError("resnet: expected conv1 to be nn.Conv2d and fc to be nn.Linear")
        self.resnet = resnet
        self.num_classes = resnet.fc.out_features
        self.in_channels = resnet.conv1.in_channels
        self.default_input_size = (self.in_channels, 224, 224)
        views = []
        for li in range(1, 5):
            for i, b in enumerate(getattr(resnet, f"layer{li}")):
                if isinstance(b, tvr.Bottleneck):
                    residual, out_ch = _bottleneck_residual(b), b.conv3.out_channels
                    in_ch = b.conv1.in_channels
                elif isinstance(b, tvr.BasicBlock):
                    residual, out_ch = _basic_residual(b), b.conv2.out_channels
                    in_ch = b.conv1.in_channels
                else:
                    raise ValueError(
                        f"resnet: layer{li}.{i} is a {type(b).__name__}; only torchvision "
                        "BasicBlock and Bottleneck are supported"
                    )
                views.append(
                    BlockView(
                        residual=residual,
                        shortcut=_Shortcut(b),
                        shortcut_kind="identity" if b.downsample is None else "projection",
                        module=b,
                        in_channels=in_ch,
                        out_channels=out_ch,
                        stride=int(b.stride),
                        full_fn=b,  # the block's own forward (relu(F(x) + shortcut(x)))
                    )
                )
        self._block_views = tuple(views)

    def stem(self, x: Tensor) -> Tensor:
        """conv1-bn1-relu-maxpool: ``x: [N, C, H, W] -> [N, 64, ~H/4, ~W/4]``."""
        r = self.resnet
        return r.maxpool(r.relu(r.bn1(r.conv1(x))))

    def head(self, h: Tensor) -> Tensor:
        """avgpool + fc: ``h: [N, C_last, h, w] -> logits: [N, num_classes]``."""
        r = self.resnet
        return r.fc(torch.flatten(r.avgpool(h), 1))

    def forward(self, x: Tensor) -> Tensor:
        """The user's own full forward: ``x: [N, C, H, W] -> logits: [N, num_classes]``."""
        return self.resnet(x)


def from_torchvision(resnet: nn.Module) -> TorchvisionResNet:
    """Wrap a ``torchvision.models.ResNet`` (e.g. ``torchvision.models.resnet50(weights=...)``)
    without copying it; the wrapper's blocks are the user's blocks."""
    return TorchvisionResNet(resnet)


def _shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items() if not k.startswith("fc.")}


def infer_arch(resnet: nn.Module) -> str:
    """The name in :data:`TORCHVISION_RESNETS` whose tensors (all but ``fc``) have the shapes of
    ``resnet``'s; ValueError naming ``resnet`` when none has."""
    import torchvision.models as tvm

    shapes = _shapes(resnet)
    with torch.device("meta"):
        for name in TORCHVISION_RESNETS:
            if _shapes(getattr(tvm, name)(weights=None)) == shapes:
                return name
    raise ValueError(
        f"resnet: its tensors match none of the torchvision ResNets {', '.join(TORCHVISION_RESNETS)}"
    )


def _build(arch: str, num_classes: int = 1000, **kwargs: Any) -> TorchvisionResNet:
    import torchvision.models as tvm

    return TorchvisionResNet(getattr(tvm, arch)(num_classes=num_classes, **kwargs), arch=arch)


for _arch in TORCHVISION_RESNETS:
    register_model(partial(_build, _arch), name=_arch, family="torchvision")
register_old_prefix("tv-", "", "torchvision")


def _to_spec(m: TorchvisionResNet) -> dict[str, Any]:
    return {"arch": m.arch or infer_arch(m.resnet), "num_classes": int(m.num_classes)}


def _from_spec(spec: dict[str, Any]) -> TorchvisionResNet:
    arch = spec.get("arch")
    if arch not in TORCHVISION_RESNETS:
        raise ValueError(
            f"spec: {arch!r} is not a torchvision ResNet (one of {', '.join(TORCHVISION_RESNETS)})"
        )
    return _build(arch, int(spec["num_classes"]))


register_backbone_kind("torchvision", TorchvisionResNet, _to_spec, _from_spec)
