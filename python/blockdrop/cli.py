"""``blockdrop`` command line: ``train`` (curriculum), ``finetune``, ``eval``, ``bench``, ``demo``.

Every subcommand works on CPU or CUDA and under ``torchrun`` (train/finetune).  Run
``blockdrop <command> -h`` for the options.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from blockdrop.engine import STRATEGIES
from blockdrop.runtime import AMP_MODES

if TYPE_CHECKING:
    from blockdrop.train import TrainConfig

__all__ = ["main", "build_parser", "train_config"]


# --------------------------------------------------------------------------- argument types

def _number(cast: type, lowest: float, strict: bool, what: str):
    """An argparse type: `cast(s)`, finite, and > lowest (strict) or >= lowest; else "expected {what}"."""

    def parse(s: str):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        ok = v > lowest if strict else v >= lowest  # False for NaN
        if not ok or math.isinf(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


_positive_int = _number(int, 1, False, "a positive integer")
_nonneg_int = _number(int, 0, False, "an integer >= 0")
_pos_float = _number(float, 0, True, "a positive number")
_nonneg_float = _number(float, 0, False, "a number >= 0")


def _alpha(s: str) -> float:
    v = _pos_float(s)
    if not 0.5 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"alpha must be in [0.5, 1], got {s!r}")
    return v


def _fraction(s: str) -> float:
    v = _nonneg_float(s)
    if v > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {s!r}")
    return v




# --------------------------------------------------------------------------- parser

def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def _data_args(p: argparse.ArgumentParser, required: bool = True, val: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, metavar="PATH",
                   help="training data: ImageFolder root, CIFAR folder or .tar.gz archive")
    if val:
        g.add_argument("--val-data", metavar="PATH", help="held-out data evaluated after each epoch")
    g.add_argument("--cache-dir", metavar="DIR", help="where large archives are extracted")
    g.add_argument("--workers", type=_nonneg_int, default=0, help="DataLoader workers (default 0)")


def _train_args(p: argparse.ArgumentParser, stage: str) -> None:
    """Training options. Those left unset (None) take the stage's official value from
    :class:`blockdrop.train.TrainConfig`, the one place where defaults live."""
    cl = stage == "curriculum"
    g = p.add_argument_group("training (defaults: the official BlockDrop settings)")
    g.add_argument("--out", required=True, metavar="DIR", help="checkpoints and metrics.csv go here")
    g.add_argument("--epochs", type=_positive_int, default=None,
                   help="default: curriculum K/cl_step + 5, finetune 10")
    g.add_argument("--steps-per-epoch", type=_positive_int, default=None,
                   help="cap on batches per epoch (default: whole dataset)")
    g.add_argument("--batch-size", type=_positive_int, default=2048 if cl else 256,
                   help=f"per process (default {2048 if cl else 256}, the official setting)")
    g.add_argument("--lr", type=_pos_float, default=None,
                   help=f"Adam learning rate (default {'1e-3' if cl else '1e-4'})")
    if not cl:
        g.add_argument("--lr-decay-at", type=_fraction, default=None,
                       help="lr x0.1 from this fraction of the steps on (default 0.8)")
    g.add_argument("--weight-decay", type=_nonneg_float, default=0.0)
    g.add_argument("--gamma", type=_nonneg_float, default=None,
                   help=f"penalty for a wrong prediction (default {1 if cl else 5})")
    g.add_argument("--alpha", type=_alpha, default=0.8, help="exploration bound (default 0.8)")
    g.add_argument("--beta", type=_nonneg_float, default=None,
                   help=f"entropy bonus (default {0.1 if cl else 0.0})")
    if cl:
        g.add_argument("--cl-step", type=_positive_int, default=1,
                       help="blocks added to the learned set per epoch (default 1)")
    else:
        g.add_argument("--bn", choices=("train", "frozen"), default="train",
                       help="BatchNorm in the backbone: batch statistics (default, official) or "
                            "frozen running statistics")
        g.add_argument("--baseline-eval", action="store_true",
                       help="self-critical baseline with the backbone in eval mode (official: train mode)")
        g.add_argument("--distill", type=_fraction, default=0.0,
                       help="weight of the --init backbone's soft targets (default 0: plain CE)")
    g.add_argument("--strategy", choices=STRATEGIES, default="gather",
                   help="engine strategy for the backbone (default gather)")
    g.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="mixed precision: auto (fp16 + loss scaling on CUDA, off on CPU), off, "
                        "bf16 (no loss scaling; fast on CPUs with AVX512-BF16/AMX), fp16")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    g.add_argument("--ckpt-every", type=_nonneg_int, default=0,
                   help="also checkpoint every N steps (default: end of each epoch)")
    g.add_argument("--log-every", type=_positive_int, default=10)


def build_parser() -> argparse.ArgumentParser:
    """The ``blockdrop`` argument parser."""
    p = argparse.ArgumentParser(prog="blockdrop", description=(
        "BlockDrop (Wu et al., CVPR 2018): learn per-image residual-block policies and run them "
        "with real batched skipping."))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="curriculum stage: learn the policy, backbone frozen")
    _data_args(t)
    m = t.add_argument_group("model")
    m.add_argument("--weights", metavar="FILE", help="pretrained backbone (.th/.pt/.safetensors)")
    m.add_argument("--arch", help="backbone architecture, e.g. resnet32, resnet110, tv-resnet50")
    _train_args(t, "curriculum")
    _common(t)

    f = sub.add_parser("finetune", help="joint finetuning of policy and backbone")
    _data_args(f)
    m = f.add_argument_group("model")
    m.add_argument("--init", metavar="CKPT", help="checkpoint of the curriculum stage")
    m.add_argument("--weights", metavar="FILE", help="backbone weights (without --init)")
    m.add_argument("--arch", help="backbone architecture (without --init)")
    _train_args(f, "finetune")
    _common(f)

    e = sub.add_parser("eval", help="accuracy, blocks, FLOPs, policies and measured speedup")
    e.add_argument("checkpoints", nargs="+", metavar="CKPT", help="one or more checkpoints")
    _data_args(e, val=False)
    e.add_argument("--batch-size", type=_positive_int, default=256)
    e.add_argument("--strategy", choices=STRATEGIES, default="auto")
    e.add_argument("--plots", metavar="DIR", help="write PNG figures here")
    e.add_argument("--bench-batches", type=_nonneg_int, default=4,
                   help="batches timed for throughput (0: skip timing)")
    e.add_argument("--repeats", type=_positive_int, default=5)
    e.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    e.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first N images")
    _common(e)

    b = sub.add_parser("bench", help="time dynamic_forward strategies against the full network")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="CKPT", help="use this BlockDropNet's backbone")
    src.add_argument("--weights", metavar="FILE", help="backbone weights")
    b.add_argument("--arch", default=None,
                   help="backbone architecture (default resnet110 without --weights)")
    b.add_argument("--batch-size", type=_positive_int, default=64)
    b.add_argument("--image-size", type=_positive_int, default=None)
    b.add_argument("--keep", type=_fraction, default=0.3, help="iid keep probability (default 0.3)")
    b.add_argument("--strategies", default="masked,gather,group,auto",
                   help="comma-separated subset of " + ",".join(STRATEGIES))
    b.add_argument("--repeats", type=_positive_int, default=10)
    _common(b)

    r = sub.add_parser("reproduce", help="the whole recipe: BlockDrop vs fair baselines, report.json")
    r.add_argument("--preset", default="quick", help="quick | cpu | gpu | official (default quick)")
    r.add_argument("--arch", required=True, help="backbone architecture, e.g. resnet56")
    r.add_argument("--train-data", required=True, metavar="PATH",
                   help="training data (the validation split is held out of it)")
    r.add_argument("--test-data", required=True, metavar="PATH", help="test data, evaluated once")
    r.add_argument("--weights", required=True, metavar="FILE", help="pretrained backbone")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--gamma", type=_nonneg_float, nargs="+", default=None,
                   help="finetune penalties to sweep (default: the preset's)")
    r.add_argument("--resume", action="store_true", help="reuse the stages already in OUT")
    _common(r)

    d = sub.add_parser("demo", help="the whole recipe end to end on scikit-learn's digits (CPU, minutes)")
    d.add_argument("--out", default="runs/demo", metavar="DIR")
    d.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    d.add_argument("--resume", action="store_true", help="reuse the stages already in OUT")
    _common(d)
    d.set_defaults(threads=1, device="cpu")   # one thread: the same result on every run
    return p


# --------------------------------------------------------------------------- helpers

def _setup(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def _load_data(parser: argparse.ArgumentParser, path: str, split: str, seed: int,
               cache_dir: str | None) -> Any:
    from blockdrop.data import DatasetNotFoundError, load_dataset
    try:
        return load_dataset(path, split, seed=seed, cache_dir=cache_dir)
    except DatasetNotFoundError as e:
        parser.error(str(e))


def _subset(info: Any, n: int | None) -> Any:
    if n is None or n >= len(info.dataset):
        return info
    from blockdrop.data import DataInfo, ImageArrayDataset
    ds = info.dataset
    if isinstance(ds, ImageArrayDataset):
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(ds), generator=g)[:n].sort().values
        sub = ImageArrayDataset(ds.images[idx], ds.labels[idx], ds.transform, ds.seed)
        label = f"random {n}"
    else:
        sub = torch.utils.data.Subset(ds, range(n))
        label = f"first {n}"
    return DataInfo(sub, info.classes, info.image_size, info.source + f" ({label})")


def train_config(args: argparse.Namespace, stage: str, epochs: int) -> "TrainConfig":
    """The :class:`~blockdrop.train.TrainConfig` of a parsed ``train``/``finetune`` command line
    (options left unset take the config's official defaults)."""
    from blockdrop.train import TrainConfig
    return TrainConfig(stage=stage, epochs=epochs, steps_per_epoch=args.steps_per_epoch,
                       batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       lr_decay_at=getattr(args, "lr_decay_at", None),
                       gamma=args.gamma, alpha=args.alpha, beta=args.beta,
                       cl_step=getattr(args, "cl_step", 1), strategy=args.strategy,
                       bn=getattr(args, "bn", "train"),
                       baseline_eval=getattr(args, "baseline_eval", False),
                       distill=getattr(args, "distill", 0.0), amp=args.amp, seed=args.seed,
                       workers=args.workers, ckpt_every=args.ckpt_every, log_every=args.log_every,
                       progress=not args.no_progress, device=args.device)


def _run_stage(parser: argparse.ArgumentParser, args: argparse.Namespace, stage: str) -> int:
    from blockdrop.checkpoint import load_backbone, load_blockdrop_net
    from blockdrop.models.policy import make_policy_net
    from blockdrop.runtime import init_distributed
    from blockdrop.train import Trainer

    _setup(args)
    dist_info = init_distributed(args.device)
    train = _load_data(parser, args.data, "train", args.seed, args.cache_dir)
    val = _load_data(parser, args.val_data, "test", args.seed, args.cache_dir) if args.val_data else None
    pnet = None
    if stage == "finetune" and args.init:
        try:
            init, meta = load_blockdrop_net(args.init)  # modes are set by the trainer
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
        spec, backbone, pnet = meta["backbone_spec"], init.backbone, init.policy_net
    else:
        if not args.weights and not args.arch:
            parser.error("give --weights (pretrained backbone) or --arch" +
                         (" or --init" if stage == "finetune" else ""))
        try:
            backbone, spec = load_backbone(args.weights, args.arch, train.num_classes)
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
        if not args.weights:
            print(f"warning: backbone {args.arch} is randomly initialised (no --weights)",
                  file=sys.stderr)
    if spec.get("num_classes") != train.num_classes:
        parser.error(f"backbone has {spec.get('num_classes')} classes, data has {train.num_classes}")
    if pnet is None:
        torch.manual_seed(args.seed)
        pnet = make_policy_net(backbone.num_blocks, train.image_size)
    k = backbone.num_blocks
    epochs = args.epochs or (math.ceil(k / args.cl_step) + 5 if stage == "curriculum" else 10)
    cfg = train_config(args, stage, epochs)
    teacher = None
    if cfg.distill:   # the backbone as it starts, frozen; the same on --resume
        import copy
        teacher = copy.deepcopy(backbone).eval()
    meta = {"backbone_spec": spec, "policy_spec": pnet.spec(), "classes": train.classes,
            "image_size": train.image_size, "data": train.source}
    trainer = Trainer(cfg, pnet, backbone, train, args.out, val, dist_info, meta, teacher=teacher)
    if dist_info.is_main:
        print(f"[{stage}] {train.source}: {len(train.dataset)} images, {train.num_classes} classes; "
              f"backbone {spec}, K={k}; {epochs} epochs x {trainer.batches_per_epoch} steps "
              f"x {cfg.batch_size} x {dist_info.world_size} proc on {dist_info.device}", flush=True)
    try:
        last = trainer.fit(resume=args.resume)
    except (ValueError, FileNotFoundError) as e:   # e.g. --resume on another stage's checkpoint
        if "checkpoint" not in str(e):
            raise
        parser.error(str(e))
    if dist_info.is_main:
        print(f"[{stage}] done: {json.dumps(last)}\ncheckpoint: {trainer.checkpoint_path()}")
    if dist_info.distributed:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _eval_one(net: Any, info: Any, args: argparse.Namespace, device: torch.device,
              bench_batches: int, repeats: int, strategy: str) -> Any:
    from blockdrop.data import make_loader
    from blockdrop.evaluate import evaluate, measure_throughput
    loader = make_loader(info.dataset, args.batch_size, train=False, workers=getattr(args, "workers", 0))
    res = evaluate(net, loader, device, amp=device.type == "cuda", strategy=strategy,
                   progress=not args.no_progress)
    if bench_batches:
        batches = []
        for i, (x, _) in enumerate(loader):
            if i >= bench_batches:
                break
            batches.append(x)
        res.throughput = measure_throughput(net, batches, device, repeats=repeats, strategy=strategy)
    return res


def _write_plots(out: Path, results: list[tuple[str, Any]], info: Any, title: str = "") -> list[Path]:
    from blockdrop.data import denormalize
    from blockdrop.plots import plot_acc_vs_flops, plot_block_usage, plot_policy_grid
    paths = []
    pts = [{"label": lab, "accuracy": r.accuracy, "flops": r.flops_mean, "flops_std": r.flops_std}
           for lab, r in results if r.flops_mean is not None]
    r0 = results[-1][1]
    full = ({"accuracy": r0.full_accuracy, "flops": r0.full_flops}
            if r0.full_accuracy is not None and r0.full_flops else None)
    if pts:
        paths.append(plot_acc_vs_flops(pts, out / "acc_vs_flops.png", full=full))
    for i, (lab, r) in enumerate(results):
        suffix = "" if len(results) == 1 else f"_{i}"
        paths.append(plot_block_usage(r.block_freq, out / f"block_usage{suffix}.png",
                                      title=f"Block usage ({lab})"))
    # image grid for the last checkpoint: first images of the data set, as stored
    ds = info.dataset
    n_all = min(len(ds), r0.policies.shape[0])
    pick = torch.randperm(n_all, generator=torch.Generator().manual_seed(0))[:512].sort().values
    imgs = torch.stack([ds[int(i)][0] for i in pick])
    names = [info.classes[int(r0.labels[i])] for i in pick]
    paths.append(plot_policy_grid(denormalize(imgs), r0.policies[pick], out / "policy_grid.png",
                                  labels=names, title=title or "Images grouped by policy"))
    return paths


def _cmd_eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from blockdrop.checkpoint import load_blockdrop_net
    from blockdrop.evaluate import format_table
    from blockdrop.runtime import resolve_device
    _setup(args)
    device = resolve_device(args.device)
    info = _subset(_load_data(parser, args.data, "test", args.seed, args.cache_dir), args.limit)
    results = []
    for ck in args.checkpoints:
        try:
            net, meta = load_blockdrop_net(ck, device, strategy=args.strategy)
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
        res = _eval_one(net, info, args, device, args.bench_batches, args.repeats, args.strategy)
        gamma = meta.get("config", {}).get("gamma")
        label = f"{meta.get('stage', '?')} gamma={gamma}" if gamma is not None else Path(ck).stem
        results.append((label, res))
        print(format_table(res, title=f"{ck} ({label}) on {info.source}"), flush=True)
    if args.plots:
        for p in _write_plots(Path(args.plots), results, info):
            print(f"wrote {p}")
    if args.json:
        from blockdrop.checkpoint import atomic_write_text
        atomic_write_text(args.json, json.dumps(
            [{"checkpoint": c, "label": lab, **r.to_dict()}
             for c, (lab, r) in zip(args.checkpoints, results)], indent=1))
    return 0


def _cmd_bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import statistics
    from blockdrop.accounting import ideal_speedup
    from blockdrop.checkpoint import load_backbone, load_blockdrop_net
    from blockdrop.engine import dynamic_forward
    from blockdrop.runtime import resolve_device
    _setup(args)
    device = resolve_device(args.device)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        parser.error(f"--strategies: unknown {bad}; choose from {','.join(STRATEGIES)}")
    try:
        if args.checkpoint:
            model = load_blockdrop_net(args.checkpoint, device)[0].backbone
        else:
            model = load_backbone(args.weights, args.arch or (None if args.weights else "resnet110"),
                                  10)[0]
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    model = model.to(device).eval()
    size = args.image_size or model.default_input_size[1]
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, size, size, generator=g).to(device)
    policy = (torch.rand(args.batch_size, model.num_blocks, generator=g) < args.keep).to(device)
    fns = {"full": lambda: model(x)}
    for s in strategies:
        fns[s] = (lambda s=s: dynamic_forward(model, x, policy, strategy=s))
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            f()
        for _ in range(args.repeats):
            for k, f in fns.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                f()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ideal = ideal_speedup(model, policy, input_size=(3, size, size))
    print(f"{type(model).__name__} K={model.num_blocks}, batch {args.batch_size}, {size}px, "
          f"iid keep {args.keep}, {device}, {torch.get_num_threads()} threads; "
          f"ideal speedup {ideal:.2f}x; median of {args.repeats}")
    print(f"{'strategy':<10} {'ms/batch':>10} {'img/s':>10} {'speedup':>8}")
    for k, t in med.items():
        print(f"{k:<10} {1e3 * t:>10.2f} {args.batch_size / t:>10.0f} {med['full'] / t:>7.2f}x")
    return 0


def _cmd_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from blockdrop.recipes.demo import run_demo
    _setup(args)
    run_demo(args.out, seed=args.seed, quick=args.quick, device=args.device,
             progress=not args.no_progress, resume=args.resume)
    return 0


def _cmd_reproduce(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from blockdrop.recipes.presets import PRESETS
    from blockdrop.recipes.reproduce import reproduce
    _setup(args)
    if args.preset not in PRESETS:
        parser.error(f"--preset: expected one of {', '.join(PRESETS)}, got {args.preset!r}")
    for opt in ("train_data", "test_data", "weights"):
        if not Path(getattr(args, opt)).exists():
            parser.error(f"--{opt.replace('_', '-')}: {getattr(args, opt)} does not exist")
    reproduce(args.preset, arch=args.arch, train_data=args.train_data, test_data=args.test_data,
              weights=args.weights, out=args.out, gammas=args.gamma, seed=args.seed,
              device=args.device, progress=not args.no_progress, resume=args.resume)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blockdrop`` console script (and ``python -m blockdrop``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    if args.command == "train":
        return _run_stage(sub, args, "curriculum")
    if args.command == "finetune":
        if args.init and (args.weights or args.arch):
            sub.error("--init already holds the backbone; drop --weights/--arch")
        return _run_stage(sub, args, "finetune")
    if args.command == "eval":
        return _cmd_eval(sub, args)
    if args.command == "bench":
        return _cmd_bench(sub, args)
    if args.command == "demo":
        return _cmd_demo(sub, args)
    if args.command == "reproduce":
        return _cmd_reproduce(sub, args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
