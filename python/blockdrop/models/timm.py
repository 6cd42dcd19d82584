"""timm ResNets (resnet18-152, the ``d`` variants with average-pool downsampling, ResNeXt,
SE-ResNeXt, ...) exposed as a :class:`~blockdrop.models.base.ResNetBackbone` that shares the
user's module.

As for torchvision, no parameter is copied: an executed block is timm's own block forward, a
dropped block is its shortcut (``downsample`` or the identity), the stem is
``conv1 -> bn1 -> act1 -> maxpool`` and the head ``forward_head``. The residual branch the engine
runs on gathered rows is the block's own modules in timm's order (``conv1, bn1, drop_block, act1,
aa, conv2, bn2[, se][, drop_path]`` for BasicBlock; the bottleneck likewise), without the add and
the final activation, which the engine fuses into its merge. That fusion is a ReLU: blocks whose
final activation is anything else are refused.

timm is optional (``pip install blockdrop[timm]``); importing this module does not import it.
Its names are the family ``timm/<name>`` (any name ``timm.is_model`` accepts; building refuses
models that are not timm ResNets) and its spec kind is ``timm``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from .base import BlockView, Chain, ResNetBackbone
from .registry import register_backbone_kind, register_family, register_old_prefix

if TYPE_CHECKING:  # timm is optional, imported when a model is built
    from timm.models.resnet import BasicBlock, Bottleneck

__all__ = ["TimmResNet", "from_timm", "is_timm_resnet"]


def _timm_resnet_module() -> Any:
    try:
        import timm.models.resnet as tr
    except ImportError as e:  # pragma: no cover - exercised only without timm
        raise ImportError("from_timm needs timm: pip install 'blockdrop[timm]' (or timm)") from e
    return tr


def is_timm_resnet(model: Any) -> bool:
    """True when ``model`` is a ``timm.models.resnet.ResNet`` (False when timm is absent)."""
    try:
        tr = _timm_resnet_module()
    except ImportError:
        return False
    return isinstance(model, tr.ResNet)


def _present(*mods: Any) -> list[nn.Module]:
    return [m for m in mods if m is not None and not isinstance(m, nn.Identity)]


def _residual(b: nn.Module, bottleneck: bool) -> Chain:
    """F(x) of a timm block in its own order, without the add and the final activation."""
    if bottleneck:
        steps = _present(
            b.conv1,
            b.bn1,
            b.act1,
            b.conv2,
            b.bn2,
            b.drop_block,
            b.act2,
            b.aa,
            b.conv3,
            b.bn3,
            b.se,
            b.drop_path,
        )
    else:
        steps = _present(b.conv1, b.bn1, b.drop_block, b.act1, b.aa, b.conv2, b.bn2, b.se, b.drop_path)
    return Chain(*steps)


def _branch_stride(b: nn.Module) -> int:
    """Spatial stride of a block: the product of its convolutions' and anti-aliasing pool's."""
    stride = 1
    for m in (b.conv1, b.conv2, getattr(b, "conv3", None), b.aa):
        s = getattr(m, "stride", 1)
        stride *= int(s[0] if isinstance(s, (tuple, list)) else s)
    return stride


class _Shortcut:
    """The block's ``downsample`` (projection, or avg-pool + projection in ``d`` variants) or
    the identity."""

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        self.b = block

    def __call__(self, x: Tensor) -> Tensor:
        ds = self.b.downsample
        return x if ds is None else ds(x)


class TimmResNet(ResNetBackbone):
    """A :class:`ResNetBackbone` view of a ``timm.models.resnet.ResNet`` (weights shared)."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        tr = _timm_resnet_module()
        if not isinstance(resnet, tr.ResNet):
            raise ValueError(f"resnet: expected a timm.models.resnet.ResNet, got {type(resnet).__name__}")
        if not isinstance(resnet.fc, nn.Linear):
            raise ValueError("resnet: expected a classifier (fc is not nn.Linear; was num_classes=0?)")
        first = resnet.conv1 if isinstance(resnet.conv1, nn.Conv2d) else resnet.conv1[0]
        self.resnet = resnet
        self.num_classes = resnet.fc.out_features
        self.in_channels = first.in_channels
        self.default_input_size = (self.in_channels, 224, 224)
        views = []
        for li in range(1, 5):
            for i, b in enumerate(getattr(resnet, f"layer{li}")):
                bottleneck = isinstance(b, tr.Bottleneck)
                if not (bottleneck or isinstance(b, tr.BasicBlock)):
                    raise ValueError(
                        f"resnet: layer{li}.{i} is a {type(b).__name__}; only timm "
                        "BasicBlock and Bottleneck are supported"
                    )
                final = b.act3 if bottleneck else b.act2
                if not isinstance(final, nn.ReLU):
                    raise ValueError(
                        f"resnet: layer{li}.{i} ends in {type(final).__name__}; the "
                        "engine fuses a ReLU after the residual add"
                    )
                last_conv = b.conv3 if bottleneck else b.conv2
                views.append(
                    BlockView(
                        residual=_residual(b, bottleneck),
                        shortcut=_Shortcut(b),
                        shortcut_kind="identity" if b.downsample is None else "projection",
                        module=b,
                        in_channels=b.conv1.in_channels,
                        out_channels=last_conv.out_channels,
                        stride=_branch_stride(b),
                        full_fn=b,
                    )
                )
        self._block_views = tuple(views)

    def stem(self, x: Tensor) -> Tensor:
        """conv1-bn1-act1-maxpool: ``x: [N, C, H, W] -> [N, C0, ~H/4, ~W/4]``."""
        r = self.resnet
        return r.maxpool(r.act1(r.bn1(r.conv1(x))))

    def head(self, h: Tensor) -> Tensor:
        """timm's ``forward_head`` (global pool, dropout in training, fc):
        ``h: [N, C_last, h, w] -> logits: [N, num_classes]``."""
        return self.resnet.forward_head(h)

    def forward(self, x: Tensor) -> Tensor:
        """The user's own full forward: ``x: [N, C, H, W] -> logits: [N, num_classes]``."""
        return self.resnet(x)


def from_timm(resnet: nn.Module) -> TimmResNet:
    """Wrap a timm ResNet (``timm.create_model("resnet50d", ...)``) without copying it."""
    return TimmResNet(resnet)


def _build(arch: str, num_classes: int = 1000, pretrained: bool = False, **kwargs: Any) -> TimmResNet:
    import timm

    model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kwargs)
    try:
        return TimmResNet(model)
    except ValueError as e:
        raise ValueError(f"arch: timm/{arch} cannot be a BlockDrop backbone: {e}") from None


def _resolve(local: str) -> Any:
    """A builder for timm's model ``local``, None when timm has no such name; ImportError
    without timm."""
    try:
        import timm
    except ImportError as e:
        raise ImportError("timm is not installed: pip install 'blockdrop[timm]'") from e
    return partial(_build, local) if local and timm.is_model(local) else None


def _suggest() -> list[str]:
    import timm

    return list(timm.list_models(module="resnet"))


register_family("timm", "timm/", _resolve, _suggest)
register_old_prefix("timm-", "timm/", "timm")


def _to_spec(m: TimmResNet) -> dict[str, Any]:
    cfg = getattr(m.resnet, "pretrained_cfg", None) or getattr(m.resnet, "default_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        raise ValueError("model: the timm ResNet records no architecture name (pretrained_cfg)")
    return {"arch": arch, "num_classes": int(m.num_classes)}


def _from_spec(spec: dict[str, Any]) -> TimmResNet:
    arch = spec.get("arch")
    builder = _resolve(arch) if isinstance(arch, str) else None
    if builder is None:
        raise ValueError(f"spec: {arch!r} is not a timm model name")
    return builder(num_classes=int(spec["num_classes"]))


register_backbone_kind("timm", TimmResNet, _to_spec, _from_spec)
