"""The backbone stages of ``blockdrop reproduce`` (see :mod:`blockdrop.recipes.presets`): the
stages that train a backbone (pretrain, adapt, the full network and the fixed-policy baselines,
the weight average), each writing where :class:`~blockdrop.recipes.run.RunPaths` says.
The policy stages are in :mod:`blockdrop.recipes.policy_stage`. Every stage saves a
``blockdrop.load``-able checkpoint; with ``run.resume`` a finished stage is loaded instead of run
again."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from torch import nn

from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import load_backbone, load_blockdrop_net, save_blockdrop_net
from blockdrop.data import DataInfo, make_loader
from blockdrop.errors import IncompatibleError
from blockdrop.evaluation.evaluate import EvalResult, evaluate
from blockdrop.models.base import ResNetBackbone
from blockdrop.recipes.run import Run
from blockdrop.training.averaging import average_weights
from blockdrop.training.baselines import (
    BaselinePolicy,
    PolicySampler,
    drop_path_policy,
    first_k_policy,
    full_policy,
    random_k_policy,
    static_policy,
)
from blockdrop.training.config import SupervisedConfig
from blockdrop.training.supervised import ReplayTeacher, train_supervised

__all__ = [
    "evaluate_on",
    "ft_steps",
    "supervised_alike",
    "stage_pretrain",
    "stage_adapt",
    "stage_full_adapt",
    "stage_full",
    "stage_family",
    "stage_soup",
    "stage_baseline",
]


def evaluate_on(run: Run, net: BlockDropNet, data: DataInfo) -> EvalResult:
    """``net``'s accuracy, blocks and FLOPs on ``data`` (every image, the preset's eval batch). A
    random baseline policy (RandomK, FirstK) starts from its seed, so its draws on ``data`` do not
    depend on what was evaluated before."""
    if isinstance(net.policy_net, BaselinePolicy):
        net.policy_net.reset()
    loader = make_loader(data.dataset, run.preset.evaluation.batch_size, train=False)
    return evaluate(net, loader, run.device, full=False, flops=True, progress=False)


def ft_steps(run: Run) -> int:
    """The joint finetuning's optimisation steps (0 without one), for the baselines trained alike."""
    ft = run.preset.finetune
    if ft is None:
        return 0
    if ft.steps is not None:
        return ft.steps
    batches = len(run.train.dataset) // int(ft.batch_size or 1)
    return int(ft.epochs or 10) * min(batches, ft.steps_per_epoch or batches)


def supervised_alike(run: Run, steps: int) -> SupervisedConfig:
    """Stage 3's backbone optimiser as a supervised run: Adam, the same lr, batch, loss, BN and
    precision. (The joint stage decays its lr x0.1 at 80%; the supervised loop by a cosine.)"""
    ft = run.preset.finetune
    assert ft is not None
    return run.stage_config(
        SupervisedConfig(
            steps=steps,
            batch_size=int(ft.batch_size or 1),
            lr=float(ft.lr or 0),
            optimizer="adam",
            weight_decay=ft.weight_decay,
            distill=ft.distill,
            temperature=ft.temperature,
            bn=ft.bn,
            strategy=ft.strategy,
            amp=ft.amp,
        )
    )


def _train_fixed(
    run: Run,
    backbone: ResNetBackbone,
    sampler: PolicySampler,
    cfg: SupervisedConfig,
    timer: str,
    teacher: nn.Module | None,
) -> None:
    run.timed(timer, lambda: train_supervised(backbone, run.train, sampler, cfg, run.device, teacher=teacher))


def _save_full_path(run: Run, path: Path, backbone: ResNetBackbone, stage: str) -> None:
    save_blockdrop_net(
        path,
        BlockDropNet(BaselinePolicy("full", backbone.num_blocks), backbone),
        {**run.meta, "stage": stage},
    )
    run.checkpointed()


def stage_pretrain(run: Run, backbone: ResNetBackbone) -> ResNetBackbone:
    """No pretrained weights: train ``backbone`` from scratch (``preset.pretrain``: stochastic
    depth at its ``keep``)."""
    path, cfg = run.paths.pretrained(), run.preset.pretrain
    if run.resume and path.is_file():
        run.log(f"[pretrain] reusing {path}")
        return load_blockdrop_net(path, run.device)[0].backbone
    if cfg is None:
        raise ValueError(
            f"weights: preset {run.preset.name!r} needs pretrained weights (it has no pretrain stage)"
        )
    run.log(f"[pretrain] {cfg.steps} steps from scratch (stochastic depth, keep {cfg.keep})")
    _train_fixed(
        run,
        backbone,
        drop_path_policy(cfg.keep, backbone.num_blocks),
        run.stage_config(cfg),
        "pretrain",
        None,
    )
    _save_full_path(run, path, backbone, "pretrain")
    return backbone


def _replayed(run: Run, teacher: nn.Module) -> ReplayTeacher:
    """The teacher's one recording, shared by the stages that distil from it on the same batches
    (adapt and the full baseline: same seed, batch size and data), rewound."""
    if run.replay is None or run.replay.teacher is not teacher:
        run.replay = ReplayTeacher(teacher)
    run.replay.rewind()
    return run.replay


def stage_adapt(run: Run, pretrained: ResNetBackbone) -> ResNetBackbone:
    """A copy of ``pretrained`` trained under stochastic depth (``preset.adapt``; without it the
    copy as it is), distilled from ``pretrained``."""
    path, cfg = run.paths.adapted(), run.preset.adapt
    if run.resume and path.is_file():
        run.log(f"[adapt] reusing {path}")
        return load_blockdrop_net(path)[0].backbone
    backbone = copy.deepcopy(pretrained)
    if cfg is not None:
        run.log(
            f"[adapt] {cfg.steps} steps of stochastic depth (keep {cfg.keep}), "
            f"distill {cfg.distill}{' in place' if cfg.inplace else ''}"
        )
        _train_fixed(
            run,
            backbone,
            drop_path_policy(cfg.keep, backbone.num_blocks),
            run.stage_config(cfg),
            "adapt",
            _replayed(run, pretrained),
        )
    _save_full_path(run, path, backbone, "adapt")
    return backbone


def stage_full_adapt(run: Run, pretrained: ResNetBackbone) -> ResNetBackbone:
    """The full network after the adapt stage's steps, optimiser and loss (every block, every
    image; distilled from ``pretrained``, whose outputs the adapt stage recorded): the partner of
    the weight average and the start of :func:`stage_full`. Saved at :meth:`RunPaths.full_adapt`;
    trained once per run."""
    if "full_adapt" in run.cache:
        return run.cache["full_adapt"]
    path = run.paths.full_adapt()
    if run.resume and path.is_file():
        run.log(f"[baseline full] reusing {path}")
        backbone = load_blockdrop_net(path, run.device)[0].backbone
    else:
        backbone = copy.deepcopy(pretrained)
        _adapt_phase(run, backbone, "full", _replayed(run, pretrained))
        _save_full_path(run, path, backbone, "baseline_full_adapt")
    run.cache["full_adapt"] = backbone
    return backbone


def stage_full(run: Run, pretrained: ResNetBackbone) -> BlockDropNet:
    """The full network finetuned alike: from the pretrained weights, the adapt stage's steps,
    optimiser and loss (:func:`stage_full_adapt`), then the finetune stage's -- every block,
    every image."""
    path = run.paths.full()
    if run.resume and path.is_file():
        run.log(f"[baseline full] reusing {path}")
        return load_blockdrop_net(path, run.device)[0]
    backbone = copy.deepcopy(stage_full_adapt(run, pretrained))
    return _finetune_phase(run, backbone, "full", path)


def stage_family(run: Run, weights: Path, path: Path) -> BlockDropNet:
    """A smaller network of the same family (its pretrained ``weights``), finetuned exactly as the
    full network is (:func:`stage_full`), distilled from its own pretrained weights."""
    if run.resume and path.is_file():
        run.log(f"[baseline {path.stem}] reusing {path}")
        return load_blockdrop_net(path, run.device)[0]
    member, spec = load_backbone(weights, None, run.train.num_classes)
    if spec.get("num_classes") != run.train.num_classes:
        raise IncompatibleError(
            f"family_weights: {weights} predicts {spec.get('num_classes')} "
            f"classes, the data has {run.train.num_classes}"
        )
    member = member.to(run.device).eval()
    backbone = copy.deepcopy(member)
    _adapt_phase(run, backbone, path.stem, member)
    return _finetune_phase(run, backbone, path.stem, path)


def _adapt_phase(run: Run, backbone: ResNetBackbone, name: str, teacher: nn.Module) -> None:
    """``backbone`` trained in place with every block as the adapt stage trains (``teacher`` the
    source of its soft targets); nothing without an adapt stage."""
    cfg = run.preset.adapt
    if cfg is None:
        return
    # in place, the adapt stage trains the full path by plain cross-entropy: so does this one
    full_cfg = run.stage_config(dataclasses.replace(cfg, inplace=False, distill=0.0) if cfg.inplace else cfg)
    run.log(f"[baseline {name}] {cfg.steps} steps as the adapt stage, every block")
    hits = getattr(teacher, "hits", 0)
    _train_fixed(run, backbone, full_policy(backbone.num_blocks), full_cfg, f"baseline_{name}_adapt", teacher)
    if full_cfg.distill and isinstance(teacher, ReplayTeacher):
        run.log(
            f"[baseline {name}] teacher outputs replayed from the adapt stage: "
            f"{teacher.hits - hits} of {cfg.steps} steps"
        )


def _finetune_phase(run: Run, backbone: ResNetBackbone, name: str, path: Path) -> BlockDropNet:
    """``backbone`` trained with every block as the joint stage trains the backbone (distilled
    from itself as it starts), saved at ``path`` as a full-policy model."""
    nb = backbone.num_blocks
    steps = ft_steps(run)
    if steps:
        run.log(f"[baseline {name}] {steps} steps as the finetune stage, every block")
        _train_fixed(
            run,
            backbone,
            full_policy(nb),
            supervised_alike(run, steps),
            f"baseline_{name}",
            copy.deepcopy(backbone).eval(),
        )
    net = BlockDropNet(BaselinePolicy("full", nb), backbone, strategy="auto")
    save_blockdrop_net(path, net, {**run.meta, "stage": f"baseline_{name}"})
    run.checkpointed()
    return net.to(run.device).eval()


def stage_soup(run: Run, adapted: ResNetBackbone, partner: ResNetBackbone | None) -> ResNetBackbone:
    """The backbone BlockDrop starts from: ``adapted`` itself, or with ``adapt.soup`` = s > 0
    ``(1 - s) * adapted + s * partner`` weight by weight, ``partner`` being the full network
    trained alike to the point ``adapted`` is at (:func:`stage_full_adapt`, required then)."""
    s = run.preset.adapt.soup if run.preset.adapt is not None else 0.0
    if not s:
        return adapted
    if partner is None:
        raise ValueError(f"adapt.soup: {s} averages with the full network trained alike; train it first")
    path = run.paths.souped()
    if run.resume and path.is_file():
        run.log(f"[soup] reusing {path}")
        return load_blockdrop_net(path)[0].backbone
    run.log(
        f"[soup] BlockDrop's backbone: {1 - s:g} x adapted + {s:g} x the full network trained "
        f"alike (after the adapt stage's steps)"
    )
    souped = average_weights(adapted, partner, s)
    _save_full_path(run, path, souped, "soup")
    return souped


def stage_baseline(
    run: Run, adapted: ResNetBackbone, kind: str, k: float, path: Path, dropped: list[int] | None = None
) -> BlockDropNet:
    """FirstK / RandomK at ``k`` blocks, or StaticK without the blocks ``dropped``: from the
    backbone BlockDrop starts from, the finetune stage's steps, optimiser and loss under the
    fixed policy."""
    if run.resume and path.is_file():
        run.log(f"[baseline {kind}] reusing {path}")
        return load_blockdrop_net(path, run.device)[0]
    nb = adapted.num_blocks
    backbone = copy.deepcopy(adapted)
    policy = BaselinePolicy(kind, nb, k=k, seed=run.seed, dropped=dropped)
    make = {"first_k": first_k_policy, "random_k": random_k_policy}.get(kind)
    sampler = make(k, nb) if make else static_policy(dropped or [], nb)
    steps = ft_steps(run)
    if steps:
        run.log(f"[baseline {kind}] k = {k:.2f}: {steps} finetune steps")
        _train_fixed(run, backbone, sampler, supervised_alike(run, steps), f"baseline_{kind}", adapted)
    net = BlockDropNet(policy, backbone, strategy="auto")
    save_blockdrop_net(path, net, {**run.meta, "stage": f"baseline_{kind}"})
    run.checkpointed()
    return net.to(run.device).eval()
