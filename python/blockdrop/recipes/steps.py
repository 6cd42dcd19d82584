"""The steps of ``blockdrop reproduce``, each a function a script can call on its own:

1. :func:`start_run` -- the output folder claimed, the data split, the pretrained backbone;
2. :func:`train_candidates` -- the backbone stages (adapt, the full network finetuned alike, the
   weight average) and, per gamma and draw, the policy stages, each model evaluated on validation
   at every threshold (:class:`Candidates`);
3. :func:`select` -- the operating point, chosen on validation (and saved);
4. :func:`train_baselines` -- what a user would pick instead, trained alike: the full network,
   StaticK, the smaller networks of the family, FirstK / RandomK;
5. :func:`blockdrop.recipes.verdict.evaluate_on_test` -- every model on the test set, once, and
   the measured speed;
6. :func:`blockdrop.recipes.report.build_report` -- the report (``to_dict()`` is ``report.json``).

Nothing before step 5 reads the test set.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch

from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import (
    atomic_write_text,
    backbone_spec,
    load_backbone,
    load_blockdrop_net,
    save_blockdrop_net,
)
from blockdrop.data import DataInfo, load_dataset, make_loader, split_train_val, take_subset
from blockdrop.errors import IncompatibleError
from blockdrop.evaluation.evaluate import EvalResult
from blockdrop.models.base import ResNetBackbone
from blockdrop.recipes import selection, stages
from blockdrop.recipes.config import Preset, dump_config, preset_to_dict
from blockdrop.recipes.policy_stage import (
    curriculum_checkpoint,
    final_checkpoint,
    final_stage,
    stage_blockdrop,
)
from blockdrop.recipes.run import Run, RunPaths
from blockdrop.recipes.selection import Point, describe, point_name, val_points
from blockdrop.recipes.stages import (
    stage_adapt,
    stage_baseline,
    stage_family,
    stage_full,
    stage_full_adapt,
    stage_pretrain,
    stage_soup,
)
from blockdrop.runtime import resolve_device
from blockdrop.training.drop_costs import greedy_drop_order

__all__ = [
    "Candidates",
    "Baseline",
    "as_data",
    "start_run",
    "train_candidates",
    "select",
    "write_validation",
    "train_baselines",
    "commit",
]

DataArg = str | os.PathLike[str] | DataInfo


@dataclass
class Candidates:
    """What the training steps produce: the backbones, every BlockDrop operating point on
    validation, and the full network finetuned alike with its validation result (trained here
    when the selection rule needs it as its reference, else by :func:`train_baselines`; the
    weight average needs only its adapt-stage point, :func:`stage_full_adapt`)."""

    pretrained: ResNetBackbone
    adapted: ResNetBackbone
    backbone: ResNetBackbone  # what BlockDrop executes: adapted, or the weight average
    full: BlockDropNet | None = None
    full_val: EvalResult | None = None
    points: list[Point] = field(default_factory=list)


@dataclass
class Baseline:
    """A baseline model: ``kind`` one of "first_k", "random_k" (for the validation point
    ``point``), "static_k" (``dropped`` blocks), "family" (a smaller network, ``name``)."""

    kind: str
    name: str
    path: Path
    net: BlockDropNet
    point: Point | None = None
    dropped: list[int] | None = None
    val: EvalResult | None = None  # on the run's validation data, set by train_baselines


def as_data(src: DataArg, split: str, seed: int) -> DataInfo:
    """``src`` itself when loaded, else :func:`blockdrop.data.load_dataset` of it."""
    return src if isinstance(src, DataInfo) else load_dataset(src, split, seed=seed)


def start_run(
    p: Preset,
    arch: str,
    train_data: DataArg,
    weights: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    val_data: DataArg | None = None,
) -> tuple[Run, ResNetBackbone, DataInfo]:
    """What every run of the recipe starts from: ``out`` claimed (see :meth:`RunPaths.claim`;
    resuming a run made with other settings is refused), the data (every choice is made on
    ``val_data``, the whole of ``train_data`` trains; without ``val_data``, ``p.n_val`` images
    held out of ``train_data``, stratified, are the validation set), and the pretrained backbone
    (a fresh ``arch`` when ``weights`` is None) checked against the data. Returns ``(run,
    pretrained in eval mode, the whole training set)``. A resumed run's clock goes on from where
    its last session saved it (:meth:`Run.elapsed`)."""
    started = time.time()
    dev = resolve_device(device)
    paths = RunPaths(Path(out))
    paths.claim(resume, overwrite)
    paths.check_settings(dump_config(p), resume)
    full_train = as_data(train_data, "train", seed)
    if val_data is not None:
        train, val = full_train, as_data(val_data, "test", seed)
        if val.classes != train.classes:
            raise IncompatibleError(
                f"val_data: classes {val.classes[:10]} differ from train_data's {train.classes[:10]}"
            )
    else:
        n = len(full_train.dataset)
        if n <= p.n_val:
            raise IncompatibleError(
                f"train_data: {full_train.source} holds {n} images; preset "
                f"{p.name!r} holds {p.n_val} of them out for validation and "
                f"needs more to train on (or give a validation set, val_data)"
            )
        train, val = split_train_val(full_train, p.n_val, seed=seed)
    torch.manual_seed(seed)  # a backbone trained from scratch starts the same
    pretrained, spec = load_backbone(weights, arch, train.num_classes)
    if spec.get("num_classes") != train.num_classes:
        raise IncompatibleError(
            f"weights: {weights} predicts {spec.get('num_classes')} classes, the data has {train.num_classes}"
        )
    pretrained = pretrained.to(dev).eval()
    meta = {
        "backbone_spec": spec,
        "classes": train.classes,
        "image_size": train.image_size,
        "data": train.source,
        "preset": p.name,
    }
    paths.stamp(dump_config(p))  # only once the inputs are known to fit together
    run = Run(p, paths, dev, seed, progress, resume, train, val, meta, log, started=started)
    if resume:
        run.resume_clock()
    return run, pretrained, full_train


def train_candidates(
    run: Run, pretrained: ResNetBackbone, gammas: list[float] | tuple[float, ...], from_scratch: bool = False
) -> Candidates:
    """Steps 2: (pretrain,) adapt, the full network, the weight average, then per gamma and draw
    the policy stages; every model at every threshold on validation."""
    if from_scratch:
        pretrained = stage_pretrain(run, pretrained).eval()
    adapted = stage_adapt(run, pretrained)
    cands = Candidates(pretrained, adapted, adapted)
    soup = run.preset.adapt is not None and run.preset.adapt.soup > 0
    if run.preset.selection.rule == "tolerance":  # the rule's reference
        _train_full(run, cands)
    cands.backbone = stage_soup(run, adapted, stage_full_adapt(run, pretrained) if soup else None)
    last = final_stage(run)
    for g in gammas:
        for draw in range(run.preset.curriculum.draws):
            net = stage_blockdrop(run, cands.backbone, g, draw)
            _add_points(run, cands, g, net, last, final_checkpoint(run, g, draw), draw)
    if last == "finetune" and gammas and run.preset.selection.include_curriculum:
        # the curriculum (its own gamma, the same for every finetune gamma) is a candidate too
        path = curriculum_checkpoint(run, gammas[0])
        net = load_blockdrop_net(path, run.device)[0]
        _add_points(run, cands, run.preset.curriculum.gamma or 0.0, net, "curriculum", path)
    return cands


def _train_full(run: Run, cands: Candidates) -> None:
    """The full network finetuned alike, and its validation result, into ``cands``."""
    if cands.full is None:
        full = cands.full = stage_full(run, cands.pretrained)
        cands.full_val = run.timed("eval", lambda: stages.evaluate_on(run, full, run.val))


def _add_points(
    run: Run, cands: Candidates, gamma: float, net: BlockDropNet, stage: str, path: Path, draw: int = 0
) -> None:
    pts = run.timed("eval", lambda: val_points(run, gamma, net, cands.full_val, stage, path, draw))
    cands.points.extend(pts)
    tag = "" if stage == final_stage(run) else ", " + stage
    ref = f" (full network {100 * cands.full_val.accuracy:.2f}%)" if cands.full_val else ""
    for q in pts:
        run.log(
            f"[gamma {gamma:g}{tag}{f', draw {draw}' if draw else ''}] threshold {q.threshold:g}: "
            f"val {100 * q.val.accuracy:.2f}% at {q.val.blocks_mean:.2f} blocks{ref}"
        )


def select(run: Run, cands: Candidates) -> tuple[Point, list[Point], Path]:
    """Step 3: the operating point chosen on validation, saved to ``OUT/blockdrop.safetensors``;
    also the points shown in the report (every gamma at the paper's threshold 0.5, draw 0, and
    the chosen one). Returns ``(chosen, shown, its checkpoint)``."""
    chosen = selection.select(cands.points, cands.full_val, run.preset.selection)
    last = final_stage(run)
    shown = [
        q for q in cands.points if (q.threshold == 0.5 and q.stage == last and q.draw == 0) or q is chosen
    ]
    path = save_blockdrop_net(
        run.paths.out / "blockdrop.safetensors",
        chosen.net,
        {
            **run.meta,
            "stage": "blockdrop",
            "gamma": chosen.gamma,
            "trained_by": chosen.stage,
            "draw": chosen.draw,
            "val_accuracy": chosen.val.accuracy,
            "val_blocks": chosen.val.blocks_mean,
        },
    )
    return chosen, shown, path


def write_validation(
    run: Run,
    cands: Candidates,
    chosen: Point,
    minutes: float,
    results: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A run on validation only (no test set): ``out/validation.json`` -- the settings, the full
    network's and every BlockDrop point's validation result, the chosen point, the minutes to
    BlockDrop's model (``minutes``) and in all (``minutes_total``), and ``results``
    (the baselines against BlockDrop on validation:
    :func:`blockdrop.recipes.report.validation_rows`) when given."""

    def point(q: Point) -> dict[str, Any]:
        return {
            "gamma": q.gamma,
            "threshold": q.threshold,
            "stage": q.stage,
            "draw": q.draw,
            "accuracy": q.val.accuracy,
            "blocks_mean": q.val.blocks_mean,
            "flops_mean": q.val.flops_mean,
        }

    out = {
        "validation_only": True,
        "val_data": run.val.source,
        "val_images": len(run.val.dataset),
        "full": (
            {"accuracy": cands.full_val.accuracy, "flops_mean": cands.full_val.flops_mean}
            if cands.full_val
            else None
        ),
        "chosen": point(chosen),
        "points": [point(q) for q in cands.points],
        "selection": describe(run.preset.selection),
        "minutes": minutes,
        "minutes_total": run.elapsed() / 60,
        "stage_minutes": {k: v / 60 for k, v in run.seconds.items()},
        "config": preset_to_dict(run.preset),
        "seed": run.seed,
        "commit": commit(),
        **({"results": results} if results is not None else {}),
    }
    atomic_write_text(run.paths.out / "validation.json", json.dumps(out, indent=1) + "\n")
    run.log(
        f"[validation] chosen: gamma {chosen.gamma:g}, threshold {chosen.threshold:g}: "
        f"{100 * chosen.val.accuracy:.2f}% at {chosen.val.blocks_mean:.2f} blocks -> "
        f"{run.paths.out}/validation.json"
    )
    return out


def train_baselines(
    run: Run,
    cands: Candidates,
    shown: list[Point],
    chosen: Point,
    family_weights: list[str | os.PathLike[str]] | tuple[()] = (),
) -> list[Baseline]:
    """Step 4: what a user would pick instead, trained alike: the full network (if not trained
    yet), FirstK and RandomK at each shown point's validation block count
    (``baselines.first_random_k``), StaticK at BlockDrop's chosen validation block count plus
    each ``baselines.static_k`` offset, and each smaller network of the family
    (``family_weights``). Each is evaluated on the validation data (``Baseline.val``), so that
    BlockDrop and its alternatives can be compared without the test set."""
    cfg, k = run.preset.baselines, cands.backbone.num_blocks
    _train_full(run, cands)
    out: list[Baseline] = []
    last = final_stage(run)
    for q in shown if cfg.first_random_k else []:
        for kind in ("first_k", "random_k"):
            tag = ("" if q.stage == last else f"_{q.stage}") + (f"_draw{q.draw}" if q.draw else "")
            path = run.paths.baseline(kind, q.gamma, q.threshold, tag)
            net = stage_baseline(run, cands.backbone, kind, q.val.blocks_mean, path)
            # named by its point too: two points may share a block count (names key the timings)
            name = f"{kind} k={q.val.blocks_mean:.2f} ({point_name(q)})"
            out.append(Baseline(kind, name, path, net, point=q))
    ks = sorted({min(k, max(1, round(chosen.val.blocks_mean) + off)) for off in cfg.static_k}, reverse=True)
    paths = {n: run.paths.out / "baselines" / f"static_k{n}.safetensors" for n in ks}
    order: list[int] = []
    if not (run.resume and all(q.is_file() for q in paths.values())):  # resumed: in each checkpoint
        order = _static_order(run, cands.backbone, k - ks[-1]) if ks else []
    for n in ks:
        net = stage_baseline(run, cands.backbone, "static_k", n, paths[n], dropped=order[: k - n])
        dropped = list(cast("list[int]", net.policy_net.dropped))  # a static_k BaselinePolicy's
        out.append(Baseline("static_k", f"static_k k={n}", paths[n], net, dropped=dropped))
    for w in family_weights:
        path = run.paths.out / "baselines" / f"family_{Path(w).name.split('.')[0]}.safetensors"
        net = stage_family(run, Path(w), path)
        out.append(Baseline("family", f"{_arch_name(net.backbone)} ({Path(w).name})", path, net))
    for b in out:
        b.val = val = run.timed("baseline_val", partial(stages.evaluate_on, run, b.net, run.val))
        run.log(f"[baseline {b.name}] val {100 * val.accuracy:.2f}% at {val.blocks_mean:.2f} blocks")
    return out


def _arch_name(backbone: ResNetBackbone) -> str:
    """``cifar_resnet32`` for a CIFAR ResNet, else the spec's architecture name."""
    spec = backbone_spec(backbone)
    return f"cifar_resnet{spec['depth']}" if spec.get("kind") == "cifar" else str(spec.get("arch", spec))


def _static_order(run: Run, backbone: ResNetBackbone, drops: int) -> list[int]:
    """StaticK's greedy drop order (its first ``drops`` blocks) on ``baselines.static_images``
    training images (the validation set is never used for training choices)."""
    n = run.preset.baselines.static_images
    sub = take_subset(run.train, n, seed=run.seed + 1)
    batches = list(make_loader(sub.dataset, 250, train=False))
    order = run.timed(
        "costs",
        lambda: greedy_drop_order(backbone, batches, drops, run.device, amp=run.preset.curriculum.amp),
    )
    run.log(f"[baseline static_k] greedy drop order on {n} training images: {order}")
    return order


def commit() -> str | None:
    """The short git commit of this checkout (None outside a git checkout)."""
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
