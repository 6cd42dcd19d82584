"""The resumable state of a training run, as one checkpoint (:mod:`blockdrop.checkpoint`).

``last.safetensors`` holds every tensor -- policy net, backbone, Adam moments, the policy-sampling
generator of every rank, torch's CPU (and CUDA) RNG -- and its JSON metadata the config, the
progress (:class:`Progress`), the GradScaler, Python's RNG and the validation history. Restoring
all of it makes ``resume`` reproduce an uninterrupted run bit for bit on the same world size: data
order is a function of (seed, epoch), augmentation of (seed, epoch, index), and policy sampling
uses the saved generator.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from blockdrop.checkpoint import (
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    prefixed,
    save_checkpoint,
    unprefixed,
)
from blockdrop.errors import IncompatibleError

__all__ = ["Progress", "TrainState"]


@dataclass
class Progress:
    """Where a run is: the epoch and batch within it, the optimisation step, the history of
    epoch-end metrics."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainState:
    """What a checkpoint saves and restores (all live objects; the trainer owns them)."""

    policy_net: nn.Module
    backbone: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    device: torch.device
    progress: Progress = field(default_factory=Progress)

    def save(
        self,
        path: str | os.PathLike[str],
        generators: list[Tensor],
        cfg: Any,
        batches_per_epoch: int,
        world_size: int,
        extra_meta: dict[str, Any],
    ) -> None:
        """Write the checkpoint (``generators``: every rank's sampling-generator state)."""
        pr = self.progress
        tensors: dict[str, Tensor] = {
            **prefixed(self.policy_net.state_dict(), "policy."),
            **prefixed(self.backbone.state_dict(), "backbone."),
        }
        opt_t, opt_meta = optimizer_to_tensors(self.optimizer)
        tensors.update(opt_t)
        for r, g in enumerate(generators):
            tensors[f"rng.policy.{r}"] = g
        tensors["rng.torch_cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(self.device)
        st = random.getstate()
        meta = {
            **extra_meta,
            "stage": cfg.stage,
            "config": dataclasses.asdict(cfg),
            "progress": {
                "epoch": pr.epoch,
                "batch": pr.batch,
                "global_step": pr.global_step,
                "epochs": cfg.epochs,
                "batches_per_epoch": batches_per_epoch,
                "done": pr.epoch >= cfg.epochs,
            },
            "world_size": world_size,
            "optimizer": opt_meta,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "python_random": [st[0], list(st[1]), st[2]],
            "history": pr.history,
        }
        save_checkpoint(path, tensors, meta)

    def restore(
        self, path: str | os.PathLike[str], stage: str, rank: int, world_size: int, reseed: int
    ) -> None:
        """Load the checkpoint at ``path`` into the live objects. With another world size the
        sampling generator is re-seeded from ``reseed`` and the step (reproducible, not identical)."""
        tensors, meta = load_checkpoint(path)
        if meta.get("stage") != stage:
            raise IncompatibleError(
                f"{path} is a {meta.get('stage')} checkpoint; it cannot resume a {stage} run"
            )
        self.policy_net.load_state_dict(unprefixed(tensors, "policy."))
        self.backbone.load_state_dict(unprefixed(tensors, "backbone."))
        optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
        if meta.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["scaler"])
        pr = meta["progress"]
        key = f"rng.policy.{rank}"
        if meta.get("world_size") == world_size and key in tensors:
            self.generator.set_state(tensors[key])
        else:
            self.generator.manual_seed(reseed + 7919 * pr["global_step"])
        torch.set_rng_state(tensors["rng.torch_cpu"])
        if "rng.torch_cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.torch_cuda"], self.device)
        js = meta["python_random"]
        random.setstate((js[0], tuple(js[1]), js[2]))
        self.progress = Progress(pr["epoch"], pr["batch"], pr["global_step"], list(meta.get("history", [])))

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        return Path(path).is_file()
