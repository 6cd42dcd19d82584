"""The backbone stages of ``blockdrop reproduce`` (see :mod:`blockdrop.recipes.presets`): where
each writes its model (:class:`RunPaths`), what they share (:class:`Run`), and the stages that train
a backbone (pretrain, adapt, the full network and the fixed-policy baselines, the weight average).
The policy stages are in :mod:`blockdrop.recipes.policy_stage`. Every stage saves a
``blockdrop.load``-able checkpoint; with ``run.resume`` a finished stage is loaded instead of run
again."""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from blockdrop.training.averaging import average_weights
from blockdrop.training.baselines import BaselinePolicy, drop_path_policy, first_k_policy, full_policy, random_k_policy
from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import load_blockdrop_net, save_blockdrop_net
from blockdrop.data import DataInfo, make_loader
from blockdrop.errors import IncompatibleError
from blockdrop.evaluation.evaluate import EvalResult, evaluate
from blockdrop.recipes.presets import Preset
from blockdrop.training.supervised import ReplayTeacher, SupervisedConfig, train_supervised

__all__ = ["RunPaths", "Run", "evaluate_on", "ft_steps", "ft_schedule", "stage_pretrain",
           "stage_adapt", "stage_full", "stage_soup", "stage_baseline"]


@dataclass
class RunPaths:
    """Where each stage's model goes under ``out``."""
    out: Path

    _OWN = ("pretrain", "adapt", "baselines", "report.json", "report.md", "blockdrop.safetensors",
            "blockdrop.json", "tradeoff.png", "block_usage.png", "policy_grid.png", "results.json",
            "results.txt")

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Refuse an ``out`` holding another run unless resuming or overwriting (which removes
        only what a run writes)."""
        if resume and overwrite:
            raise IncompatibleError("resume and overwrite exclude each other")
        if self.out.exists() and not self.out.is_dir():
            raise IncompatibleError(f"out: {self.out} exists and is not a directory")
        ours = [self.out / n for n in self._OWN] + sorted(self.out.glob("gamma*"))
        present = [q for q in ours if q.exists()]
        if present and not (resume or overwrite):
            raise IncompatibleError(f"out: {self.out} already holds a run ({present[0].name}); "
                                    f"resume it (--resume) or replace it (--overwrite)")
        if overwrite:
            import shutil
            for q in present:
                shutil.rmtree(q) if q.is_dir() else q.unlink()
        self.out.mkdir(parents=True, exist_ok=True)

    def pretrained(self) -> Path:
        return self.out / "pretrain" / "backbone.safetensors"

    def adapted(self) -> Path:
        return self.out / "adapt" / "backbone.safetensors"

    def souped(self) -> Path:
        return self.out / "adapt" / "souped.safetensors"

    def full(self) -> Path:
        return self.out / "baselines" / "full.safetensors"

    def full_adapt(self) -> Path:
        """The full network after the adapt stage's steps only (written when finetune steps follow)."""
        return self.out / "baselines" / "full_adapt.safetensors"

    def baseline(self, kind: str, gamma: float, threshold: float, tag: str = "") -> Path:
        return self.out / "baselines" / f"{kind}_gamma{gamma:g}_t{threshold:g}{tag}.safetensors"

    def stage(self, gamma: float, stage: str) -> Path:
        return self.out / f"gamma{gamma:g}" / stage


@dataclass
class Run:
    """Everything the stages share."""
    preset: Preset
    paths: RunPaths
    device: torch.device
    seed: int
    progress: bool
    resume: bool
    train: DataInfo
    val: DataInfo
    meta: dict[str, Any]
    log: Callable[[str], None]
    seconds: dict[str, float] = field(default_factory=dict)
    replay: ReplayTeacher | None = None     # the pretrained teacher's recording (adapt -> full)
    cache: dict[Any, Any] = field(default_factory=dict)   # measurements shared by stages (drop costs)

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        t = time.time()
        out = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.time() - t
        return out


def evaluate_on(run: Run, net: BlockDropNet, data: DataInfo) -> EvalResult:
    loader = make_loader(data.dataset, 500, train=False)
    return evaluate(net, loader, run.device, full=False, flops=True, progress=False)


def _ft_config(run: Run, steps: int, distill: float) -> SupervisedConfig:
    """Stage 3's backbone optimiser as a supervised run: Adam, the same lr and loss. (The joint
    stage decays its lr x0.1 at 80%; the supervised loop decays it by a cosine -- stated in
    docs/TRAINING.md.)"""
    p = run.preset
    return SupervisedConfig(steps=steps, batch_size=p.batch_size, lr=p.ft_lr, optimizer="adam",
                            weight_decay=0.0, distill=distill, bn=p.ft_bn, strategy=p.strategy,
                            amp=p.amp, seed=run.seed, progress=run.progress)


def stage_pretrain(run: Run, backbone: nn.Module) -> nn.Module:
    """No pretrained weights: train ``backbone`` from scratch (SGD 0.1, cosine, stochastic depth)."""
    path, p = run.paths.pretrained(), run.preset
    if run.resume and path.is_file():
        run.log(f"[pretrain] reusing {path}")
        return load_blockdrop_net(path, run.device)[0].backbone
    if not p.pretrain_steps:
        raise ValueError(f"weights: preset {p.name!r} needs pretrained weights (it has no pretrain stage)")
    run.log(f"[pretrain] {p.pretrain_steps} steps from scratch (stochastic depth, keep {p.pretrain_keep})")
    cfg = SupervisedConfig(steps=p.pretrain_steps, batch_size=p.batch_size, lr=0.1, amp=p.amp,
                           seed=run.seed, progress=run.progress)
    run.timed("pretrain", lambda: train_supervised(
        backbone, run.train, drop_path_policy(p.pretrain_keep, backbone.num_blocks), cfg, run.device))
    save_blockdrop_net(path, BlockDropNet(BaselinePolicy("full", backbone.num_blocks), backbone),
                       {**run.meta, "stage": "pretrain"})
    return backbone


def _replayed(run: Run, teacher: nn.Module) -> ReplayTeacher:
    """The teacher's one recording, shared by the stages that distil from it on the same batches
    (adapt and the full baseline: same seed, batch size and data), rewound."""
    if run.replay is None or run.replay.teacher is not teacher:
        run.replay = ReplayTeacher(teacher)
    run.replay.rewind()
    return run.replay


def _adapt_config(run: Run) -> SupervisedConfig:
    p = run.preset
    return SupervisedConfig(steps=max(1, p.adapt_steps), batch_size=p.batch_size, lr=p.adapt_lr,
                            distill=p.adapt_distill, inplace=p.adapt_inplace,
                            temperature=p.adapt_temperature, full_distill=p.adapt_full_distill,
                            anchor=p.adapt_anchor, strategy="gather",
                            amp=p.amp, seed=run.seed, progress=run.progress)


def stage_adapt(run: Run, pretrained: nn.Module) -> nn.Module:
    path, p = run.paths.adapted(), run.preset
    if run.resume and path.is_file():
        run.log(f"[adapt] reusing {path}")
        return load_blockdrop_net(path)[0].backbone
    backbone = copy.deepcopy(pretrained)
    if p.adapt_steps:
        run.log(f"[adapt] {p.adapt_steps} steps of stochastic depth (keep {p.adapt_keep}), "
                f"distill {p.adapt_distill}{' in place' if p.adapt_inplace else ''}"
                f"{f', anchor {p.adapt_anchor}' if p.adapt_anchor else ''}")
        run.timed("adapt", lambda: train_supervised(
            backbone, run.train, drop_path_policy(p.adapt_keep, backbone.num_blocks),
            _adapt_config(run), run.device, teacher=_replayed(run, pretrained)))
    save_blockdrop_net(path, BlockDropNet(BaselinePolicy("full", backbone.num_blocks), backbone),
                       {**run.meta, "stage": "adapt"})
    return backbone


def stage_full(run: Run, pretrained: nn.Module) -> BlockDropNet:
    """The full network finetuned alike: from the pretrained weights, the adapt stage's steps,
    optimiser and loss, then the finetune stage's -- every block, every image."""
    path, p = run.paths.full(), run.preset
    if run.resume and path.is_file():
        run.log(f"[baseline full] reusing {path}")
        return load_blockdrop_net(path, run.device)[0]  # type: ignore[return-value]
    backbone = copy.deepcopy(pretrained)
    nb = backbone.num_blocks
    if p.adapt_steps:
        # in-place adaptation trains the full path by its own share of the loss (its
        # distillation term into itself would be zero): that is the full baseline's loss
        cfg = _adapt_config(run)
        if p.adapt_inplace:   # the full path's loss: CE, blended with the pretrained soft targets
            cfg = dataclasses.replace(cfg, inplace=False, distill=p.adapt_full_distill,
                                      temperature=cfg.teacher_temperature, full_distill=0.0)
        run.log(f"[baseline full] {p.adapt_steps} steps as the adapt stage, every block")
        teacher = _replayed(run, pretrained)
        hits = teacher.hits
        run.timed("baseline_full", lambda: train_supervised(
            backbone, run.train, full_policy(nb), cfg, run.device, teacher=teacher))
        if cfg.distill or cfg.full_distill:
            run.log(f"[baseline full] teacher outputs replayed from the adapt stage: "
                    f"{teacher.hits - hits} of {p.adapt_steps} steps")
    steps = ft_steps(run)
    if steps:
        save_blockdrop_net(run.paths.full_adapt(), BlockDropNet(BaselinePolicy("full", nb), backbone),
                           {**run.meta, "stage": "baseline_full_adapt"})
        run.log(f"[baseline full] {steps} steps as the finetune stage, every block")
        teacher = copy.deepcopy(backbone).eval()
        run.timed("baseline_full", lambda: train_supervised(
            backbone, run.train, full_policy(nb), _ft_config(run, steps, p.ft_distill), run.device,
            teacher=teacher))
    net = BlockDropNet(BaselinePolicy("full", nb), backbone, strategy="auto")
    save_blockdrop_net(path, net, {**run.meta, "stage": "baseline_full"})
    return net.to(run.device).eval()


def stage_soup(run: Run, adapted: nn.Module, full: BlockDropNet | None) -> nn.Module:
    """The backbone BlockDrop starts from: ``adapted`` itself, or with ``preset.soup_full`` > 0
    ``(1 - s) * adapted + s * full`` weight by weight, ``full`` being the full network finetuned
    alike (:func:`stage_full`, required then) at the point of training ``adapted`` is at: after the
    adapt stage's steps, before any finetune steps (:meth:`RunPaths.full_adapt`)."""
    s = run.preset.soup_full
    if not s:
        return adapted
    if full is None:
        raise ValueError(f"soup_full: {s} averages with the full network finetuned alike; train it first")
    path = run.paths.souped()
    if run.resume and path.is_file():
        run.log(f"[soup] reusing {path}")
        return load_blockdrop_net(path)[0].backbone
    partner = full.backbone
    if ft_steps(run):
        if not run.paths.full_adapt().is_file():
            raise ValueError(f"soup_full: {run.paths.full_adapt()} (the full network after the adapt "
                             f"stage's steps) is missing; rerun the full baseline (without --resume)")
        partner = load_blockdrop_net(run.paths.full_adapt(), run.device)[0].backbone
    run.log(f"[soup] BlockDrop's backbone: {1 - s:g} x adapted + {s:g} x the full network finetuned "
            f"alike (after the adapt stage's steps)")
    souped = average_weights(adapted, partner, s)
    save_blockdrop_net(path, BlockDropNet(BaselinePolicy("full", souped.num_blocks), souped),
                       {**run.meta, "stage": "soup"})
    return souped


def stage_baseline(run: Run, adapted: nn.Module, kind: str, k: float, path: Path) -> BlockDropNet:
    """FirstK / RandomK at ``k`` blocks: from the adapted backbone (as BlockDrop), the finetune
    stage's steps, optimiser and loss under the fixed policy."""
    if run.resume and path.is_file():
        run.log(f"[baseline {kind}] reusing {path}")
        return load_blockdrop_net(path, run.device)[0]  # type: ignore[return-value]
    p, nb = run.preset, adapted.num_blocks
    backbone = copy.deepcopy(adapted)
    sampler = first_k_policy(k, nb) if kind == "first_k" else random_k_policy(k, nb)
    steps = ft_steps(run)
    if steps:
        run.log(f"[baseline {kind}] k = {k:.2f}: {steps} finetune steps")
        run.timed(f"baseline_{kind}", lambda: train_supervised(
            backbone, run.train, sampler, _ft_config(run, steps, p.ft_distill), run.device,
            teacher=adapted))
    net = BlockDropNet(BaselinePolicy(kind, nb, k=k, seed=run.seed), backbone, strategy="auto")
    save_blockdrop_net(path, net, {**run.meta, "stage": f"baseline_{kind}"})
    return net.to(run.device).eval()


def ft_steps(run: Run) -> int:
    p = run.preset
    if p.ft_steps is not None:
        return p.ft_steps
    return p.ft_epochs * (len(run.train.dataset) // p.batch_size)  # type: ignore[arg-type]


def ft_schedule(steps: int, batches_per_epoch: int) -> tuple[int, int]:
    """(epochs, steps per epoch) that make ``steps`` optimisation steps when an epoch holds at most
    ``batches_per_epoch`` batches: the fewest epochs, split evenly (the total is ``steps`` rounded
    up to a multiple of the epochs, at most ``epochs - 1`` more)."""
    if steps < 1 or batches_per_epoch < 1:
        raise ValueError(f"steps ({steps}) and batches per epoch ({batches_per_epoch}) must be >= 1")
    epochs = math.ceil(steps / batches_per_epoch)
    return epochs, math.ceil(steps / epochs)
