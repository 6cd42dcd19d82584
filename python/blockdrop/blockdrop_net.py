"""``BlockDropNet``: a policy network that picks blocks, and a backbone run on that pick.

It sits above the engine (it calls :func:`blockdrop.dynamic_forward` and
:func:`blockdrop.capacity_forward`), so it lives beside them and not in :mod:`blockdrop.models`,
which the engine imports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from blockdrop.calibration import CapacitySpec, calibrate, with_budget
from blockdrop.capacity import capacity_forward, capacity_policy
from blockdrop.engine import dynamic_forward
from blockdrop.models.base import ResNetBackbone
from blockdrop.training.rl import sample_policy, threshold_policy

__all__ = ["BlockDropNet", "MODES"]

#: ``threshold``: each image keeps block ``k`` when ``p_k >= threshold`` (its own path, whatever
#: its batch). ``capacity``: block ``k`` runs on the ``C_k`` images of the batch with the highest
#: ``p_k`` (static shapes, fixed cost per batch; :mod:`blockdrop.capacity`).
MODES = ("threshold", "capacity")


class BlockDropNet(nn.Module):
    """Policy network + ResNet backbone.

    ``forward(x [N,3,H,W]) -> (logits [N, C], policy [N, K] float 0/1)``. In training mode the
    policy is a Bernoulli sample of the probabilities. In eval mode it depends on ``mode``:

    * ``"threshold"``: ``probs >= threshold`` (0.5), run through :func:`blockdrop.dynamic_forward`
      with ``strategy``, so dropped blocks are not computed;
    * ``"capacity"``: block ``k`` runs on the ``capacity.counts(N)[k]`` images with the highest
      ``p_k`` (:func:`blockdrop.capacity_forward`: no host synchronisation, static shapes, so the
      net compiles whole, exports and CUDA-graphs). The shares come from :meth:`calibrate_capacity`
      (threshold mode's keep rates on validation data) or :meth:`set_capacity` (given shares, or a
      FLOP budget met for every batch); both are stored in checkpoints.
    """

    def __init__(
        self,
        policy_net: nn.Module,
        backbone: ResNetBackbone,
        strategy: str = "auto",
        threshold: float = 0.5,
        mode: str = "threshold",
        capacity: CapacitySpec | None = None,
    ) -> None:
        super().__init__()
        num_blocks = int(backbone.num_blocks)
        pk = getattr(policy_net, "num_blocks", num_blocks)
        if pk != num_blocks:
            raise ValueError(f"policy net has {pk} outputs but the backbone has {num_blocks} blocks")
        self.policy_net = policy_net
        self.backbone = backbone
        self.strategy = strategy
        self.threshold = float(threshold)
        self.capacity: CapacitySpec | None = None
        self.mode = "threshold"
        if capacity is not None:
            self.set_capacity(capacity)
        self.set_mode(mode)

    @property
    def num_blocks(self) -> int:
        """K, the number of droppable blocks."""
        return int(self.backbone.num_blocks)

    def set_mode(self, mode: str) -> BlockDropNet:
        """Switch between ``"threshold"`` and ``"capacity"`` (which needs a capacity). Returns self."""
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode == "capacity" and self.capacity is None:
            raise ValueError(
                "mode: capacity mode needs per-block shares first: calibrate_capacity"
                "(loader) or set_capacity(capacity=..., budget=...)"
            )
        self.mode = mode
        return self

    def set_capacity(
        self,
        capacity: CapacitySpec | Sequence[float] | None = None,
        budget: float | None = None,
        input_size: tuple[int, int, int] | None = None,
    ) -> CapacitySpec:
        """Set the capacity and switch to capacity mode. ``capacity``: a :class:`CapacitySpec`,
        or ``K`` shares in ``[0, 1]`` (with ``budget``: the profile to scale; None: the current
        shares, or uniform). ``budget``: a share of the full network's FLOPs in ``(0, 1]``, met for
        every batch, counted at ``input_size`` (default: the calibration's, else the backbone's).
        Returns the spec. Raises ValueError naming ``capacity`` or ``budget``."""
        if isinstance(capacity, CapacitySpec):
            spec = capacity
        elif capacity is not None:
            if isinstance(capacity, (str, bytes, Tensor)) or not isinstance(capacity, Sequence):
                raise ValueError(
                    f"capacity: expected a CapacitySpec or {self.num_blocks} shares in "
                    f"[0, 1], got {type(capacity).__name__}"
                )
            spec = CapacitySpec(tuple(capacity))
        elif budget is not None:
            spec = self.capacity or CapacitySpec((1.0,) * self.num_blocks)
        else:
            raise ValueError("capacity: expected a CapacitySpec, per-block shares or a budget, got None")
        if spec.num_blocks != self.num_blocks:
            raise ValueError(
                f"capacity: expected {self.num_blocks} shares (one per block), got {spec.num_blocks}"
            )
        if budget is not None:
            info = dict(spec.info or {})
            size = input_size or (tuple(info["input_size"]) if info.get("input_size") else None)
            spec = with_budget(self, budget, info.get("profile_shares") or spec.shares, size, info)
        self.capacity = spec
        self.mode = "capacity"
        return spec

    def calibrate_capacity(
        self,
        loader: Iterable[Any],
        budget: float | None = None,
        device: torch.device | str | None = None,
        amp: str | bool = "off",
    ) -> CapacitySpec:
        """Per-block shares = the keep rates of the threshold policy over ``loader`` (batches
        ``x [B,3,H,W]`` or ``(x, y)``), optionally scaled to a FLOP ``budget``
        (:mod:`blockdrop.calibration`); switches to capacity mode. Returns the spec."""
        if device is None:
            p = next(self.parameters(), None)
            device = p.device if p is not None else "cpu"
        spec = calibrate(self, loader, device, amp)
        return self.set_capacity(spec, budget=budget)

    def probs(self, x: Tensor) -> Tensor:
        """Keep probabilities ``[N, K]`` (float32)."""
        return self.policy_net(x)

    def _capacity_mode(self) -> bool:
        return self.mode == "capacity" and not self.training

    def policy(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The policy ``[N, K]`` float 0/1: sampled in training mode; in eval mode thresholded, or
        in capacity mode the top-``C_k`` images of each block."""
        p = self.probs(x)
        if self.training:
            return sample_policy(p, generator)
        if self.mode == "capacity":
            assert self.capacity is not None
            return capacity_policy(p, self.capacity.counts(x.shape[0])).float()
        return threshold_policy(p, self.threshold)

    def run_backbone(self, x: Tensor, policy: Tensor, strategy: str | None = None) -> Tensor:
        """Backbone logits ``[N, C]`` executing only the blocks in ``policy [N, K]``."""
        return dynamic_forward(self.backbone, x, policy, strategy=strategy or self.strategy)

    def forward(self, x: Tensor, policy: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x [N,3,H,W]`` (optionally a given ``policy [N,K]``) -> ``(logits [N,C], policy [N,K])``."""
        if policy is None and self._capacity_mode():
            assert self.capacity is not None
            counts = self.capacity.counts(x.shape[0])
            logits, executed = capacity_forward(self.backbone, x, self.probs(x), counts, return_policy=True)
            return logits, executed.float()
        if policy is None:
            policy = self.policy(x)
        return self.run_backbone(x, policy), policy

    def extra_repr(self) -> str:
        cap = ""
        if self.capacity is not None:
            cap = f", mean_blocks={sum(self.capacity.shares):.2f}, budget={self.capacity.budget}"
        return (
            f"num_blocks={self.num_blocks}, mode={self.mode!r}, strategy={self.strategy!r}, "
            f"threshold={self.threshold}{cap}"
        )
