"""The policy stages of ``blockdrop reproduce`` (see :mod:`blockdrop.recipes.presets`): the policy
network's curriculum over the frozen backbone, then the optional joint finetuning -- once per
gamma and per *draw* (``curriculum.draws`` policies trained from different seeds, each a candidate
for the validation choice). Where each draw writes its models: :func:`curriculum_checkpoint`,
:func:`final_checkpoint`; with ``run.resume`` a finished draw is loaded instead of trained again."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import load_blockdrop_net, read_meta
from blockdrop.data import make_loader, take_subset
from blockdrop.models.base import ResNetBackbone
from blockdrop.models.policy import make_policy_net
from blockdrop.recipes.run import Run
from blockdrop.training.drop_costs import keep_prior, single_drop_costs
from blockdrop.training.trainer import Trainer

__all__ = ["stage_blockdrop", "final_stage", "curriculum_checkpoint", "final_checkpoint"]


def _stage_dir(run: Run, gamma: float, stage: str, draw: int) -> Path:
    return run.paths.stage(gamma, stage if draw == 0 else f"{stage}_draw{draw}")


def stage_blockdrop(run: Run, backbone: ResNetBackbone, gamma: float, draw: int = 0) -> BlockDropNet:
    """The policy network's curriculum over ``backbone`` (frozen), then, with a finetune stage,
    the joint finetuning of both, distilled from ``backbone`` as it starts; draw ``draw`` trains
    with seed ``run.seed + draw``. With ``curriculum.prior`` the policy network starts as the
    static policy of the backbone's single-block drop costs (:mod:`blockdrop.training.drop_costs`,
    measured on ``curriculum.prior_images`` training images). ``gamma`` is the finetune's penalty
    (the curriculum's without a finetune)."""
    p = run.preset
    cl_cfg, ft_cfg = p.curriculum, p.finetune
    ft_dir, cl_dir = _stage_dir(run, gamma, "finetune", draw), _stage_dir(run, gamma, "curriculum", draw)
    tag = f"[gamma {gamma:g}{f', draw {draw}' if draw else ''}]"
    if run.resume and _finished(run, gamma, draw):
        run.log(f"{tag} reusing {final_checkpoint(run, gamma, draw)}")
        return load_blockdrop_net(final_checkpoint(run, gamma, draw), run.device)[0]
    executed = copy.deepcopy(backbone)
    torch.manual_seed(run.seed + draw)
    k = executed.num_blocks
    pnet = make_policy_net(k, run.train.image_size, width=cl_cfg.width, pool=cl_cfg.pool)
    meta = {**run.meta, "policy_spec": pnet.spec(), "draw": draw}
    if cl_cfg.prior:
        costs = _drop_costs(run, backbone)
        pnet.set_prior(keep_prior(costs, *cl_cfg.prior_keep))
        meta["drop_costs"] = [round(float(c), 6) for c in costs]
        run.log(
            f"{tag} policy prior from single-block drop costs ({cl_cfg.prior_images} "
            f"training images): cheapest blocks {costs.argsort()[:6].tolist()}"
        )
    cl = run.stage_config(cl_cfg, draw)
    if ft_cfg is None:
        cl = dataclasses.replace(cl, gamma=gamma)
    trainer = Trainer(cl, pnet, executed, run.train, cl_dir, extra_meta=meta)

    def saved(_: Trainer) -> None:  # a trainer's checkpoint keeps the time spent up to it
        run.checkpointed()

    learned = "every block learned" if (cl.cl_step or k) >= k else f"{cl.cl_step} more blocks per epoch"
    run.log(f"{tag} curriculum: {trainer.cfg.epochs} epochs, {learned}")
    run.timed(f"curriculum_gamma{gamma:g}", lambda: trainer.fit(resume=run.resume, on_save=saved))
    if ft_cfg is not None:
        ft = dataclasses.replace(run.stage_config(ft_cfg, draw), gamma=gamma)
        teacher = backbone if ft.distill else None
        trainer = Trainer(ft, pnet, executed, run.train, ft_dir, extra_meta=meta, teacher=teacher)
        run.log(
            f"{tag} joint finetuning: {trainer.total_steps} steps "
            f"({trainer.cfg.epochs} epoch(s) of {trainer.batches_per_epoch})"
        )
        run.timed(f"finetune_gamma{gamma:g}", lambda: trainer.fit(resume=run.resume, on_save=saved))
    return BlockDropNet(pnet, executed, strategy="auto").to(run.device).eval()


def _drop_costs(run: Run, backbone: ResNetBackbone) -> torch.Tensor:
    """Single-block drop costs ``[K]`` of ``backbone`` on ``curriculum.prior_images`` training
    images (never the validation split); measured once per backbone object and run."""
    key = ("drop_costs", id(backbone))
    if key not in run.cache:  # the entry holds the backbone, so its id is never reused
        cfg = run.preset.curriculum
        sub = take_subset(run.train, cfg.prior_images, seed=run.seed + 1)
        run.cache[key] = (
            backbone,
            run.timed(
                "costs",
                lambda: single_drop_costs(
                    backbone, make_loader(sub.dataset, 250, train=False), run.device, amp=cfg.amp
                ),
            ),
        )
    return run.cache[key][1]


def _finished(run: Run, gamma: float, draw: int = 0) -> bool:
    path = final_checkpoint(run, gamma, draw)
    return path.is_file() and bool(read_meta(path.parent)["progress"]["done"])


def final_stage(run: Run) -> str:
    """The last training stage of each gamma's model ("finetune", or "curriculum" without one)."""
    return "finetune" if run.preset.finetune is not None else "curriculum"


def curriculum_checkpoint(run: Run, gamma: float, draw: int = 0) -> Path:
    """The curriculum's model: its trainer's last checkpoint."""
    return _stage_dir(run, gamma, "curriculum", draw) / "last.safetensors"


def final_checkpoint(run: Run, gamma: float, draw: int = 0) -> Path:
    """Each gamma's (and draw's) model: the finetune's last checkpoint, or without one the
    curriculum's."""
    stage = final_stage(run)
    return _stage_dir(run, gamma, stage, draw) / "last.safetensors"
