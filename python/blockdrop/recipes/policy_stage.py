"""The policy stages of ``blockdrop reproduce`` (see :mod:`blockdrop.recipes.presets`): the policy
network's curriculum over the frozen backbone, then the optional joint finetuning -- once per
gamma and per *draw* (``preset.cl_draws`` policies trained from different seeds, each a candidate
for the validation choice). Where each draw writes its models: :func:`curriculum_checkpoint`,
:func:`final_checkpoint`; with ``run.resume`` a finished draw is loaded instead of trained again."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import load_blockdrop_net, read_meta, save_blockdrop_net
from blockdrop.data import make_loader, take_subset
from blockdrop.training.drop_costs import keep_prior, single_drop_costs
from blockdrop.models.policy import CifarPolicyNet, make_policy_net
from blockdrop.recipes.stages import Run, ft_schedule, ft_steps
from blockdrop.training.trainer import Trainer, TrainConfig

__all__ = ["stage_blockdrop", "final_stage", "curriculum_checkpoint", "final_checkpoint"]


def _stage_dir(run: Run, gamma: float, stage: str, draw: int) -> Path:
    return run.paths.stage(gamma, stage if draw == 0 else f"{stage}_draw{draw}")


def stage_blockdrop(run: Run, backbone: nn.Module, gamma: float,
                    adapted: nn.Module | None = None, draw: int = 0,
                    full: nn.Module | None = None) -> BlockDropNet:
    """The policy network's curriculum over ``backbone`` (frozen), then, with finetune steps, the
    joint finetuning of both; draw ``draw`` trains with seed ``run.seed + draw``. With
    ``preset.cl_prior`` the policy network starts as the static policy of the backbone's
    single-block drop costs (:mod:`blockdrop.training.drop_costs`, measured on ``preset.prior_images``
    training images). With ``preset.cl_on_adapted`` the curriculum
    learns over ``adapted`` instead (the backbone before weight averaging; required then) and the
    learnt policy is put on a copy of ``backbone``, which the finetune (if any) trains and the
    model executes; that model is saved at :func:`curriculum_checkpoint`. The finetune's teacher
    (``preset.ft_distill``) is ``backbone`` as it starts, or with ``preset.ft_teacher == "full"``
    the backbone ``full`` (the full network finetuned alike; required then)."""
    p = run.preset
    ft_dir, cl_dir = _stage_dir(run, gamma, "finetune", draw), _stage_dir(run, gamma, "curriculum", draw)
    tag = f"[gamma {gamma:g}{f', draw {draw}' if draw else ''}]"
    if run.resume and _finished(run, gamma, draw):
        run.log(f"{tag} reusing {final_checkpoint(run, gamma, draw)}")
        return load_blockdrop_net(final_checkpoint(run, gamma, draw), run.device)[0]  # type: ignore[return-value]
    rebased = _rebased(run)
    if p.ft_distill and p.ft_teacher == "full" and full is None:
        raise ValueError("ft_teacher='full': the finetune distils from the full network finetuned "
                         "alike; pass it as full")
    if rebased and adapted is None:
        raise ValueError("cl_on_adapted: the curriculum learns over the backbone before averaging; "
                         "pass it as adapted")
    learn_on = copy.deepcopy(adapted if rebased else backbone)
    seed = run.seed + draw
    torch.manual_seed(seed)
    pnet = make_policy_net(learn_on.num_blocks, run.train.image_size)
    if isinstance(pnet, CifarPolicyNet) and pnet.width != p.policy_width:
        pnet = CifarPolicyNet(learn_on.num_blocks, width=p.policy_width)
    k = learn_on.num_blocks
    meta = {**run.meta, "policy_spec": pnet.spec(), "draw": draw}
    if p.cl_prior:
        costs = _drop_costs(run, adapted if rebased else backbone)
        pnet.set_prior(keep_prior(costs, *p.prior_keep))
        meta["drop_costs"] = [round(float(c), 6) for c in costs]
        run.log(f"{tag} policy prior from single-block drop costs ({p.prior_images} "
                f"training images): cheapest blocks {costs.argsort()[:6].tolist()}")
    common = dict(batch_size=p.batch_size, seed=seed, progress=run.progress,
                  device=str(run.device), strategy=p.strategy, amp=p.amp, log_every=20)
    cl_step = p.cl_step or k                   # None: every block learned from the first step
    epochs = p.cl_epochs or (math.ceil(k / cl_step) + p.cl_extra_epochs)
    steps = ft_steps(run)
    cl = TrainConfig(stage="curriculum", epochs=epochs, steps_per_epoch=p.cl_steps_per_epoch,
                     lr=p.cl_lr, gamma=p.cl_gamma if steps else gamma, cl_step=cl_step,
                     **{**common, "batch_size": p.cl_batch_size or p.batch_size})
    run.log(f"{tag} curriculum: {epochs} epochs, "
            f"{'every block learned' if cl_step >= k else f'{cl_step} more blocks per epoch'}"
            f"{' (over the backbone before averaging)' if rebased else ''}")
    run.timed(f"curriculum_gamma{gamma:g}", lambda: Trainer(
        cl, pnet, learn_on, run.train, cl_dir, extra_meta=meta).fit(resume=run.resume))
    executed = learn_on
    if rebased:
        executed = copy.deepcopy(backbone)
        run.log(f"{tag} the policy executes on the averaged backbone")
        save_blockdrop_net(curriculum_checkpoint(run, gamma, draw), BlockDropNet(pnet, executed),
                           {**meta, "stage": "curriculum", "gamma": gamma,
                            "policy_learnt_on": "the adapted backbone before averaging"})
    if steps:
        epochs, per_epoch = ft_schedule(steps, len(run.train.dataset) // p.batch_size)  # type: ignore[arg-type]
        ft = TrainConfig(stage="finetune", epochs=epochs, steps_per_epoch=per_epoch, lr=p.ft_lr,
                         gamma=gamma, bn=p.ft_bn, baseline_eval=p.ft_baseline_eval,
                         distill=p.ft_distill, alpha=p.ft_alpha,
                         backbone_on=p.ft_backbone_on, **common)
        run.log(f"{tag} joint finetuning: {epochs * per_epoch} steps "
                f"({epochs} epoch(s) of {per_epoch})")
        run.timed(f"finetune_gamma{gamma:g}", lambda: Trainer(
            ft, pnet, executed, run.train, ft_dir, extra_meta=meta,
            teacher=(full if p.ft_teacher == "full" else backbone) if p.ft_distill else None
        ).fit(resume=run.resume))
    return BlockDropNet(pnet, executed, strategy="auto").to(run.device).eval()


def _drop_costs(run: Run, backbone: nn.Module) -> torch.Tensor:
    """Single-block drop costs ``[K]`` of ``backbone`` on ``preset.prior_images`` training images
    (never the validation split); measured once per backbone object and run."""
    key = ("drop_costs", id(backbone))
    if key not in run.cache:       # the entry holds the backbone, so its id is never reused
        sub = take_subset(run.train, run.preset.prior_images, seed=run.seed + 1)
        run.cache[key] = (backbone, run.timed("costs", lambda: single_drop_costs(
            backbone, make_loader(sub.dataset, 250, train=False), run.device, amp=run.preset.amp)))
    return run.cache[key][1]


def _rebased(run: Run) -> bool:
    """Whether the curriculum learns over another backbone than the model executes on."""
    return bool(run.preset.cl_on_adapted and run.preset.soup_full)


def _finished(run: Run, gamma: float, draw: int = 0) -> bool:
    path = final_checkpoint(run, gamma, draw)
    if path.name != "last.safetensors":        # written only once the curriculum has finished
        return path.is_file()
    return path.is_file() and bool(read_meta(path.parent)["progress"]["done"])


def final_stage(run: Run) -> str:
    """The last training stage of each gamma's model ("finetune", or "curriculum" without one)."""
    return "finetune" if ft_steps(run) else "curriculum"


def curriculum_checkpoint(run: Run, gamma: float, draw: int = 0) -> Path:
    """The curriculum's model: its trainer's last checkpoint, or with ``cl_on_adapted`` the learnt
    policy on the averaged backbone."""
    cl_dir = _stage_dir(run, gamma, "curriculum", draw)
    return cl_dir / ("executed.safetensors" if _rebased(run) else "last.safetensors")


def final_checkpoint(run: Run, gamma: float, draw: int = 0) -> Path:
    """Each gamma's (and draw's) model: the finetune's last checkpoint, or without one the
    curriculum's."""
    if ft_steps(run):
        return _stage_dir(run, gamma, "finetune", draw) / "last.safetensors"
    return curriculum_checkpoint(run, gamma, draw)
