"""CIFAR ResNets of He et al. (2016): depth 6n+2, 3x3 16-channel stem, three stages of BasicBlocks
(16/32/64 channels), "option A" parameter-free downsampling shortcut, global average pool, linear.

Module names match the widespread public checkpoints (``conv1, bn1, layer{1,2,3}.{i}.{conv1, bn1,
conv2, bn2}, linear``), so :func:`load_cifar_resnet` loads them after stripping ``module.``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blockdrop_ext.reference import downsample_a

from ..errors import FileFormatError, IncompatibleError
from .base import BlockView, Chain, ResNetBackbone
from .registry import register_backbone_kind, register_family, register_model, register_old_prefix

__all__ = ["CIFAR_DEPTHS", "CifarBasicBlock", "CifarResNet", "cifar_resnet", "load_cifar_resnet", "option_a"]

#: Depths registered by name (``cifar_resnet<depth>``): He et al.'s (20-1202) and the small ones
#: the tests and demo use. Any other depth 6n+2 is reachable as ``cifar_resnet<depth>`` too.
CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56, 110, 1202)


def option_a(x: Tensor, out_channels: int) -> Tensor:
    """Option-A shortcut: every second pixel, channels zero-padded equally on both sides.

    Shapes: ``x: [N, C, H, W] -> [N, out_channels, ceil(H/2), ceil(W/2)]``
    (``out_channels - C`` must be even and >= 0).
    """
    pad = out_channels - x.shape[1]
    if pad < 0 or pad % 2:
        raise ValueError(
            f"option_a: out_channels must be >= C and differ by an even number, got C={x.shape[1]}, "
            f"out_channels={out_channels}"
        )
    return downsample_a(x, out_channels)  # the plain-PyTorch definition the kernels are tested against


class CifarBasicBlock(nn.Module):
    """3x3 conv-BN-ReLU-3x3 conv-BN with an identity or option-A shortcut.

    Shapes: ``[N, in_planes, H, W] -> [N, planes, H/stride, W/stride]``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut_kind = "identity" if (stride == 1 and in_planes == planes) else "option_a"
        # F as a Chain (a plain object holding this module's own layers, not a registered module)
        self.residual_chain = Chain(self.conv1, self.bn1, torch.relu, self.conv2, self.bn2)

    def residual(self, x: Tensor) -> Tensor:
        """``F(x)`` without the final add/ReLU: ``[N, in_planes, H, W] -> [N, planes, H', W']``."""
        return self.residual_chain(x)

    def shortcut(self, x: Tensor) -> Tensor:
        """Identity or option A: ``[N, in_planes, H, W] -> [N, planes, H', W']``."""
        if self.shortcut_kind == "identity":
            return x
        return option_a(x, self.planes)

    def forward(self, x: Tensor) -> Tensor:
        """``relu(shortcut(x) + residual(x))``: ``[N, in_planes, H, W] -> [N, planes, H', W']``."""
        return torch.relu(self.shortcut(x) + self.residual(x))


class CifarResNet(ResNetBackbone):
    """CIFAR ResNet of depth ``6n + 2`` (``n`` BasicBlocks per stage, ``K = 3n`` blocks)."""

    layer1: nn.Sequential  # the three stages, set by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be an int of the form 6n+2 with n >= 1, got {depth!r}")
        n = (depth - 2) // 6
        self.depth, self.num_classes, self.in_channels = depth, num_classes, 3
        self.default_input_size = (3, 32, 32)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 1 and i == 0) else 1
                blocks.append(CifarBasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
        self._block_views = tuple(
            BlockView(
                residual=b.residual_chain,
                shortcut=b.shortcut,
                shortcut_kind=b.shortcut_kind,
                module=b,
                in_channels=b.in_planes,
                out_channels=b.planes,
                stride=b.stride,
            )
            for layer in (self.layer1, self.layer2, self.layer3)
            for b in cast("Iterable[CifarBasicBlock]", layer)
        )

    def stem(self, x: Tensor) -> Tensor:
        """``x: [N, 3, H, W] -> [N, 16, H, W]``."""
        return torch.relu(self.bn1(self.conv1(x)))

    def head(self, h: Tensor) -> Tensor:
        """Global average pool + linear: ``h: [N, 64, H', W'] -> logits: [N, num_classes]``."""
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """A randomly initialised CIFAR ResNet of the given depth (20, 32, 44, 56, 110, ...):
    ``[N, 3, 32, 32] -> [N, num_classes]``."""
    return CifarResNet(depth, num_classes)


def _build(depth: int, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(depth, num_classes)


def _resolve(local: str) -> Any:
    """``"resnet<d>"`` with ``d = 6n + 2`` -> a builder; anything else None."""
    m = re.fullmatch(r"resnet(\d+)", local)
    depth = int(m.group(1)) if m and not m.group(1).startswith("0") else 0
    return partial(_build, depth) if depth >= 8 and (depth - 2) % 6 == 0 else None


for _depth in CIFAR_DEPTHS:
    register_model(partial(_build, _depth), name=f"cifar_resnet{_depth}", family="cifar")
register_family("cifar", "cifar_", _resolve)
register_old_prefix("cifar-", "cifar_", "cifar")
register_backbone_kind(
    "cifar",
    CifarResNet,
    to_spec=lambda m: {"depth": int(m.depth), "num_classes": int(m.num_classes)},
    from_spec=lambda s: CifarResNet(int(s["depth"]), int(s["num_classes"])),
)


_BLOCK_KEY = re.compile(r"^layer([123])\.(\d+)\.")


def load_cifar_resnet(path: str | Path, depth: int | None = None) -> CifarResNet:
    """Load a public CIFAR ResNet checkpoint (``{'state_dict': ..., ...}`` or a bare state dict,
    keys optionally prefixed with ``module.``) into a :class:`CifarResNet`, in eval mode, on CPU.

    Args:
        path: checkpoint file, read with ``torch.load(weights_only=True)``.
        depth: expected depth; inferred from the keys when None. A mismatch raises ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no checkpoint file at {str(path)!r}")
    what = "a readable PyTorch checkpoint of a CIFAR ResNet (torch.save of a state dict)"
    if path.stat().st_size == 0:
        raise FileFormatError(path, what, "the file is empty")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage, truncated, or a pickle of more than tensors
        raise FileFormatError(path, what, f"torch.load failed with {type(e).__name__}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise FileFormatError(path, what, f"it holds a {type(ckpt).__name__}, not a state dict")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    per_stage = [0, 0, 0]
    for key in state:
        m = _BLOCK_KEY.match(key)
        if m:
            s, i = int(m.group(1)) - 1, int(m.group(2))
            per_stage[s] = max(per_stage[s], i + 1)
    if per_stage[0] == 0 or len(set(per_stage)) != 1 or "linear.weight" not in state:
        raise FileFormatError(
            path,
            what,
            "its keys are not conv1, bn1, layer{1,2,3}.<i>.*, "
            f"linear (blocks per stage found: {per_stage})",
        )
    found = 6 * per_stage[0] + 2
    if depth is not None and depth != found:
        raise IncompatibleError(
            f"depth: expected {depth}, but the checkpoint at {str(path)!r} is depth {found}"
        )
    model = CifarResNet(found, num_classes=state["linear.weight"].shape[0])
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise FileFormatError(
            path, what, f"its tensors do not fit CifarResNet-{found}: {str(e).splitlines()[0][:160]}"
        ) from None
    if missing or unexpected:
        raise FileFormatError(
            path,
            what,
            f"its keys do not match CifarResNet-{found}: missing {missing[:5]}, unexpected {unexpected[:5]}",
        )
    return model.eval()
