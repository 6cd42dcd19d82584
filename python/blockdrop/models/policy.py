"""Policy networks: image -> one keep-probability per backbone block.

Two shapes, as in BlockDrop (Wu et al., CVPR 2018):

* :class:`CifarPolicyNet` - a ResNet-8 (stem + 3 BasicBlocks, 16/32/64 channels) on the full
  32x32 image (or, cheaper, on the image average-pooled by ``pool``, with ``width`` channels);
* :class:`ImageNetPolicyNet` - a ResNet-10 (7x7 stem + 4 BasicBlocks, 64..512 channels) on the
  image average-pooled to 112x112.

Both end in ``linear -> sigmoid`` and return probabilities ``[N, K]`` (float32, also under
autocast).  :class:`BlockDropNet` lives in :mod:`blockdrop.blockdrop_net`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_policy_kind

__all__ = [
    "BasicBlock",
    "CifarPolicyNet",
    "ImageNetPolicyNet",
    "PolicyNet",
    "make_policy_net",
    "policy_net_from_spec",
]


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; 1x1-conv projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, cin, H, W] -> [N, cout, H/stride, W/stride]``."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class PolicyNet(nn.Module):
    """Base class: ``forward(x [N,3,H,W]) -> probs [N, num_blocks]`` (float32 in [0, 1])."""

    num_blocks: int
    kind: str = "base"
    fc: nn.Linear  # the head, set by each subclass

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def logits(self, x: Tensor) -> Tensor:
        """Pre-sigmoid scores ``[N, K]``, float32."""
        return self.fc(self.features(x)).float()

    def forward(self, x: Tensor) -> Tensor:
        """Keep probabilities ``[N, K]`` = sigmoid(linear(features(x))), float32."""
        return torch.sigmoid(self.logits(x))

    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments (see :func:`policy_net_from_spec`)."""
        return {"kind": self.kind, "num_blocks": self.num_blocks}

    @torch.no_grad()
    def set_prior(self, keep: Tensor) -> PolicyNet:
        """Start from a static policy: the head's weights zeroed and its bias ``logit(keep)``, so
        that ``forward`` returns ``keep [K]`` (probabilities in (0, 1)) for every image until
        training moves it (e.g. :func:`blockdrop.training.drop_costs.keep_prior`). Returns ``self``."""
        keep = torch.as_tensor(keep, dtype=torch.float32).flatten()
        if keep.numel() != self.num_blocks:
            raise ValueError(f"keep: expected {self.num_blocks} probabilities, got {keep.numel()}")
        if not bool(((keep > 0) & (keep < 1)).all()):
            raise ValueError("keep: expected probabilities strictly between 0 and 1")
        self.fc.weight.zero_()
        self.fc.bias.copy_(torch.logit(keep.double()).to(self.fc.bias))
        return self

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class CifarPolicyNet(PolicyNet):
    """ResNet-8 (``width``/2x/4x channels) on the 32x32 image average-pooled by ``pool`` (1: the
    full image; 2: 16x16, a quarter of the FLOPs): ``[N,3,32,32] -> probs [N, num_blocks]``."""

    kind = "cifar"

    def __init__(self, num_blocks: int, width: int = 16, pool: int = 1) -> None:
        super().__init__()
        if width < 1 or pool < 1:
            raise ValueError(f"width and pool: expected >= 1, got {width}, {pool}")
        self.num_blocks = int(num_blocks)
        self.width, self.pool = int(width), int(pool)
        w = self.width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
        )
        self.layers = nn.Sequential(BasicBlock(w, w, 1), BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 4 * w, 2))
        self.fc = nn.Linear(4 * w, self.num_blocks)
        self._init()

    def features(self, x: Tensor) -> Tensor:
        """``[N,3,H,W] -> [N, 4*width]`` (average-pooled by ``pool`` first; global average pool)."""
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        return self.layers(self.stem(x)).mean(dim=(2, 3))

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "width": self.width, "pool": self.pool}


class ImageNetPolicyNet(PolicyNet):
    """ResNet-10 on the image average-pooled to ``resolution`` (112):
    ``[N,3,H,W] -> probs [N, num_blocks]``."""

    kind = "imagenet"

    def __init__(self, num_blocks: int, resolution: int = 112) -> None:
        super().__init__()
        self.num_blocks = int(num_blocks)
        self.resolution = int(resolution)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layers = nn.Sequential(
            BasicBlock(64, 64, 1), BasicBlock(64, 128, 2), BasicBlock(128, 256, 2), BasicBlock(256, 512, 2)
        )
        self.fc = nn.Linear(512, self.num_blocks)
        self._init()

    def features(self, x: Tensor) -> Tensor:
        """``[N,3,H,W]`` -> avg-pool to ``resolution`` -> ResNet-10 -> ``[N, 512]``."""
        r = self.resolution
        if x.shape[-2:] != (r, r):
            h, w = x.shape[-2:]
            if h % r == 0 and w % r == 0:
                x = F.avg_pool2d(x, (h // r, w // r))
            else:
                x = F.adaptive_avg_pool2d(x, (r, r))
        return self.layers(self.stem(x)).mean(dim=(2, 3))

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "resolution": self.resolution}


def make_policy_net(num_blocks: int, image_size: int, width: int = 16, pool: int = 1) -> PolicyNet:
    """The paper's choice: ResNet-8 for images up to 64 px (``width`` channels, on the image
    average-pooled by ``pool``), ResNet-10 at 112 px above that (``width``/``pool`` unused)."""
    if image_size <= 64:
        return CifarPolicyNet(num_blocks, width=width, pool=pool)
    return ImageNetPolicyNet(num_blocks)


_KINDS: dict[str, type[PolicyNet]] = {"cifar": CifarPolicyNet, "imagenet": ImageNetPolicyNet}


def policy_net_from_spec(spec: dict[str, Any]) -> PolicyNet:
    """Inverse of :meth:`PolicyNet.spec` (kinds ``cifar`` and ``imagenet``)."""
    args = dict(spec)
    kind = args.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"spec: expected a policy net kind in {tuple(_KINDS)}, got {kind!r}")
    return _KINDS[kind](**args)


for _kind in _KINDS:
    register_policy_kind(_kind, policy_net_from_spec)
