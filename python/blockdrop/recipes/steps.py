"""The steps of ``blockdrop reproduce``, each a function a script can call on its own:

1. :func:`start_run` -- the output folder claimed, the data split, the pretrained backbone;
2. :func:`train_candidates` -- the backbone stages (adapt, the full network finetuned alike, the
   weight average) and, per gamma and draw, the policy stages, each model evaluated on validation
   at every threshold (:class:`Candidates`);
3. :func:`select` -- the operating point, chosen on validation (and saved);
4. :func:`train_baselines` -- FirstK / RandomK at the shown points' validation block counts;
5. :func:`evaluate_on_test` -- every model on the test set, once, and the measured speed;
6. :func:`build_report` -- :class:`Report` (``to_dict()`` is ``report.json``).

Nothing before step 5 reads the test set.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import load_backbone, load_blockdrop_net, save_blockdrop_net
from blockdrop.data import DataInfo, load_dataset, make_loader, split_train_val
from blockdrop.errors import IncompatibleError
from blockdrop.evaluation.evaluate import EvalResult, measure_throughput
from blockdrop.evaluation.stats import accuracy_se, paired_difference
from blockdrop.recipes import selection, stages
from blockdrop.recipes.config import Preset, preset_to_dict
from blockdrop.recipes.policy_stage import curriculum_checkpoint, final_checkpoint, final_stage, stage_blockdrop
from blockdrop.recipes.selection import Point, describe, val_points
from blockdrop.recipes.stages import (Run, RunPaths, stage_adapt, stage_baseline, stage_full,
                                      stage_pretrain, stage_soup)
from blockdrop.runtime import resolve_device

__all__ = ["Candidates", "Baseline", "TestResults", "Report", "as_data", "start_run", "train_candidates",
           "select", "train_baselines", "evaluate_on_test", "build_report"]

DataArg = str | os.PathLike[str] | DataInfo


@dataclass
class Candidates:
    """What the training steps produce: the backbones, the full network finetuned alike (and its
    validation result) and every BlockDrop operating point on validation."""
    adapted: nn.Module
    backbone: nn.Module                 # what BlockDrop executes: adapted, or the weight average
    full: BlockDropNet
    full_val: EvalResult
    points: list[Point] = field(default_factory=list)


@dataclass
class Baseline:
    """A fixed-policy baseline trained for the validation point ``point``."""
    kind: str
    point: Point
    path: Path
    net: BlockDropNet


@dataclass
class TestResults:
    """The test set's verdict: the full network, the shown points, the baselines, the speed."""
    full: EvalResult
    points: dict[int, EvalResult]       # by id() of the shown Point
    baselines: list[EvalResult]
    speed: dict[str, Any]


def as_data(src: DataArg, split: str, seed: int) -> DataInfo:
    """``src`` itself when loaded, else :func:`blockdrop.data.load_dataset` of it."""
    return src if isinstance(src, DataInfo) else load_dataset(src, split, seed=seed)


def start_run(p: Preset, arch: str, train_data: DataArg, weights: str | os.PathLike[str] | None,
              out: str | os.PathLike[str], seed: int = 0, device: str = "auto",
              progress: bool = True, resume: bool = False, overwrite: bool = False,
              log: Callable[[str], None] = print) -> tuple[Run, nn.Module, DataInfo]:
    """What every run of the recipe starts from: ``out`` claimed (see :meth:`RunPaths.claim`),
    ``train_data`` loaded and split into train / validation (``p.n_val`` images, stratified), and
    the pretrained backbone (a fresh ``arch`` when ``weights`` is None) checked against the data.
    Returns ``(run, pretrained in eval mode, the whole training set)``."""
    dev = resolve_device(device)
    paths = RunPaths(Path(out))
    paths.claim(resume, overwrite)
    full_train = as_data(train_data, "train", seed)
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


def train_candidates(run: Run, pretrained: nn.Module, gammas: list[float] | tuple[float, ...],
                     from_scratch: bool = False) -> Candidates:
    """Steps 2: (pretrain,) adapt, the full network, the weight average, then per gamma and draw
    the policy stages; every model at every threshold on validation."""
    if from_scratch:
        pretrained = stage_pretrain(run, pretrained).eval()
    adapted = stage_adapt(run, pretrained)
    full = stage_full(run, pretrained)
    backbone = stage_soup(run, adapted, full)
    full_val = run.timed("eval", lambda: stages.evaluate_on(run, full, run.val))
    cands = Candidates(adapted, backbone, full, full_val)
    last = final_stage(run)
    for g in gammas:
        for draw in range(run.preset.curriculum.draws):
            net = stage_blockdrop(run, backbone, g, draw)
            _add_points(run, cands, g, net, last, final_checkpoint(run, g, draw), draw)
    if last == "finetune" and gammas and run.preset.selection.include_curriculum:
        # the curriculum (its own gamma, the same for every finetune gamma) is a candidate too
        path = curriculum_checkpoint(run, gammas[0])
        net = load_blockdrop_net(path, run.device)[0]
        _add_points(run, cands, run.preset.curriculum.gamma or 0.0, net, "curriculum", path)  # type: ignore[arg-type]
    return cands


def _add_points(run: Run, cands: Candidates, gamma: float, net: BlockDropNet, stage: str,
                path: Path, draw: int = 0) -> None:
    pts = run.timed("eval", lambda: val_points(run, gamma, net, cands.full_val, stage, path, draw))
    cands.points.extend(pts)
    tag = "" if stage == final_stage(run) else ", " + stage
    for q in pts:
        run.log(f"[gamma {gamma:g}{tag}{f', draw {draw}' if draw else ''}] threshold {q.threshold:g}: "
                f"val {100 * q.val.accuracy:.2f}% at {q.val.blocks_mean:.2f} blocks (full network "
                f"{100 * cands.full_val.accuracy:.2f}%)")


def select(run: Run, cands: Candidates) -> tuple[Point, list[Point], Path]:
    """Step 3: the operating point chosen on validation, saved to ``OUT/blockdrop.safetensors``;
    also the points shown in the report (every gamma at the paper's threshold 0.5, draw 0, and
    the chosen one). Returns ``(chosen, shown, its checkpoint)``."""
    chosen = selection.select(cands.points, cands.full_val, run.preset.selection)
    last = final_stage(run)
    shown = [q for q in cands.points
             if (q.threshold == 0.5 and q.stage == last and q.draw == 0) or q is chosen]
    path = save_blockdrop_net(run.paths.out / "blockdrop.safetensors", chosen.net, {
        **run.meta, "stage": "blockdrop", "gamma": chosen.gamma, "trained_by": chosen.stage,
        "draw": chosen.draw, "val_accuracy": chosen.val.accuracy,
        "val_blocks": chosen.val.blocks_mean})
    return chosen, shown, path


def train_baselines(run: Run, cands: Candidates, shown: list[Point]) -> list[Baseline]:
    """Step 4: FirstK and RandomK (``baselines.first_random_k``) at each shown point's
    validation block count, finetuned from BlockDrop's backbone like the joint stage."""
    out: list[Baseline] = []
    if not run.preset.baselines.first_random_k:
        return out
    last = final_stage(run)
    for q in shown:
        for kind in ("first_k", "random_k"):
            path = run.paths.baseline(kind, q.gamma, q.threshold, "" if q.stage == last else f"_{q.stage}")
            out.append(Baseline(kind, q, path, stage_baseline(run, cands.backbone, kind,
                                                              q.val.blocks_mean, path)))
    return out


def evaluate_on_test(run: Run, test: DataInfo, cands: Candidates, shown: list[Point],
                     baselines: list[Baseline], chosen: Point) -> TestResults:
    """Step 5: the full network, every shown point and every baseline on ``test`` (once), and
    the chosen model's measured speed against the plain network."""
    run.log(f"[test] evaluating every model on {test.source}")
    full = run.timed("eval", lambda: stages.evaluate_on(run, cands.full, test))
    points = {id(q): run.timed("eval", lambda: stages.evaluate_on(run, q.net, test)) for q in shown}
    bases = [run.timed("eval", lambda: stages.evaluate_on(run, b.net, test)) for b in baselines]
    ev = run.preset.evaluation
    batches = _speed_batches(test, ev.speed_batch)
    speed = run.timed("speed", lambda: measure_throughput(
        chosen.net, batches, run.device, repeats=ev.speed_repeats, plain_chunks=ev.chunks))
    return TestResults(full, points, bases, speed)


def _speed_batches(test: DataInfo, batch: int, n: int = 2) -> list[torch.Tensor]:
    """Up to ``n`` full batches of test images (one smaller batch if the set is smaller)."""
    xs = []
    for x, _ in make_loader(test.dataset, batch, train=False):
        if x.shape[0] == batch or not xs:
            xs.append(x)
        if len(xs) == n:
            break
    return [x for x in xs if x.shape[0] == xs[0].shape[0]]


@dataclass
class Report:
    """A run's report: the chosen model on test, every model's row, the validation choices and
    how the run was made. :meth:`to_dict` is ``report.json`` (:data:`REPORT_KEYS` and more)."""
    chosen: dict[str, Any]
    results: list[dict[str, Any]]
    val: dict[str, Any]
    speed: dict[str, Any]
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.chosen, **self.speed, **self.provenance, "val": self.val,
                "results": self.results}


def _commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10, cwd=Path(__file__).resolve().parent)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _row(name: str, res: EvalResult, **extra: Any) -> dict[str, Any]:
    return {"method": name, "accuracy": res.accuracy, "blocks_mean": res.blocks_mean,
            "blocks_std": res.blocks_std, "flops_mean": res.flops_mean, "flops_std": res.flops_std,
            "num_policies": res.num_policies, **extra}


def _se(r: EvalResult) -> float:
    assert r.correct is not None          # evaluate always records per-image correctness
    return accuracy_se(r.correct)[1]


def _paired(a: EvalResult, b: EvalResult) -> dict[str, Any]:
    assert a.correct is not None and b.correct is not None
    return paired_difference(a.correct, b.correct).to_dict()


def _results(run: Run, cands: Candidates, shown: list[Point], chosen: Point, final_path: Path,
             baselines: list[Baseline], t: TestResults) -> list[dict[str, Any]]:
    rows = [_row("full", t.full, val_accuracy=cands.full_val.accuracy, checkpoint=str(run.paths.full()))]
    for q in shown:
        rows.append(_row("blockdrop", t.points[id(q)], gamma=q.gamma, threshold=q.threshold,
                         stage=q.stage, draw=q.draw, chosen=q is chosen, val_accuracy=q.val.accuracy,
                         val_blocks=q.val.blocks_mean,
                         checkpoint=str(final_path if q is chosen else q.checkpoint)))
    for b, res in zip(baselines, t.baselines):
        q = b.point
        rows.append(_row(b.kind, res, gamma=q.gamma, threshold=q.threshold, stage=q.stage,
                         k=q.val.blocks_mean, checkpoint=str(b.path)))
    return rows


def build_report(run: Run, cands: Candidates, shown: list[Point], chosen: Point, final_path: Path,
                 baselines: list[Baseline], t: TestResults, test: DataInfo, arch: str,
                 weights: Any, train_source: str, minutes: float) -> Report:
    """Step 6: the report of a finished run."""
    res, p, cfg = t.points[id(chosen)], run.preset, run.preset.selection
    chosen_d = {
        "checkpoint": str(final_path), "accuracy": res.accuracy, "blocks_mean": res.blocks_mean,
        "blocks_std": res.blocks_std, "flops_mean": res.flops_mean, "flops_std": res.flops_std,
        "full_flops": t.full.flops_mean, "num_blocks": cands.adapted.num_blocks,
        "num_policies": res.num_policies, "full_accuracy": t.full.accuracy,
        # BlockDrop - full on the same images (paired), on test and on the validation split
        "accuracy_se": _se(res), "full_accuracy_se": _se(t.full),
        "vs_full": {"test": _paired(res, t.full), "val": _paired(chosen.val, cands.full_val)},
        "gamma": chosen.gamma, "threshold": chosen.threshold, "stage": chosen.stage,
        "draw": chosen.draw}
    s = t.speed
    speed = {"measured_speedup": s["speedup"], "speed_batch": p.evaluation.speed_batch,
             # the plain network at its fastest chunk size of the batch (a fair CPU baseline)
             "measured_speedup_vs_best_plain": s.get("speedup_vs_best_plain"),
             "best_plain_chunk": s.get("best_plain_chunk"),
             "measured_speedup_best_vs_best": s.get("speedup_best_vs_best"),
             "best_blockdrop_chunk": s.get("best_blockdrop_chunk")}
    val = {"images": len(run.val.dataset), "full_accuracy": cands.full_val.accuracy,  # type: ignore[arg-type]
           "selection": describe(cfg), "select_rule": cfg.rule,
           "tolerance": cfg.tolerance if cfg.rule == "tolerance" else None,   # unused by "budget"
           "max_blocks": cfg.max_blocks,
           "points": [{"gamma": q.gamma, "threshold": q.threshold, "stage": q.stage, "draw": q.draw,
                       "accuracy": q.val.accuracy, "blocks_mean": q.val.blocks_mean,
                       "flops_mean": q.val.flops_mean} for q in cands.points]}
    provenance = {
        "minutes": minutes, "stage_minutes": {k: v / 60 for k, v in run.seconds.items()},
        "preset": p.name, "config": preset_to_dict(p), "seed": run.seed, "commit": _commit(),
        "arch": arch, "train_data": train_source, "test_data": test.source, "weights": str(weights),
        "test_images": res.n, "device": str(run.device), "threads": torch.get_num_threads()}
    rows = _results(run, cands, shown, chosen, final_path, baselines, t)
    return Report(chosen_d, rows, val, speed, provenance)
