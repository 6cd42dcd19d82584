"""``blockdrop reproduce``: from a pretrained ResNet to a BlockDrop model, its fair baselines and a
report, in one call.

    report = reproduce("quick", arch="resnet56", train_data=..., test_data=..., weights=..., out=...)

Stages (:mod:`blockdrop.recipes.presets`): adapt -> per gamma: curriculum -> finetune -> the
baselines (full, FirstK, RandomK) finetuned alike -> selection on the validation split -> one
evaluation on the test set -> ``OUT/report.json``, ``OUT/report.md`` and plots.

Validation vs test: ``preset.n_val`` images are held out of the training data (stratified, seed
``seed``); the (gamma, threshold) reported as *the* result is chosen on them (the fewest blocks
whose validation accuracy is within ``tolerance`` of the full network's), FirstK/RandomK take
BlockDrop's validation block counts, and the test set is evaluated once, after every choice is
made. The chosen model is written to ``OUT/blockdrop.safetensors`` with its threshold.

Every stage writes its model under ``OUT`` (a ``blockdrop.load``-able checkpoint); with ``resume``
a stage whose checkpoint exists is loaded instead of run again, so a killed run continues at the
stage it was in.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from blockdrop.baselines import BaselinePolicy, drop_path_policy, first_k_policy, full_policy, random_k_policy
from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import load_backbone, load_blockdrop_net, read_meta, save_blockdrop_net
from blockdrop.data import DataInfo, load_dataset, make_loader, split_train_val
from blockdrop.errors import IncompatibleError
from blockdrop.evaluate import EvalResult, evaluate, measure_throughput
from blockdrop.models.policy import CifarPolicyNet, make_policy_net
from blockdrop.recipes.presets import Preset, get_preset
from blockdrop.recipes.report import write_report
from blockdrop.supervised import SupervisedConfig, train_supervised
from blockdrop.runtime import resolve_device
from blockdrop.train import Trainer, TrainConfig

__all__ = ["reproduce", "RunPaths"]


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

    def full(self) -> Path:
        return self.out / "baselines" / "full.safetensors"

    def baseline(self, kind: str, gamma: float, threshold: float) -> Path:
        return self.out / "baselines" / f"{kind}_gamma{gamma:g}_t{threshold:g}.safetensors"

    def stage(self, gamma: float, stage: str) -> Path:
        return self.out / f"gamma{gamma:g}" / stage


@dataclass
class _Run:
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

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        t = time.time()
        out = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.time() - t
        return out


def _commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10, cwd=Path(__file__).resolve().parent)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _evaluate(run: _Run, net: BlockDropNet, data: DataInfo) -> EvalResult:
    loader = make_loader(data.dataset, 500, train=False)
    return evaluate(net, loader, run.device, full=False, flops=True, progress=False)


def _ft_config(run: _Run, steps: int, distill: float) -> SupervisedConfig:
    """Stage 3's backbone optimiser as a supervised run: Adam, the same lr and loss. (The joint
    stage decays its lr x0.1 at 80%; the supervised loop decays it by a cosine -- stated in
    docs/TRAINING.md.)"""
    p = run.preset
    return SupervisedConfig(steps=steps, batch_size=p.batch_size, lr=p.ft_lr, optimizer="adam",
                            weight_decay=0.0, distill=distill, bn=p.ft_bn, strategy=p.strategy,
                            amp=p.amp, seed=run.seed, progress=run.progress)


def _stage_pretrain(run: _Run, backbone: nn.Module) -> nn.Module:
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


def _adapt_config(run: _Run) -> SupervisedConfig:
    p = run.preset
    return SupervisedConfig(steps=max(1, p.adapt_steps), batch_size=p.batch_size, lr=p.adapt_lr,
                            distill=p.adapt_distill, inplace=p.adapt_inplace,
                            temperature=p.adapt_temperature, strategy="gather",
                            amp=p.amp, seed=run.seed, progress=run.progress)


def _stage_adapt(run: _Run, pretrained: nn.Module) -> nn.Module:
    path, p = run.paths.adapted(), run.preset
    if run.resume and path.is_file():
        run.log(f"[adapt] reusing {path}")
        return load_blockdrop_net(path)[0].backbone
    backbone = copy.deepcopy(pretrained)
    if p.adapt_steps:
        run.log(f"[adapt] {p.adapt_steps} steps of stochastic depth (keep {p.adapt_keep}), "
                f"distill {p.adapt_distill}{' in place' if p.adapt_inplace else ''}")
        run.timed("adapt", lambda: train_supervised(
            backbone, run.train, drop_path_policy(p.adapt_keep, backbone.num_blocks),
            _adapt_config(run), run.device, teacher=pretrained))
    save_blockdrop_net(path, BlockDropNet(BaselinePolicy("full", backbone.num_blocks), backbone),
                       {**run.meta, "stage": "adapt"})
    return backbone


def _stage_full(run: _Run, pretrained: nn.Module) -> BlockDropNet:
    """The full network finetuned alike: from the pretrained weights, the adapt stage's steps,
    optimiser and loss, then the finetune stage's -- every block, every image."""
    path, p = run.paths.full(), run.preset
    if run.resume and path.is_file():
        run.log(f"[baseline full] reusing {path}")
        return load_blockdrop_net(path, run.device)[0]  # type: ignore[return-value]
    backbone = copy.deepcopy(pretrained)
    nb = backbone.num_blocks
    if p.adapt_steps:
        # in-place adaptation trains the full path by plain cross-entropy: that is the full
        # network's share of the loss (its distillation term into itself would be zero)
        cfg = _adapt_config(run)
        if p.adapt_inplace:
            cfg = dataclasses.replace(cfg, inplace=False, distill=0.0)
        run.log(f"[baseline full] {p.adapt_steps} steps as the adapt stage, every block")
        run.timed("baseline_full", lambda: train_supervised(
            backbone, run.train, full_policy(nb), cfg, run.device, teacher=pretrained))
    steps = _ft_steps(run)
    if steps:
        run.log(f"[baseline full] {steps} steps as the finetune stage, every block")
        teacher = copy.deepcopy(backbone).eval()
        run.timed("baseline_full", lambda: train_supervised(
            backbone, run.train, full_policy(nb), _ft_config(run, steps, p.ft_distill), run.device,
            teacher=teacher))
    net = BlockDropNet(BaselinePolicy("full", nb), backbone, strategy="auto")
    save_blockdrop_net(path, net, {**run.meta, "stage": "baseline_full"})
    return net.to(run.device).eval()


def _stage_baseline(run: _Run, adapted: nn.Module, kind: str, k: float, path: Path) -> BlockDropNet:
    """FirstK / RandomK at ``k`` blocks: from the adapted backbone (as BlockDrop), the finetune
    stage's steps, optimiser and loss under the fixed policy."""
    if run.resume and path.is_file():
        run.log(f"[baseline {kind}] reusing {path}")
        return load_blockdrop_net(path, run.device)[0]  # type: ignore[return-value]
    p, nb = run.preset, adapted.num_blocks
    backbone = copy.deepcopy(adapted)
    sampler = first_k_policy(k, nb) if kind == "first_k" else random_k_policy(k, nb)
    steps = _ft_steps(run)
    if steps:
        run.log(f"[baseline {kind}] k = {k:.2f}: {steps} finetune steps")
        run.timed(f"baseline_{kind}", lambda: train_supervised(
            backbone, run.train, sampler, _ft_config(run, steps, p.ft_distill), run.device,
            teacher=adapted))
    net = BlockDropNet(BaselinePolicy(kind, nb, k=k, seed=run.seed), backbone, strategy="auto")
    save_blockdrop_net(path, net, {**run.meta, "stage": f"baseline_{kind}"})
    return net.to(run.device).eval()


def _ft_steps(run: _Run) -> int:
    p = run.preset
    if p.ft_steps is not None:
        return p.ft_steps
    return p.ft_epochs * (len(run.train.dataset) // p.batch_size)  # type: ignore[arg-type]


def _stage_blockdrop(run: _Run, adapted: nn.Module, gamma: float) -> BlockDropNet:
    p = run.preset
    ft_dir, cl_dir = run.paths.stage(gamma, "finetune"), run.paths.stage(gamma, "curriculum")
    done = ft_dir if _ft_steps(run) else cl_dir
    if run.resume and (done / "last.safetensors").is_file() and read_meta(done)["progress"]["done"]:
        run.log(f"[gamma {gamma:g}] reusing {done}")
        return load_blockdrop_net(done, run.device)[0]  # type: ignore[return-value]
    backbone = copy.deepcopy(adapted)
    torch.manual_seed(run.seed)
    pnet = make_policy_net(backbone.num_blocks, run.train.image_size)
    if isinstance(pnet, CifarPolicyNet) and pnet.width != p.policy_width:
        pnet = CifarPolicyNet(backbone.num_blocks, width=p.policy_width)
    k = backbone.num_blocks
    meta = {**run.meta, "policy_spec": pnet.spec()}
    common = dict(batch_size=p.batch_size, seed=run.seed, progress=run.progress,
                  device=str(run.device), strategy=p.strategy, amp=p.amp, log_every=20)
    epochs = p.cl_epochs or (math.ceil(k / p.cl_step) + p.cl_extra_epochs)
    steps = _ft_steps(run)
    cl = TrainConfig(stage="curriculum", epochs=epochs, steps_per_epoch=p.cl_steps_per_epoch,
                     lr=p.cl_lr, gamma=p.cl_gamma if steps else gamma, cl_step=p.cl_step,
                     **{**common, "batch_size": p.cl_batch_size or p.batch_size})
    run.log(f"[gamma {gamma:g}] curriculum: {epochs} epochs, {p.cl_step} more blocks per epoch")
    run.timed(f"curriculum_gamma{gamma:g}", lambda: Trainer(
        cl, pnet, backbone, run.train, cl_dir, extra_meta=meta).fit(resume=run.resume))
    if steps:
        ft = TrainConfig(stage="finetune", epochs=1, steps_per_epoch=steps, lr=p.ft_lr, gamma=gamma,
                         bn=p.ft_bn, baseline_eval=p.ft_baseline_eval, distill=p.ft_distill, **common)
        run.log(f"[gamma {gamma:g}] joint finetuning: {steps} steps")
        run.timed(f"finetune_gamma{gamma:g}", lambda: Trainer(
            ft, pnet, backbone, run.train, ft_dir, extra_meta=meta,
            teacher=adapted if p.ft_distill else None).fit(resume=run.resume))
    return BlockDropNet(pnet, backbone, strategy="auto").to(run.device).eval()


@dataclass
class _Point:
    """One operating point: a trained model at one threshold, with its validation result."""
    gamma: float
    threshold: float
    net: BlockDropNet
    val: EvalResult


def _val_points(run: _Run, gamma: float, net: BlockDropNet, full_val: EvalResult,
                tolerance: float) -> list[_Point]:
    """The model at every preset threshold on the validation split, then ``threshold_refine``
    bisections between the last threshold within ``tolerance`` of the full network and the next
    (a larger threshold keeps fewer blocks)."""
    def at(t: float) -> _Point:
        q = copy.copy(net)
        q.threshold = t
        return _Point(gamma, t, q, _evaluate(run, q, run.val))

    points = [at(t) for t in sorted(run.preset.thresholds)]
    ok = lambda q: q.val.accuracy >= full_val.accuracy - tolerance   # noqa: E731
    for _ in range(run.preset.threshold_refine):
        srt = sorted(points, key=lambda q: q.threshold)
        pairs = [(a, b) for a, b in zip(srt, srt[1:]) if ok(a) and not ok(b)]
        if not pairs:
            break
        a, b = pairs[-1]
        points.append(at(round((a.threshold + b.threshold) / 2, 4)))
    return points


def _select(points: list[_Point], full_val: EvalResult, tolerance: float) -> _Point:
    """The point with the fewest validation blocks whose validation accuracy is within
    ``tolerance`` of the full network's; when none is, the most accurate one."""
    ok = [p for p in points if p.val.accuracy >= full_val.accuracy - tolerance]
    if ok:
        return min(ok, key=lambda p: (p.val.blocks_mean, -p.val.accuracy))
    return max(points, key=lambda p: p.val.accuracy)


def _entry(name: str, res: EvalResult, **extra: Any) -> dict[str, Any]:
    return {"method": name, "accuracy": res.accuracy, "blocks_mean": res.blocks_mean,
            "blocks_std": res.blocks_std, "flops_mean": res.flops_mean, "flops_std": res.flops_std,
            "num_policies": res.num_policies, **extra}


def _data(src: str | os.PathLike[str] | DataInfo, split: str, seed: int) -> DataInfo:
    return src if isinstance(src, DataInfo) else load_dataset(src, split, seed=seed)


def reproduce(preset: str | Preset, arch: str, train_data: str | os.PathLike[str] | DataInfo,
              test_data: str | os.PathLike[str] | DataInfo, weights: str | os.PathLike[str] | None,
              out: str | os.PathLike[str], gammas: list[float] | None = None, seed: int = 0,
              device: str = "auto", progress: bool = True, resume: bool = False,
              tolerance: float | None = None, speed_batch: int = 256, overwrite: bool = False,
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
        speed_batch: batch size of the measured speedup (test images, interleaved timing).
        resume / overwrite: an ``out`` that already holds a run is continued (``resume``: its
            finished stages are reused) or replaced (``overwrite``); otherwise IncompatibleError.
    """
    t_start = time.time()
    p = get_preset(preset) if isinstance(preset, str) else preset
    gammas = list(gammas or p.gammas)
    tolerance = p.tolerance if tolerance is None else tolerance
    dev = resolve_device(device)
    paths = RunPaths(Path(out))
    paths.claim(resume, overwrite)
    full_train, test = _data(train_data, "train", seed), _data(test_data, "test", seed)
    if full_train.classes != test.classes:
        raise IncompatibleError(f"test_data: classes {test.classes[:10]} differ from train_data's "
                                f"{full_train.classes[:10]}")
    train, val = split_train_val(full_train, p.n_val, seed=seed)
    torch.manual_seed(seed)                    # a backbone trained from scratch starts the same
    pretrained, spec = load_backbone(weights, arch, train.num_classes)
    if spec.get("num_classes") != train.num_classes:
        raise IncompatibleError(f"weights: {weights} predicts {spec.get('num_classes')} classes, "
                                f"the data has {train.num_classes}")
    pretrained = pretrained.to(dev).eval()
    meta = {"backbone_spec": spec, "classes": train.classes, "image_size": train.image_size,
            "data": train.source, "preset": p.name}
    run = _Run(p, paths, dev, seed, progress, resume, train, val, meta, log)
    log(f"reproduce --preset {p.name}: {arch}, K={pretrained.num_blocks}, {len(train.dataset)} train / "  # type: ignore[arg-type]
        f"{len(val.dataset)} val / {len(test.dataset)} test images, gammas {gammas}, {dev}, "  # type: ignore[arg-type]
        f"{torch.get_num_threads()} threads")
    if weights is None:
        pretrained = _stage_pretrain(run, pretrained).eval()
    adapted = _stage_adapt(run, pretrained)
    nb = adapted.num_blocks
    full = _stage_full(run, pretrained)
    full_val = run.timed("eval", lambda: _evaluate(run, full, val))
    points: list[_Point] = []
    for g in gammas:
        net = _stage_blockdrop(run, adapted, g)
        pts = run.timed("eval", lambda: _val_points(run, g, net, full_val, tolerance))
        points += pts
        for q in pts:
            log(f"[gamma {g:g}] threshold {q.threshold:g}: val {100 * q.val.accuracy:.2f}% at "
                f"{q.val.blocks_mean:.2f} blocks (full network {100 * full_val.accuracy:.2f}%)")
    chosen = _select(points, full_val, tolerance)
    # the sweep: every gamma at the paper's threshold, and the chosen operating point
    shown = [q for q in points if q.threshold == 0.5 or q is chosen]
    final = chosen.net
    final_path = save_blockdrop_net(paths.out / "blockdrop.safetensors", final, {
        **run.meta, "stage": "blockdrop", "gamma": chosen.gamma, "val_accuracy": chosen.val.accuracy,
        "val_blocks": chosen.val.blocks_mean})
    baselines: list[tuple[str, _Point, BlockDropNet]] = []
    if p.first_random_k:
        for q in shown:
            for kind in ("first_k", "random_k"):
                path = paths.baseline(kind, q.gamma, q.threshold)
                baselines.append((kind, q, _stage_baseline(run, adapted, kind, q.val.blocks_mean, path)))

    # ---- the test set, once
    log(f"[test] evaluating every model on {test.source}")
    rows = [_entry("full", run.timed("eval", lambda: _evaluate(run, full, test)),
                   val_accuracy=full_val.accuracy, checkpoint=str(paths.full()))]
    tests: dict[int, EvalResult] = {}
    for q in shown:
        tests[id(q)] = run.timed("eval", lambda: _evaluate(run, q.net, test))
        rows.append(_entry("blockdrop", tests[id(q)], gamma=q.gamma, threshold=q.threshold,
                           chosen=q is chosen, val_accuracy=q.val.accuracy,
                           val_blocks=q.val.blocks_mean,
                           checkpoint=str(final_path if q is chosen else _final_checkpoint(run, q.gamma))))
    for kind, q, net in baselines:
        rows.append(_entry(kind, run.timed("eval", lambda: _evaluate(run, net, test)), gamma=q.gamma,
                           threshold=q.threshold, k=q.val.blocks_mean,
                           checkpoint=str(paths.baseline(kind, q.gamma, q.threshold))))
    batches = _speed_batches(test, speed_batch)
    speed = run.timed("speed", lambda: measure_throughput(final, batches, dev, repeats=5))
    res = tests[id(chosen)]
    report = {
        "checkpoint": str(final_path),
        "accuracy": res.accuracy, "blocks_mean": res.blocks_mean, "blocks_std": res.blocks_std,
        "flops_mean": res.flops_mean, "flops_std": res.flops_std, "full_flops": rows[0]["flops_mean"],
        "num_blocks": nb, "num_policies": res.num_policies,
        "full_accuracy": rows[0]["accuracy"], "gamma": chosen.gamma, "threshold": chosen.threshold,
        "measured_speedup": speed["speedup"], "speed_batch": speed_batch,
        "minutes": (time.time() - t_start) / 60, "stage_minutes": {k: v / 60 for k, v in run.seconds.items()},
        "preset": p.name, "settings": p.to_dict(), "seed": seed, "commit": _commit(), "arch": arch,
        "train_data": full_train.source, "test_data": test.source, "weights": str(weights),
        "val": {"images": len(val.dataset), "full_accuracy": full_val.accuracy,  # type: ignore[arg-type]
                "selection": f"fewest blocks within {100 * tolerance:g} points of the full network",
                "points": [{"gamma": q.gamma, "threshold": q.threshold, "accuracy": q.val.accuracy,
                            "blocks_mean": q.val.blocks_mean} for q in points]},
        "test_images": res.n, "device": str(dev), "threads": torch.get_num_threads(),
        "results": rows,
    }
    write_report(paths.out, report, final, res, test)
    log(f"[done] {p.name}: BlockDrop {100 * res.accuracy:.2f}% at {res.blocks_mean:.2f}/{nb} blocks "
        f"(gamma {chosen.gamma:g}, threshold {chosen.threshold:g}); full network {100 * report['full_accuracy']:.2f}%; measured speedup "
        f"{speed['speedup']:.2f}x at batch {speed_batch}; {report['minutes']:.1f} min -> {paths.out}/report.json")
    return report


def _speed_batches(test: DataInfo, batch: int, n: int = 2) -> list[torch.Tensor]:
    """Up to ``n`` full batches of test images (one smaller batch if the set is smaller)."""
    xs = []
    for x, _ in make_loader(test.dataset, batch, train=False):
        if x.shape[0] == batch or not xs:
            xs.append(x)
        if len(xs) == n:
            break
    return [x for x in xs if x.shape[0] == xs[0].shape[0]]


def _final_checkpoint(run: _Run, gamma: float) -> Path:
    stage = "finetune" if _ft_steps(run) else "curriculum"
    return run.paths.stage(gamma, stage) / "last.safetensors"
