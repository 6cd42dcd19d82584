"""The official BlockDrop networks (Tushar-N/blockdrop ``models/``), re-implemented with the same
module names, so that the authors' state dicts load as they are, and exposed to the engine.

Backbones (``resnet`` in a checkpoint):

* :class:`OfficialCifarResNet` -- ``FlatResNet32``: ``conv1, bn1, blocks.<stage>.<i>.{conv1,bn1,
  conv2,bn2}, ds.<stage>, fc``; 16/32/64 channels; the downsampling shortcut is ``DownsampleB``
  (2x2 average pool, then zero channels appended *after* the real ones; no parameters);
* :class:`OfficialImageNetResNet` -- ``FlatResNet224`` with Bottlenecks: ``conv1, bn1,
  blocks.<stage>.<i>.{conv1..bn3}, ds.<stage>.{0,1}`` (1x1 conv + BN), ``fc``; 7x7 average pool.

Both follow the official block semantics: block ``t`` executed is ``relu(r + f(x))`` with ``r =
ds[stage](x)`` for the first block of a stage and ``x`` otherwise; dropped is ``r``.

Agents (``agent``): :class:`OfficialPolicy32` (``features`` = a [1,1,1] FlatResNet32 of
BasicBlocks with DownsampleB shortcuts, on the 32x32 image) and :class:`OfficialPolicy224` (a
[1,1,1,1] FlatResNet224 of BasicBlocks on the image average-pooled 2x, 4x4 average pool); both
``logit`` -> sigmoid, and an unused value head ``vnet``. ``forward`` returns the probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blockdrop.models.base import BlockView, Chain, ResNetBackbone
from blockdrop.models.registry import register_backbone_kind, register_policy_kind

__all__ = [
    "DownsampleB",
    "OfficialCifarResNet",
    "OfficialImageNetResNet",
    "OfficialPolicy32",
    "OfficialPolicy224",
    "OFFICIAL_MODELS",
]


class DownsampleB(nn.Module):
    """``x [N, C, H, W] -> [N, C * ratio, H/s, W/s]``: ``AvgPool2d(s)``, then ``ratio - 1`` copies
    of zeros appended after the real channels (official ``models/base.py``)."""

    def __init__(self, n_in: int, n_out: int, stride: int) -> None:
        super().__init__()
        self.avg = nn.AvgPool2d(stride)
        self.expand_ratio = n_out // n_in

    def forward(self, x: Tensor) -> Tensor:
        x = self.avg(x)
        return torch.cat([x] + [x.mul(0)] * (self.expand_ratio - 1), 1)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class _Basic(nn.Module):
    """Official ``BasicBlock``: the residual branch only (conv-BN-ReLU-conv-BN)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes), nn.BatchNorm2d(planes)

    def chain(self) -> Chain:
        return Chain(self.conv1, self.bn1, F.relu, self.conv2, self.bn2)

    def forward(self, x: Tensor) -> Tensor:
        return self.chain()(x)


class _Bottleneck(nn.Module):
    """Official ``Bottleneck``: the residual branch only (1x1-3x3-1x1 with BN/ReLU)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)

    def chain(self) -> Chain:
        return Chain(self.conv1, self.bn1, self.relu, self.conv2, self.bn2, self.relu, self.conv3, self.bn3)

    def forward(self, x: Tensor) -> Tensor:
        return self.chain()(x)


def _flat_layers(
    block: type[_Basic] | type[_Bottleneck],
    widths: tuple[int, ...],
    layers: list[int],
    strides: tuple[int, ...],
    inplanes: int,
    cifar: bool,
) -> tuple[nn.ModuleList, nn.ModuleList]:
    """``blocks`` and ``ds`` exactly as the official ``_make_layer`` builds them."""
    blocks, ds = [], []
    for planes, n, stride in zip(widths, layers, strides):
        out = planes * block.expansion
        down: nn.Module = nn.Sequential()
        if stride != 1 or inplanes != out:
            down = (
                DownsampleB(inplanes, out, stride)
                if cifar
                else nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            )
        stage = [block(inplanes, planes, stride)] + [block(out, planes) for _ in range(1, n)]
        inplanes = out
        blocks.append(nn.ModuleList(stage))
        ds.append(down)
    return nn.ModuleList(blocks), nn.ModuleList(ds)


def _identity(x: Tensor) -> Tensor:
    return x


class _OfficialBackbone(ResNetBackbone):
    ds: nn.ModuleList
    layer_config: list[int]

    def _views(self) -> None:
        # The official module named ``blocks`` (its state-dict keys): ResNetBackbone.blocks, the
        # views, shadows that name, so it is reached as a submodule.
        stages = cast("Sequence[Sequence[_Basic | _Bottleneck]]", self.get_submodule("blocks"))
        views = []
        for s, stage in enumerate(stages):
            for i, b in enumerate(stage):
                down = self.ds[s]  # an empty nn.Sequential() is the official identity
                has_ds = i == 0 and not (isinstance(down, nn.Sequential) and len(down) == 0)
                shortcut = down if has_ds else _identity
                last_bn = b.bn3 if isinstance(b, _Bottleneck) else b.bn2
                views.append(
                    BlockView(
                        residual=b.chain(),
                        shortcut=shortcut,
                        shortcut_kind="projection" if has_ds else "identity",
                        module=b,
                        in_channels=b.conv1.in_channels,
                        out_channels=last_bn.num_features,
                        stride=int((b.conv2 if isinstance(b, _Bottleneck) else b.conv1).stride[0]),
                    )
                )
        self._block_views = tuple(views)

    def _add_layers(self, blocks: nn.ModuleList, ds: nn.ModuleList) -> None:
        """The official submodules ``blocks`` and ``ds`` (their state-dict names). ``blocks`` is
        added by name: as an attribute it is ResNetBackbone.blocks, the views (a property)."""
        self.add_module("blocks", blocks)
        self.ds = ds


class OfficialCifarResNet(_OfficialBackbone):
    """``FlatResNet32(BasicBlock, layers)``: ``[5,5,5]`` = R32, ``[18,18,18]`` = R110."""

    def __init__(self, layers: list[int], num_classes: int = 10) -> None:
        super().__init__()
        self.layer_config, self.num_classes, self.in_channels = list(layers), num_classes, 3
        self.default_input_size = (3, 32, 32)
        self.conv1, self.bn1 = _conv3x3(3, 16), nn.BatchNorm2d(16)
        self._add_layers(*_flat_layers(_Basic, (16, 32, 64), self.layer_config, (1, 2, 2), 16, True))
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)
        self._views()

    def stem(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def head(self, h: Tensor) -> Tensor:
        return self.fc(self.avgpool(h).flatten(1))


class OfficialImageNetResNet(_OfficialBackbone):
    """``FlatResNet224(Bottleneck, layers)``: ``[3,4,23,3]`` = R101."""

    def __init__(self, layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.layer_config, self.num_classes, self.in_channels = list(layers), num_classes, 3
        self.default_input_size = (3, 224, 224)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._add_layers(
            *_flat_layers(_Bottleneck, (64, 128, 256, 512), self.layer_config, (1, 2, 2, 2), 64, False)
        )
        self.avgpool = nn.AvgPool2d(7)
        self.fc = nn.Linear(2048, num_classes)
        self._views()

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(F.relu(self.bn1(self.conv1(x))))

    def head(self, h: Tensor) -> Tensor:
        return self.fc(self.avgpool(h).flatten(1))


class _Features(_OfficialBackbone):
    """The agents' feature extractor: a flat ResNet of BasicBlocks run in full, fc removed."""

    def __init__(self, cifar: bool) -> None:
        super().__init__()
        self.num_classes, self.in_channels = 0, 3
        if cifar:
            self.conv1, self.bn1 = _conv3x3(3, 16), nn.BatchNorm2d(16)
            self._add_layers(*_flat_layers(_Basic, (16, 32, 64), [1, 1, 1], (1, 2, 2), 16, True))
            self.pool: nn.Module = nn.AvgPool2d(8)
        else:
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self._add_layers(
                *_flat_layers(_Basic, (64, 128, 256, 512), [1, 1, 1, 1], (1, 2, 2, 2), 64, False)
            )
            self.pool = nn.AvgPool2d(4)
        self.cifar = cifar
        self._views()

    def stem(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return h if self.cifar else self.maxpool(h)

    def head(self, h: Tensor) -> Tensor:
        return self.pool(h).flatten(1)


class _OfficialPolicy(nn.Module):
    kind = "official"

    def __init__(self, num_blocks: int, cifar: bool) -> None:
        super().__init__()
        self.num_blocks = int(num_blocks)
        self.features = _Features(cifar)
        dim = 64 if cifar else 512
        self.logit = nn.Linear(dim, self.num_blocks)
        self.vnet = nn.Linear(dim, 1)

    def _feat(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        """``x [N,3,H,W] -> probs [N, K]`` = sigmoid(logit(features)), float32."""
        return torch.sigmoid(self.logit(self._feat(x))).float()

    def value(self, x: Tensor) -> Tensor:
        """The unused value head ``[N, 1]``."""
        return self.vnet(self._feat(x))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_blocks": self.num_blocks}


class OfficialPolicy32(_OfficialPolicy):
    """``Policy32([1,1,1], num_blocks)`` on the 32x32 image."""

    kind = "official32"

    def __init__(self, num_blocks: int) -> None:
        super().__init__(num_blocks, cifar=True)


class OfficialPolicy224(_OfficialPolicy):
    """``Policy224([1,1,1,1], num_blocks)``: the image average-pooled 2x (224 -> 112)."""

    kind = "official224"

    def __init__(self, num_blocks: int) -> None:
        super().__init__(num_blocks, cifar=False)

    def _feat(self, x: Tensor) -> Tensor:
        return self.features(F.avg_pool2d(x, 2))


#: name -> (backbone factory, policy factory, input normalisation (mean, std) or None)
OFFICIAL_MODELS: dict[str, tuple[Any, Any, Any]] = {
    "R32_C10": (
        lambda: OfficialCifarResNet([5, 5, 5], 10),
        lambda: OfficialPolicy32(15),
        ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    ),
    "R110_C10": (lambda: OfficialCifarResNet([18, 18, 18], 10), lambda: OfficialPolicy32(54), None),
    "R32_C100": (lambda: OfficialCifarResNet([5, 5, 5], 100), lambda: OfficialPolicy32(15), None),
    "R110_C100": (lambda: OfficialCifarResNet([18, 18, 18], 100), lambda: OfficialPolicy32(54), None),
    "R101_ImgNet": (
        lambda: OfficialImageNetResNet([3, 4, 23, 3], 1000),
        lambda: OfficialPolicy224(33),
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ),
}


def _layers_spec(m: _OfficialBackbone) -> dict[str, Any]:
    return {"layers": list(m.layer_config), "num_classes": int(m.num_classes)}


register_backbone_kind(
    "official_cifar",
    OfficialCifarResNet,
    _layers_spec,
    lambda s: OfficialCifarResNet(list(s["layers"]), int(s["num_classes"])),
)
register_backbone_kind(
    "official_imagenet",
    OfficialImageNetResNet,
    _layers_spec,
    lambda s: OfficialImageNetResNet(list(s["layers"]), int(s["num_classes"])),
)
register_policy_kind("official32", lambda s: OfficialPolicy32(int(s["num_blocks"])))
register_policy_kind("official224", lambda s: OfficialPolicy224(int(s["num_blocks"])))
