"""``blockdrop eval``: accuracy, blocks, FLOPs, distinct policies and measured speedup of
checkpoints on a dataset, as tables, JSON and figures."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from blockdrop.cli._args import (AMP_MODES, STRATEGIES, add_runtime, nonneg_int, positive_int,
                                 setup_threads, thresholds)
from blockdrop.errors import IncompatibleError

__all__ = ["register", "check_fits"]


def register(sub: Any) -> None:
    e = sub.add_parser("eval", help="accuracy, blocks, FLOPs, policies and measured speedup")
    e.add_argument("checkpoints", nargs="+", metavar="CKPT", help="one or more checkpoints")
    g = e.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="PATH",
                   help="ImageFolder root, CIFAR folder or .tar.gz archive")
    g.add_argument("--cache-dir", metavar="DIR", help="where large archives are extracted")
    g.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader workers (default 0)")
    e.add_argument("--batch-size", type=positive_int, default=256)
    e.add_argument("--strategy", choices=STRATEGIES, default="auto")
    e.add_argument("--plots", metavar="DIR", help="write PNG figures here")
    e.add_argument("--bench-batches", type=nonneg_int, default=4,
                   help="batches timed for throughput (0: skip timing)")
    e.add_argument("--repeats", type=positive_int, default=5)
    e.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    e.add_argument("--limit", type=positive_int, default=None, help="evaluate N images (a seeded subset)")
    e.add_argument("--thresholds", type=thresholds, default=None, metavar="T1,T2,...",
                   help="a test-time budget: evaluate each checkpoint at these keep thresholds "
                        "(keep block k when p_k >= t; default: the checkpoint's own, 0.5)")
    e.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="precision of accuracy and throughput alike (auto: fp16 on CUDA, fp32 on CPU)")
    e.add_argument("--channels-last", action="store_true", help="run in channels_last memory format")
    add_runtime(e)
    e.set_defaults(func=run)


def check_fits(ckpt: str, meta: dict[str, Any], net: Any, data: Any, data_path: str) -> None:
    """The checkpoint must have been trained for this data: same classes (names and order),
    image size and class count. Raises IncompatibleError naming both."""
    classes = meta.get("classes")
    if classes is not None and list(classes) != list(data.classes):
        raise IncompatibleError(
            f"{ckpt}: trained on classes {list(classes)[:10]}, but {data_path} has "
            f"{list(data.classes)[:10]} -- the checkpoint does not fit this data")
    n = getattr(net.backbone, "num_classes", None)
    if n is not None and n != data.num_classes:
        raise IncompatibleError(f"{ckpt}: the backbone predicts {n} classes, {data_path} has "
                                f"{data.num_classes}")
    size = meta.get("image_size")
    if size is not None and size != data.image_size:
        raise IncompatibleError(f"{ckpt}: trained on {size}px images, {data_path} holds "
                                f"{data.image_size}px ones")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from blockdrop.checkpoint import atomic_write_text, load_blockdrop_net
    from blockdrop.data import load_dataset, make_loader, take_subset, with_normalization
    import torch
    from blockdrop.evaluation.evaluate import evaluate, format_table, format_threshold_table, measure_throughput
    from blockdrop.evaluation.plots import write_eval_figures
    from blockdrop.runtime import resolve_device
    setup_threads(args)
    device = resolve_device(args.device)
    info = take_subset(load_dataset(args.data, "test", seed=args.seed, cache_dir=args.cache_dir),
                       args.limit)
    nets = []
    for ck in args.checkpoints:          # every checkpoint is checked before any is evaluated
        net, meta = load_blockdrop_net(ck, device, strategy=args.strategy)
        check_fits(ck, meta, net, info, args.data)
        nets.append((ck, net, meta))
    base_info = info
    results = []
    for ck, net, meta in nets:
        norm = meta.get("input_normalization", "default")
        if norm != "default":            # e.g. a converted official checkpoint's own inputs
            info = with_normalization(base_info, *((norm["mean"], norm["std"]) if norm else
                                                   ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))))
        else:
            info = base_info
        if args.channels_last:
            net = net.to(memory_format=torch.channels_last)
        loader = make_loader(info.dataset, args.batch_size, train=False, workers=args.workers)
        batches = [x for _, (x, _) in zip(range(args.bench_batches), loader)]
        if args.channels_last:
            batches = [x.contiguous(memory_format=torch.channels_last) for x in batches]
        gamma = meta.get("gamma", meta.get("config", {}).get("gamma"))
        label = f"{meta.get('stage', '?')} gamma={gamma}" if gamma is not None else Path(ck).stem
        for t in args.thresholds or [net.threshold]:
            net.threshold = t
            res = evaluate(net, loader, device, amp=args.amp, strategy=args.strategy,
                           progress=not args.no_progress, channels_last=args.channels_last)
            if batches:
                res.throughput = measure_throughput(net, batches, device, repeats=args.repeats,
                                                    amp=args.amp, strategy=args.strategy)
            lab = f"{label} t={t:g}" if args.thresholds else label
            results.append((lab, res))
            if not args.thresholds:
                print(format_table(res, title=f"{ck} ({lab}) on {info.source}"), flush=True)
        if args.thresholds:
            print(format_threshold_table(results[-len(args.thresholds):], args.thresholds,
                                         title=f"{ck} ({label}) on {info.source}"), flush=True)
    per = len(args.thresholds or [None])
    results = [(lab, r) for lab, (_, r) in zip(_distinct([lab for lab, _ in results], per), results)]
    paired = _vs_first(results)
    for i, d in paired.items():          # several results are on the same images: compare pairwise
        print("paired: " + d.describe(results[i][0], results[0][0]))
    if args.plots:
        for p in write_eval_figures(args.plots, results, info):
            print(f"wrote {p}")
    if args.json:
        atomic_write_text(args.json, json.dumps(
            [{"checkpoint": nets[i // per][0], "label": lab, **r.to_dict(),
              **({"vs_first": paired[i].to_dict()} if i in paired else {})}
             for i, (lab, r) in enumerate(results)], indent=1))
    return 0


def _distinct(labels: list[str], per: int) -> list[str]:
    """``labels`` (``per`` consecutive ones per checkpoint) with ``#n``, the checkpoint's position
    on the command line, appended to every label that more than one result shares."""
    return [f"{lab} #{i // per + 1}" if labels.count(lab) > 1 else lab
            for i, lab in enumerate(labels)]


def _vs_first(results: list[tuple[str, Any]]) -> dict[int, Any]:
    """Each result after the first minus the first, paired over the same images (index -> a
    :class:`~blockdrop.evaluation.stats.PairedDifference`)."""
    from blockdrop.evaluation.stats import paired_difference
    return {i: paired_difference(r.correct, results[0][1].correct)
            for i, (_, r) in enumerate(results) if i}
