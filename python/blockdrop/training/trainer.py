"""BlockDrop training: the curriculum stage and joint finetuning (the official recipe).

Curriculum (``stage="curriculum"``): the backbone is frozen and in eval mode; at epoch ``t`` only
the last ``min(K, (t+1)*cl_step)`` blocks are learned, the others forced on with their
log-probabilities masked out; loss = REINFORCE with the self-critical baseline - beta * the
official entropy term (``rl.entropy``: ``-p log p`` over all blocks).

Finetuning (``stage="finetune"``): Adam over the policy network and the backbone together; loss =
REINFORCE term + cross-entropy of the backbone run on the *sampled* policy through the engine's
real dynamic path (``strategy``, default "gather", so dropped blocks are not computed and get no
gradient); ``distill > 0`` blends in a frozen teacher's soft targets.  The learning rate drops
x0.1 at 80% of the steps (official: epoch 1600 of 2000).  BatchNorm (``bn``):

* ``"train"`` (default, official): batch statistics in both passes (the sampled one and the
  self-critical baseline), running statistics updated.  **Which batch**: ``strategy="masked"``
  normalises over the whole batch, exactly as the official code (whose masked forward runs every
  image through every block); ``"gather"`` over the images that *execute* the block -- the
  population that reaches the block at inference;
* ``"frozen"``: BN layers in eval mode (running statistics used, never updated; affine weights
  still trained); gathered and masked execution then compute the same function.

The self-critical baseline (reward of the thresholded policy) runs under ``no_grad`` in the
backbone's current mode (official); ``baseline_eval=True`` runs it in eval mode instead, i.e. the
reward the model would get at test time.

Also: CPU or CUDA, AMP (float16 + GradScaler) on CUDA, DDP under ``torchrun`` (NCCL on CUDA, gloo
on CPU), atomic checkpoints with every RNG state so that ``resume`` after a kill reproduces an
uninterrupted run exactly, progress output (training.loop.progress), CSV metrics (TensorBoard
when installed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from blockdrop.checkpoint import atomic_write_bytes
from blockdrop.data import DataInfo, make_loader
from blockdrop.models.base import ResNetBackbone
from blockdrop.runtime import DistInfo, eval_mode, interrupt_at_step_end, resolve_device
from blockdrop.training import rl
from blockdrop.training.config import TrainConfig, resolve_schedule
from blockdrop.training.loop import Optimization, epoch_batches, progress
from blockdrop.training.metrics import MetricsLog
from blockdrop.training.train_state import TrainState
from blockdrop.training.train_step import BlockDropStep, ForcedOn, stats_dict

__all__ = ["TrainConfig", "Trainer"]

# --------------------------------------------------------------------------- trainer


class Trainer:
    """Runs one stage (curriculum or finetune) with checkpoints and exact resume.

    Args:
        cfg: the stage's :class:`TrainConfig`; its schedule is resolved here for the backbone's
            ``K`` and the data's batches per epoch (``self.cfg``, the resolved copy:
            :func:`~blockdrop.training.config.resolve_schedule`).
        policy_net: ``x [N,3,H,W] -> probs [N,K]``.
        backbone: a ``blockdrop.models.ResNetBackbone`` with ``num_blocks == K``.
        train_data / val_data: from :mod:`blockdrop.data`.
        out_dir: checkpoints (``last.safetensors`` + ``last.json``) and ``metrics.csv``.
        dist_info: from :func:`init_distributed` (default: single process on ``cfg.device``).
        extra_meta: JSON merged into every checkpoint (e.g. specs for rebuilding the models).
        teacher: the frozen network whose soft targets ``cfg.distill`` blends in (finetune);
            required when ``cfg.distill > 0``, kept in eval mode and never trained.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        policy_net: nn.Module,
        backbone: ResNetBackbone,
        train_data: DataInfo,
        out_dir: str | os.PathLike[str],
        val_data: DataInfo | None = None,
        dist_info: DistInfo | None = None,
        extra_meta: dict[str, Any] | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        if cfg.distill and teacher is None:
            raise ValueError("teacher: required when cfg.distill > 0")
        self.cfg = cfg
        self.dist = dist_info or DistInfo(device=resolve_device(cfg.device))
        self.device = self.dist.device
        self.out_dir = Path(out_dir)
        self.extra_meta = dict(extra_meta or {})
        self.train_data, self.val_data = train_data, val_data
        self.num_blocks = int(backbone.num_blocks)
        torch.manual_seed(cfg.seed)
        if teacher is not None:  # only run under no_grad: the caller's module stays trainable
            teacher = teacher.to(self.device).eval()
        self.step_module = BlockDropStep(policy_net, backbone, cfg, teacher).to(self.device)
        if cfg.channels_last:
            self.step_module.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher.to(memory_format=torch.channels_last)
        self.policy_net, self.backbone = policy_net, backbone
        finetune = cfg.stage == "finetune"
        for p in backbone.parameters():
            p.requires_grad_(finetune)
        params = [p for p in self.step_module.parameters() if p.requires_grad]
        self.opt = Optimization(
            torch.optim.Adam(params, lr=float(cfg.lr or 0), weight_decay=cfg.weight_decay),
            self.device,
            cfg.amp,
        )
        self.optimizer, self.scaler = self.opt.optimizer, self.opt.scaler
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed * 1000 + self.dist.rank + 1)
        self.step_module.generator = self.generator
        self.model: nn.Module = self.step_module
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.step_module, device_ids=ids, find_unused_parameters=finetune)
        assert cfg.batch_size is not None  # TrainConfig.__post_init__ sets it
        self.loader = make_loader(
            train_data.dataset,
            cfg.batch_size,
            train=True,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
        )
        nb = len(self.loader)
        if nb == 0:
            raise ValueError(
                f"dataset of {len(train_data.dataset)} images is smaller than one "
                f"batch ({cfg.batch_size} x {self.dist.world_size} processes)"
            )
        cfg = self.cfg = self.step_module.cfg = resolve_schedule(cfg, self.num_blocks, nb)
        self.batches_per_epoch = min(nb, cfg.steps_per_epoch or nb)
        self.total_steps = int(cfg.epochs or 0) * self.batches_per_epoch
        self.state = TrainState(
            policy_net, backbone, self.optimizer, self.scaler, self.generator, self.device
        )
        self.metrics = MetricsLog(self.out_dir, enabled=self.dist.is_main)

    # the run's position, kept in the resumable state
    epoch = property(
        lambda self: self.state.progress.epoch, lambda self, v: setattr(self.state.progress, "epoch", v)
    )
    batch = property(
        lambda self: self.state.progress.batch, lambda self, v: setattr(self.state.progress, "batch", v)
    )
    global_step = property(
        lambda self: self.state.progress.global_step,
        lambda self, v: setattr(self.state.progress, "global_step", v),
    )
    history = property(lambda self: self.state.progress.history)

    # ------------------------------------------------------------------ checkpoints
    def _gather_generator_states(self) -> list[Tensor]:
        st = self.generator.get_state()
        if not self.dist.distributed:
            return [st]
        out = [torch.empty_like(st) for _ in range(self.dist.world_size)]
        dist.all_gather_object(out, st)
        return out

    def checkpoint_path(self) -> Path:
        return self.out_dir / "last.safetensors"

    def best_path(self) -> Path:
        """``best.safetensors``: the epoch-end checkpoint with the highest validation accuracy."""
        return self.out_dir / "best.safetensors"

    def _best_acc(self) -> float:
        vals = [h["acc"] for h in self.history[:-1] if h.get("split") == "val"]
        return max(vals) if vals and self.best_path().is_file() else -1.0

    def _keep_best(self) -> None:
        """Copy the checkpoint just written to ``best`` (atomically, as every save)."""
        for src, dst in (
            (self.checkpoint_path(), self.best_path()),
            (self.checkpoint_path().with_suffix(".json"), self.best_path().with_suffix(".json")),
        ):
            atomic_write_bytes(dst, src.read_bytes())

    def save(self) -> None:
        """Write ``last.safetensors`` (+ ``.json``) atomically; collective under DDP."""
        gens = self._gather_generator_states()
        if self.dist.is_main:
            self.state.save(
                self.checkpoint_path(),
                gens,
                self.cfg,
                self.batches_per_epoch,
                self.dist.world_size,
                self.extra_meta,
            )

    def resume(self, path: str | os.PathLike[str] | None = None) -> bool:
        """Restore from ``path`` (default ``out_dir/last.safetensors``).  Returns False if there
        is no checkpoint yet (fresh start)."""
        path = Path(path) if path else self.checkpoint_path()
        if not path.is_file():
            return False
        self.state.restore(
            path,
            self.cfg.stage,
            self.dist.rank,
            self.dist.world_size,
            reseed=self.cfg.seed * 1000 + self.dist.rank + 1,
        )
        self.metrics.truncate(self.global_step)
        return True

    def log(self, row: dict[str, Any]) -> None:
        """Append a metrics row (rank 0): ``metrics.csv`` and TensorBoard if installed."""
        self.metrics.append(row)

    # ------------------------------------------------------------------ loop
    def curriculum_mask(self, epoch: int) -> Tensor | None:
        """Bool ``[K]`` of learned blocks at ``epoch`` (None once all are learned / finetune)."""
        if self.cfg.stage != "curriculum":
            return None
        assert self.cfg.cl_step is not None  # resolve_schedule sets it
        if rl.num_learned_blocks(self.num_blocks, epoch, self.cfg.cl_step) >= self.num_blocks:
            return None
        return rl.curriculum_mask(self.num_blocks, epoch, self.cfg.cl_step, self.device)

    def train_step(self, x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
        """One optimisation step; returns the stats tensor (``train_step.STAT_NAMES``)."""
        lr = self.cfg.lr_at(self.global_step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, stats = self.model(x, y, mask)
        self.opt.step(loss)
        return stats.detach()

    def fit(
        self,
        resume: bool = False,
        on_step: Callable[[Trainer], None] | None = None,
        on_save: Callable[[Trainer], None] | None = None,
    ) -> dict[str, Any]:
        """Train to ``cfg.epochs``; with ``resume`` continue from ``out_dir/last.safetensors``.

        ``on_step(trainer)`` runs after every step and its checkpoint (tests use it to simulate
        a kill); ``on_save(trainer)`` after every checkpoint written (a caller's own record of
        what a resume would keep). Returns the last validation metrics (or the last training
        metrics).

        Ctrl-C (SIGINT, single process) stops at the end of the current step, writes the
        checkpoint there and raises KeyboardInterrupt: ``resume`` continues exactly from it.
        """
        with interrupt_at_step_end() as interrupted:
            return self._fit(resume, on_step, interrupted, on_save or (lambda _: None))

    def _fit(
        self,
        resume: bool,
        on_step: Callable[[Trainer], None] | None,
        interrupted: Callable[[], bool],
        on_save: Callable[[Trainer], None],
    ) -> dict[str, Any]:
        if resume:
            self.resume()
        cfg, main = self.cfg, self.dist.is_main
        self.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        last: dict[str, Any] = {}
        while self.epoch < int(cfg.epochs or 0):
            epoch = self.epoch
            mask = self.curriculum_mask(epoch)
            learned = self.num_blocks if mask is None else int(mask.sum())
            self.step_module.train()
            batches = epoch_batches(self.loader, epoch, self.batch, self.batches_per_epoch - self.batch)
            bar = progress(
                self.batches_per_epoch,
                f"{cfg.stage} {epoch + 1}/{cfg.epochs}",
                main and cfg.progress,
                initial=self.batch,
            )
            acc_stats, n_acc = None, 0
            for x, y in batches:
                x = x.to(self.device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(self.device, non_blocking=True)
                stats = self.train_step(x, y, mask)
                acc_stats = stats if acc_stats is None else acc_stats + stats
                n_acc += 1
                self.batch += 1
                self.global_step += 1
                bar.update(1)
                if self.global_step % max(1, cfg.log_every) == 0 or self.batch == self.batches_per_epoch:
                    s = stats_dict(acc_stats / n_acc)
                    acc_stats, n_acc = None, 0
                    last = {
                        "step": self.global_step,
                        "epoch": epoch,
                        "split": "train",
                        "loss": s["loss_pg"],
                        "reward": s["reward"],
                        "acc": s["acc"],
                        "blocks": s["blocks"],
                        "learned_blocks": learned,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "time": round(time.time() - t0, 2),
                    }
                    bar.set_postfix(
                        reward=f"{s['reward']:.3f}", acc=f"{s['acc']:.3f}", blocks=f"{s['blocks']:.1f}"
                    )
                    self.log(last)
                if cfg.ckpt_every and self.global_step % cfg.ckpt_every == 0:
                    self.save()
                    on_save(self)
                if interrupted() and not self.dist.distributed:
                    bar.close()
                    self.save()
                    on_save(self)
                    raise KeyboardInterrupt(
                        f"stopped after step {self.global_step}; checkpoint {self.checkpoint_path()}"
                    )
                if on_step is not None:
                    on_step(self)
            bar.close()
            if self.val_data is not None and main:
                last = self.validate(epoch, learned, time.time() - t0)
            self.epoch, self.batch = epoch + 1, 0
            if main and last:
                self.history.append(last)
            self.save()
            on_save(self)
            if main and last.get("split") == "val" and last["acc"] > self._best_acc():
                self._keep_best()
        if self.dist.distributed:
            self._check_in_sync()
        return last

    def validate(self, epoch: int, learned: int, elapsed: float) -> dict[str, Any]:
        """Accuracy / blocks of the thresholded policy on ``val_data`` (rank 0)."""
        from blockdrop.blockdrop_net import BlockDropNet
        from blockdrop.evaluation.evaluate import evaluate

        assert self.val_data is not None and self.cfg.batch_size is not None
        mask = self.curriculum_mask(epoch)
        pnet = self.policy_net if mask is None else ForcedOn(self.policy_net, mask)
        net = BlockDropNet(pnet, self.backbone, strategy=self.cfg.strategy)
        loader = make_loader(self.val_data.dataset, max(self.cfg.batch_size, 256), train=False)
        with eval_mode(self.step_module):
            res = evaluate(
                net, loader, self.device, amp=self.cfg.amp, full=False, flops=False, progress=False
            )
        row = {
            "step": self.global_step,
            "epoch": epoch,
            "split": "val",
            "loss": float("nan"),
            "reward": float("nan"),
            "acc": res.accuracy,
            "blocks": res.blocks_mean,
            "learned_blocks": learned,
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": round(elapsed, 2),
        }
        self.log(row)
        if self.cfg.progress:
            print(
                f"[{self.cfg.stage}] epoch {epoch + 1}/{self.cfg.epochs}: val acc "
                f"{res.accuracy:.4f}, blocks {res.blocks_mean:.2f} +- {res.blocks_std:.2f} "
                f"(learning last {learned}/{self.num_blocks})",
                flush=True,
            )
        return row

    def _check_in_sync(self) -> None:
        """Under DDP all replicas must hold identical parameters; raise if not."""
        vec = torch.cat([p.detach().float().flatten() for p in self.step_module.parameters()])
        s = torch.stack([vec.sum(), (vec * vec).sum()]).double()  # on the device: NCCL gathers no CPU tensors
        all_s = [torch.zeros_like(s) for _ in range(self.dist.world_size)]
        dist.all_gather(all_s, s)
        if any(not torch.equal(a, all_s[0]) for a in all_s):
            raise RuntimeError("DDP replicas diverged")
