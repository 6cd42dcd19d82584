"""``blockdrop reproduce``: from a pretrained ResNet to a BlockDrop model, its fair baselines and a
report, in one call.

    report = reproduce("quick", arch="resnet56", train_data=..., test_data=..., weights=..., out=...)

Stages (:mod:`blockdrop.recipes.presets`): adapt -> per gamma: curriculum -> finetune -> the
baselines (full, FirstK, RandomK) finetuned alike -> selection on the validation split -> one
evaluation on the test set -> ``OUT/report.json``, ``OUT/report.md`` and plots.

Validation vs test: ``preset.n_val`` images are held out of the training data (stratified, seed
``seed``); the (gamma, threshold) reported as *the* result is chosen on them (the fewest blocks
whose validation accuracy is within ``tolerance`` of the full network's, among the points that
cost fewer FLOPs than it and keep at most ``max_blocks`` of the blocks:
:func:`~blockdrop.recipes.selection.select`), FirstK/RandomK take
BlockDrop's validation block counts, and the test set is evaluated once, after every choice is
made. The chosen model is written to ``OUT/blockdrop.safetensors`` with its threshold.

Every stage writes its model under ``OUT`` (a ``blockdrop.load``-able checkpoint); with ``resume``
a stage whose checkpoint exists is loaded instead of run again, so a killed run continues at the
stage it was in.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import load_backbone, load_blockdrop_net, save_blockdrop_net
from blockdrop.data import DataInfo, load_dataset, make_loader, split_train_val
from blockdrop.errors import IncompatibleError
from blockdrop.evaluation.evaluate import EvalResult, measure_throughput
from blockdrop.recipes.presets import Preset, get_preset
from blockdrop.recipes.report import write_report
from blockdrop.recipes.selection import Point, describe, select, val_points
from blockdrop.recipes import stages
from blockdrop.recipes.policy_stage import (curriculum_checkpoint, final_checkpoint, final_stage,
                                            stage_blockdrop)
from blockdrop.recipes.stages import (Run, RunPaths, stage_adapt, stage_baseline, stage_full,
                                      stage_pretrain, stage_soup)
from blockdrop.runtime import resolve_device
from blockdrop.evaluation.stats import accuracy_se, paired_difference

__all__ = ["reproduce", "start_run", "RunPaths"]


def _commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10, cwd=Path(__file__).resolve().parent)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _entry(name: str, res: EvalResult, **extra: Any) -> dict[str, Any]:
    return {"method": name, "accuracy": res.accuracy, "blocks_mean": res.blocks_mean,
            "blocks_std": res.blocks_std, "flops_mean": res.flops_mean, "flops_std": res.flops_std,
            "num_policies": res.num_policies, **extra}


def _data(src: str | os.PathLike[str] | DataInfo, split: str, seed: int) -> DataInfo:
    return src if isinstance(src, DataInfo) else load_dataset(src, split, seed=seed)


def start_run(p: Preset, arch: str, train_data: str | os.PathLike[str] | DataInfo,
              weights: str | os.PathLike[str] | None, out: str | os.PathLike[str], seed: int = 0,
              device: str = "auto", progress: bool = True, resume: bool = False,
              overwrite: bool = False, log: Callable[[str], None] = print
              ) -> tuple[Run, nn.Module, DataInfo]:
    """What every run of the recipe starts from: ``out`` claimed (see :meth:`RunPaths.claim`),
    ``train_data`` loaded and split into train / validation (``p.n_val`` images, stratified), and
    the pretrained backbone (a fresh ``arch`` when ``weights`` is None) checked against the data.
    Returns ``(run, pretrained in eval mode, the whole training set)``."""
    dev = resolve_device(device)
    paths = RunPaths(Path(out))
    paths.claim(resume, overwrite)
    full_train = _data(train_data, "train", seed)
    n = len(full_train.dataset)  # type: ignore[arg-type]
    if n <= p.n_val:
        raise IncompatibleError(f"train_data: {full_train.source} holds {n} images; preset "
                                f"{p.name!r} holds {p.n_val} of them out for validation and "
                                f"needs more to train on")
    train, val = split_train_val(full_train, p.n_val, seed=seed)
    torch.manual_seed(seed)                    # a backbone trained from scratch starts the same
    pretrained, spec = load_backbone(weights, arch, train.num_classes)
    if spec.get("num_classes") != train.num_classes:
        raise IncompatibleError(f"weights: {weights} predicts {spec.get('num_classes')} classes, "
                                f"the data has {train.num_classes}")
    pretrained = pretrained.to(dev).eval()
    meta = {"backbone_spec": spec, "classes": train.classes, "image_size": train.image_size,
            "data": train.source, "preset": p.name}
    return Run(p, paths, dev, seed, progress, resume, train, val, meta, log), pretrained, full_train


def reproduce(preset: str | Preset, arch: str, train_data: str | os.PathLike[str] | DataInfo,
              test_data: str | os.PathLike[str] | DataInfo, weights: str | os.PathLike[str] | None,
              out: str | os.PathLike[str], gammas: list[float] | None = None, seed: int = 0,
              device: str = "auto", progress: bool = True, resume: bool = False,
              tolerance: float | None = None, max_blocks: float | None = None,
              select_rule: str | None = None, speed_batch: int = 256, overwrite: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the recipe and write ``out/report.json`` (returned), ``out/report.md`` and plots.

    Args:
        preset: a name of :data:`~blockdrop.recipes.presets.PRESETS` or a :class:`Preset`.
        arch: backbone architecture (``resnet56``); must match ``weights``.
        train_data / test_data: datasets (paths for :func:`blockdrop.data.load_dataset`, or
            loaded ``DataInfo``); ``preset.n_val`` images of ``train_data`` are held out for every
            choice; ``test_data`` is used once.
        weights: the pretrained backbone; None trains ``arch`` from scratch first
            (``preset.pretrain_steps``).
        gammas: finetune penalties to sweep (default: the preset's).
        tolerance: accuracy the selected point may give up against the full network, on val
            (default: the preset's).
        max_blocks: block budget of the selected point, a share of the K blocks on val (default:
            the preset's; 1 keeps every point in the running).
        select_rule: how the operating point is chosen on val, one of
            :data:`~blockdrop.recipes.presets.SELECT_RULES` (default: the preset's).
        speed_batch: batch size of the measured speedup (test images, interleaved timing).
        resume / overwrite: an ``out`` that already holds a run is continued (``resume``: its
            finished stages are reused) or replaced (``overwrite``); otherwise IncompatibleError.
    """
    t_start = time.time()
    p = get_preset(preset) if isinstance(preset, str) else preset
    gammas = list(gammas or p.gammas)
    p = p.with_overrides(tolerance=tolerance, max_blocks=max_blocks, select_rule=select_rule)
    tolerance, max_blocks, rule = p.tolerance, p.max_blocks, p.select_rule    # checked by Preset
    test = _data(test_data, "test", seed)
    run, pretrained, full_train = start_run(p, arch, train_data, weights, out, seed, device,
                                            progress, resume, overwrite, log)
    if full_train.classes != test.classes:
        raise IncompatibleError(f"test_data: classes {test.classes[:10]} differ from train_data's "
                                f"{full_train.classes[:10]}")
    dev, paths, train, val = run.device, run.paths, run.train, run.val
    log(f"reproduce --preset {p.name}: {arch}, K={pretrained.num_blocks}, {len(train.dataset)} train / "  # type: ignore[arg-type]
        f"{len(val.dataset)} val / {len(test.dataset)} test images, gammas {gammas}, {dev}, "  # type: ignore[arg-type]
        f"{torch.get_num_threads()} threads")
    if weights is None:
        pretrained = stage_pretrain(run, pretrained).eval()
    adapted = stage_adapt(run, pretrained)
    nb = adapted.num_blocks
    full = stage_full(run, pretrained)
    backbone = stage_soup(run, adapted, full)       # what BlockDrop executes
    full_val = run.timed("eval", lambda: stages.evaluate_on(run, full, val))
    points: list[Point] = []
    last = final_stage(run)

    def candidates(g: float, net: BlockDropNet, stage: str, path: Path, draw: int = 0) -> None:
        pts = run.timed("eval", lambda: val_points(run, g, net, full_val, tolerance, stage, path,
                                                       max_blocks, draw, rule))
        points.extend(pts)
        for q in pts:
            log(f"[gamma {g:g}{'' if stage == last else ', ' + stage}{f', draw {draw}' if draw else ''}] "
                f"threshold {q.threshold:g}: val {100 * q.val.accuracy:.2f}% at "
                f"{q.val.blocks_mean:.2f} blocks (full network {100 * full_val.accuracy:.2f}%)")

    for g in gammas:
        for draw in range(p.cl_draws):
            candidates(g, stage_blockdrop(run, backbone, g, adapted, draw, full.backbone), last,
                       final_checkpoint(run, g, draw), draw)
    if last == "finetune" and gammas and p.ft_cl_candidate:
        # the curriculum (its own gamma, the same for every finetune gamma) is a candidate too: the
        # stage is chosen on validation like the threshold
        cl_path = curriculum_checkpoint(run, gammas[0])
        candidates(p.cl_gamma, load_blockdrop_net(cl_path, dev)[0], "curriculum", cl_path)  # type: ignore[arg-type]
    chosen = select(points, full_val, tolerance, max_blocks, rule)
    # the sweep: every gamma at the paper's threshold, and the chosen operating point
    shown = [q for q in points if (q.threshold == 0.5 and q.stage == last and q.draw == 0)
             or q is chosen]
    final = chosen.net
    final_path = save_blockdrop_net(paths.out / "blockdrop.safetensors", final, {
        **run.meta, "stage": "blockdrop", "gamma": chosen.gamma, "trained_by": chosen.stage,
        "draw": chosen.draw,
        "val_accuracy": chosen.val.accuracy, "val_blocks": chosen.val.blocks_mean})
    baselines: list[tuple[str, Point, Path, BlockDropNet]] = []
    if p.first_random_k:
        for q in shown:
            for kind in ("first_k", "random_k"):
                path = paths.baseline(kind, q.gamma, q.threshold, _tag(q, last))
                baselines.append((kind, q, path, stage_baseline(run, backbone, kind, q.val.blocks_mean, path)))

    # ---- the test set, once
    log(f"[test] evaluating every model on {test.source}")
    full_test = run.timed("eval", lambda: stages.evaluate_on(run, full, test))
    rows = [_entry("full", full_test, val_accuracy=full_val.accuracy, checkpoint=str(paths.full()))]
    tests: dict[int, EvalResult] = {}
    for q in shown:
        tests[id(q)] = run.timed("eval", lambda: stages.evaluate_on(run, q.net, test))
        rows.append(_entry("blockdrop", tests[id(q)], gamma=q.gamma, threshold=q.threshold,
                           stage=q.stage, draw=q.draw, chosen=q is chosen, val_accuracy=q.val.accuracy,
                           val_blocks=q.val.blocks_mean,
                           checkpoint=str(final_path if q is chosen else q.checkpoint)))
    for kind, q, path, net in baselines:
        rows.append(_entry(kind, run.timed("eval", lambda: stages.evaluate_on(run, net, test)), gamma=q.gamma,
                           threshold=q.threshold, stage=q.stage, k=q.val.blocks_mean,
                           checkpoint=str(path)))
    batches = _speed_batches(test, speed_batch)
    speed = run.timed("speed", lambda: measure_throughput(final, batches, dev, repeats=p.speed_repeats,
                                                                plain_chunks=(128, 64, 32)))
    res = tests[id(chosen)]
    report = {
        "checkpoint": str(final_path),
        "accuracy": res.accuracy, "blocks_mean": res.blocks_mean, "blocks_std": res.blocks_std,
        "flops_mean": res.flops_mean, "flops_std": res.flops_std, "full_flops": rows[0]["flops_mean"],
        "num_blocks": nb, "num_policies": res.num_policies,
        "full_accuracy": rows[0]["accuracy"],
        # BlockDrop - full on the same images (paired), on test and on the validation split
        "accuracy_se": _se(res), "full_accuracy_se": _se(full_test),
        "vs_full": {"test": _paired(res, full_test), "val": _paired(chosen.val, full_val)},
        "gamma": chosen.gamma, "threshold": chosen.threshold,
        "stage": chosen.stage, "draw": chosen.draw,
        "measured_speedup": speed["speedup"], "speed_batch": speed_batch,
        # the plain network at its fastest chunk size of the batch (a fair CPU baseline)
        "measured_speedup_vs_best_plain": speed.get("speedup_vs_best_plain"),
        "best_plain_chunk": speed.get("best_plain_chunk"),
        "measured_speedup_best_vs_best": speed.get("speedup_best_vs_best"),
        "best_blockdrop_chunk": speed.get("best_blockdrop_chunk"),
        "minutes": (time.time() - t_start) / 60, "stage_minutes": {k: v / 60 for k, v in run.seconds.items()},
        "preset": p.name, "settings": p.to_dict(), "seed": seed, "commit": _commit(), "arch": arch,
        "train_data": full_train.source, "test_data": test.source, "weights": str(weights),
        "val": {"images": len(val.dataset), "full_accuracy": full_val.accuracy,  # type: ignore[arg-type]
                "selection": describe(tolerance, max_blocks, rule), "select_rule": rule,
                "tolerance": tolerance if rule == "tolerance" else None,    # unused by "budget"
                "max_blocks": max_blocks,
                "points": [{"gamma": q.gamma, "threshold": q.threshold, "stage": q.stage,
                            "draw": q.draw,
                            "accuracy": q.val.accuracy, "blocks_mean": q.val.blocks_mean,
                            "flops_mean": q.val.flops_mean}
                           for q in points]},
        "test_images": res.n, "device": str(dev), "threads": torch.get_num_threads(),
        "results": rows,
    }
    write_report(paths.out, report, final, res, test)
    log(f"[done] {p.name}: BlockDrop {100 * res.accuracy:.2f}% at {res.blocks_mean:.2f}/{nb} blocks "
        f"(gamma {chosen.gamma:g}, threshold {chosen.threshold:g}); full network {100 * report['full_accuracy']:.2f}%; measured speedup "
        f"{speed['speedup']:.2f}x at batch {speed_batch}; {report['minutes']:.1f} min -> {paths.out}/report.json")
    return report


def _se(r: EvalResult) -> float:
    assert r.correct is not None          # evaluate always records per-image correctness
    return accuracy_se(r.correct)[1]


def _paired(a: EvalResult, b: EvalResult) -> dict[str, Any]:
    assert a.correct is not None and b.correct is not None
    return paired_difference(a.correct, b.correct).to_dict()


def _tag(q: Point, last: str) -> str:
    """Baseline file-name suffix of a point not from the run's last stage."""
    return "" if q.stage == last else f"_{q.stage}"


def _speed_batches(test: DataInfo, batch: int, n: int = 2) -> list[torch.Tensor]:
    """Up to ``n`` full batches of test images (one smaller batch if the set is smaller)."""
    xs = []
    for x, _ in make_loader(test.dataset, batch, train=False):
        if x.shape[0] == batch or not xs:
            xs.append(x)
        if len(xs) == n:
            break
    return [x for x in xs if x.shape[0] == xs[0].shape[0]]


