"""``blockdrop eval``: accuracy, blocks, FLOPs, distinct policies and measured speedup of
checkpoints on a dataset, as tables, JSON and figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from blockdrop.cli._args import (
    AMP_MODES,
    STRATEGIES,
    add_runtime,
    nonneg_int,
    positive_int,
    setup_threads,
    share,
    thresholds,
)
from blockdrop.errors import IncompatibleError

__all__ = ["register", "check_fits", "check_capacity_args", "prepare_capacity"]


def register(sub: Any) -> None:
    e = sub.add_parser("eval", help="accuracy, blocks, FLOPs, policies and measured speedup")
    e.add_argument("checkpoints", nargs="+", metavar="CKPT", help="one or more checkpoints")
    g = e.add_argument_group("data")
    g.add_argument(
        "--data", required=True, metavar="PATH", help="ImageFolder root, CIFAR folder or .tar.gz archive"
    )
    g.add_argument("--cache-dir", metavar="DIR", help="where large archives are extracted")
    g.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader workers (default 0)")
    e.add_argument("--batch-size", type=positive_int, default=256)
    e.add_argument("--strategy", choices=STRATEGIES, default="auto")
    e.add_argument("--plots", metavar="DIR", help="write PNG figures here")
    e.add_argument(
        "--bench-batches", type=nonneg_int, default=4, help="batches timed for throughput (0: skip timing)"
    )
    e.add_argument("--repeats", type=positive_int, default=5)
    e.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    e.add_argument("--limit", type=positive_int, default=None, help="evaluate N images (a seeded subset)")
    e.add_argument(
        "--thresholds",
        type=thresholds,
        default=None,
        metavar="T1,T2,...",
        help="a test-time budget: evaluate each checkpoint at these keep thresholds "
        "(keep block k when p_k >= t; default: the checkpoint's own, 0.5)",
    )
    e.add_argument(
        "--amp",
        choices=AMP_MODES,
        default="auto",
        help="precision of accuracy and throughput alike (auto: fp16 on CUDA, fp32 on CPU)",
    )
    e.add_argument("--channels-last", action="store_true", help="run in channels_last memory format")
    c = e.add_argument_group(
        "capacity mode (static shapes: block k runs on the top-C_k images of each batch)"
    )
    c.add_argument(
        "--mode",
        choices=("threshold", "capacity", "both"),
        default=None,
        help="evaluate threshold mode, capacity mode, or both on the same images "
        "(default: the checkpoint's own mode)",
    )
    c.add_argument(
        "--calibrate-data",
        metavar="PATH",
        help="capacity shares = the threshold policy's keep rates on this data "
        "(default: the checkpoint's stored capacity)",
    )
    c.add_argument(
        "--calibrate-holdout",
        type=positive_int,
        default=None,
        metavar="N",
        help="calibrate on N images held out of --calibrate-data's training split "
        "(stratified, --seed), as `blockdrop reproduce` holds out its validation set",
    )
    c.add_argument(
        "--budget",
        type=share,
        default=None,
        metavar="B",
        help="capacity within B (0 < B <= 1) of the full network's FLOPs, for every batch",
    )
    c.add_argument(
        "--save-calibrated",
        metavar="FILE",
        help="write the checkpoint with its capacity (read back by blockdrop.load)",
    )
    add_runtime(e)
    e.set_defaults(func=run)


def check_fits(ckpt: str, meta: dict[str, Any], net: Any, data: Any, data_path: str) -> None:
    """The checkpoint must have been trained for this data: same classes (names and order),
    image size and class count. Raises IncompatibleError naming both."""
    classes = meta.get("classes")
    if classes is not None and list(classes) != list(data.classes):
        raise IncompatibleError(
            f"{ckpt}: trained on classes {list(classes)[:10]}, but {data_path} has "
            f"{list(data.classes)[:10]} -- the checkpoint does not fit this data"
        )
    n = getattr(net.backbone, "num_classes", None)
    if n is not None and n != data.num_classes:
        raise IncompatibleError(
            f"{ckpt}: the backbone predicts {n} classes, {data_path} has {data.num_classes}"
        )
    size = meta.get("image_size")
    if size is not None and size != data.image_size:
        raise IncompatibleError(
            f"{ckpt}: trained on {size}px images, {data_path} holds {data.image_size}px ones"
        )


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from blockdrop.checkpoint import atomic_write_text, load_blockdrop_net
    from blockdrop.data import load_dataset, take_subset
    from blockdrop.evaluation.plots import write_eval_figures
    from blockdrop.runtime import resolve_device

    check_capacity_args(parser, args)
    setup_threads(args)
    device = resolve_device(args.device)
    info = take_subset(load_dataset(args.data, "test", seed=args.seed, cache_dir=args.cache_dir), args.limit)
    nets = []
    for ck in args.checkpoints:  # every checkpoint is checked before any is evaluated
        net, meta = load_blockdrop_net(ck, device, strategy=args.strategy)
        check_fits(ck, meta, net, info, args.data)
        nets.append((ck, net, meta))
    modes = prepare_capacity(args, nets, device)
    results = []
    for ck, net, meta in nets:
        results += _evaluate_checkpoint(args, ck, net, meta, info, modes, device)
    per = sum(len(args.thresholds or [None]) if m == "threshold" else 1 for m in modes)
    results = [(lab, r) for lab, (_, r) in zip(_distinct([lab for lab, _ in results], per), results)]
    paired = _vs_first(results)
    for i, d in paired.items():  # several results are on the same images: compare pairwise
        print("paired: " + d.describe(results[i][0], results[0][0]))
    if args.plots:
        for p in write_eval_figures(args.plots, results, info):
            print(f"wrote {p}")
    if args.json:
        atomic_write_text(
            args.json,
            json.dumps(
                [
                    {
                        "checkpoint": nets[i // per][0],
                        "label": lab,
                        **r.to_dict(),
                        **({"vs_first": paired[i].to_dict()} if i in paired else {}),
                    }
                    for i, (lab, r) in enumerate(results)
                ],
                indent=1,
            ),
        )
    return 0


def _evaluate_checkpoint(
    args: argparse.Namespace,
    ck: str,
    net: Any,
    meta: dict[str, Any],
    base_info: Any,
    modes: list[str],
    device: Any,
) -> list[tuple[str, Any]]:
    """One checkpoint in each of ``modes`` (threshold mode at each of ``--thresholds``): evaluated,
    timed, printed. Returns ``[(label, EvalResult)]``."""
    import torch

    from blockdrop.data import make_loader, with_normalization
    from blockdrop.evaluation.evaluate import (
        evaluate,
        format_table,
        format_threshold_table,
        measure_throughput,
    )

    norm = meta.get("input_normalization", "default")
    info = base_info
    if norm != "default":  # e.g. a converted official checkpoint's own inputs
        info = with_normalization(
            base_info, *((norm["mean"], norm["std"]) if norm else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
        )
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    loader = make_loader(info.dataset, args.batch_size, train=False, workers=args.workers)
    batches = [x for _, (x, _) in zip(range(args.bench_batches), loader)]
    if args.channels_last:
        batches = [x.contiguous(memory_format=torch.channels_last) for x in batches]
    gamma = meta.get("gamma", meta.get("config", {}).get("gamma"))
    label = f"{meta.get('stage', '?')} gamma={gamma}" if gamma is not None else Path(ck).stem
    out: list[tuple[str, Any]] = []
    for mode in modes:
        sweep = args.thresholds if args.thresholds and mode == "threshold" else None
        for t in sweep or [net.threshold]:
            net.threshold = t
            net.set_mode(mode)
            res = evaluate(
                net,
                loader,
                device,
                amp=args.amp,
                strategy=args.strategy,
                progress=not args.no_progress,
                channels_last=args.channels_last,
            )
            if batches:
                res.throughput = measure_throughput(
                    net, batches, device, repeats=args.repeats, amp=args.amp, strategy=args.strategy
                )
            lab = f"{label} t={t:g}" if sweep else label
            lab = f"{lab} {mode}" if len(modes) > 1 or mode == "capacity" else lab
            out.append((lab, res))
            if not sweep:
                print(format_table(res, title=f"{ck} ({lab}) on {info.source}"), flush=True)
        if sweep:
            print(
                format_threshold_table(out[-len(sweep) :], sweep, title=f"{ck} ({label}) on {info.source}"),
                flush=True,
            )
    return out


def _distinct(labels: list[str], per: int) -> list[str]:
    """``labels`` (``per`` consecutive ones per checkpoint) with ``#n``, the checkpoint's position
    on the command line, appended to every label that more than one result shares."""
    return [f"{lab} #{i // per + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def _vs_first(results: list[tuple[str, Any]]) -> dict[int, Any]:
    """Each result after the first minus the first, paired over the same images (index -> a
    :class:`~blockdrop.evaluation.stats.PairedDifference`)."""
    from blockdrop.evaluation.stats import paired_difference

    return {i: paired_difference(r.correct, results[0][1].correct) for i, (_, r) in enumerate(results) if i}


def check_capacity_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Option combinations of capacity mode that cannot work: parser errors (exit 2)."""
    if args.thresholds and args.mode == "capacity":
        parser.error(
            "--thresholds applies to threshold mode; capacity mode has its shares "
            "(--calibrate-data, --budget)"
        )
    if args.calibrate_holdout and not args.calibrate_data:
        parser.error("--calibrate-holdout needs --calibrate-data (the training data to hold out of)")
    uses_capacity = args.mode in ("capacity", "both")
    if (args.calibrate_data or args.budget or args.save_calibrated) and not uses_capacity:
        parser.error("--calibrate-data, --budget and --save-calibrated need --mode capacity or both")
    if args.save_calibrated and len(args.checkpoints) != 1:
        parser.error("--save-calibrated writes one checkpoint: give one CKPT")


def prepare_capacity(
    args: argparse.Namespace, nets: list[tuple[str, Any, dict[str, Any]]], device: Any
) -> list[str]:
    """Calibrate / budget every net as the options say (before any evaluation, so a missing
    capacity fails early), save it with ``--save-calibrated``; returns the modes to evaluate."""
    from blockdrop.checkpoint import save_blockdrop_net
    from blockdrop.data import load_dataset, make_loader, split_train_val

    modes = {"both": ["threshold", "capacity"], None: None}.get(args.mode, [args.mode])
    if modes is None:  # the checkpoints' own mode (threshold when sweeping thresholds)
        own = {net.mode for _, net, _ in nets}
        modes = ["threshold"] if args.thresholds or len(own) > 1 else sorted(own)
    calib = None
    if args.calibrate_data:
        if args.calibrate_holdout:
            calib = split_train_val(
                load_dataset(args.calibrate_data, "train", seed=args.seed, cache_dir=args.cache_dir),
                args.calibrate_holdout,
                seed=args.seed,
            )[1]
        else:
            calib = load_dataset(args.calibrate_data, "test", seed=args.seed, cache_dir=args.cache_dir)
    for ck, net, meta in nets:
        if calib is not None:
            loader = make_loader(calib.dataset, args.batch_size, train=False, workers=args.workers)
            spec = net.calibrate_capacity(loader, budget=args.budget, device=device, amp=args.amp)
        elif args.budget is not None:
            spec = net.set_capacity(budget=args.budget)
        elif "capacity" in modes and net.capacity is None:
            raise ValueError(
                f"{ck}: the checkpoint stores no capacity; give --calibrate-data "
                "(validation data) and/or --budget"
            )
        else:
            spec = net.capacity
        if spec is not None and (calib is not None or args.budget is not None):
            print(
                f"{ck}: capacity {sum(spec.shares):.2f} of {net.num_blocks} blocks per image"
                + (f", within {spec.budget:g} of the full network's FLOPs" if spec.budget else "")
                + (
                    f" (calibrated on {spec.info.get('images')} images)"
                    if calib is not None and spec.info
                    else ""
                )
            )
        if args.save_calibrated:
            print(f"wrote {save_blockdrop_net(args.save_calibrated, net, meta)}")
    return modes
