"""``blockdrop bench``: ``dynamic_forward`` strategies against the plain network on random iid
policies, timed interleaved (:mod:`blockdrop.evaluation.timing`)."""

from __future__ import annotations

import argparse
import functools
from typing import Any

import torch

from blockdrop.cli._args import STRATEGIES, add_runtime, fraction, positive_int, setup_threads
from blockdrop.models.registry import ARCH_HELP

__all__ = ["register"]


def register(sub: Any) -> None:
    b = sub.add_parser("bench", help="time dynamic_forward strategies against the full network")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="CKPT", help="use this BlockDropNet's backbone")
    src.add_argument("--weights", metavar="FILE", help="backbone weights")
    b.add_argument(
        "--arch",
        default=None,
        help="backbone name (default cifar_resnet110 without "
        f"--weights; with --weights of a CIFAR ResNet, checks its depth): {ARCH_HELP}",
    )
    b.add_argument("--batch-size", type=positive_int, default=64)
    b.add_argument("--image-size", type=positive_int, default=None)
    b.add_argument("--keep", type=fraction, default=0.3, help="iid keep probability (default 0.3)")
    b.add_argument(
        "--strategies",
        default="masked,gather,group,auto",
        help="comma-separated subset of " + ",".join(STRATEGIES),
    )
    b.add_argument("--repeats", type=positive_int, default=10)
    b.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="weights and activations (default float32)",
    )
    b.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    add_runtime(b)
    b.set_defaults(func=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from blockdrop.checkpoint import load_backbone, load_blockdrop_net
    from blockdrop.engine import dynamic_forward
    from blockdrop.evaluation.accounting import ideal_speedup
    from blockdrop.evaluation.timing import interleaved
    from blockdrop.runtime import resolve_device

    setup_threads(args)
    device = resolve_device(args.device)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        parser.error(f"--strategies: unknown {bad}; choose from {','.join(STRATEGIES)}")
    if args.checkpoint:
        model = load_blockdrop_net(args.checkpoint, device)[0].backbone
    else:
        arch = args.arch or (None if args.weights else "cifar_resnet110")
        model = load_backbone(args.weights, arch, 10)[0]
    dtype = getattr(torch, args.dtype)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(  # type: ignore[call-overload]  # torch stubs: no overload with memory_format
        device=device, dtype=dtype, memory_format=fmt
    ).eval()
    size = args.image_size or model.default_input_size[1]
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, size, size, generator=g).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=fmt)
    policy = (torch.rand(args.batch_size, model.num_blocks, generator=g) < args.keep).to(device)
    fns = {"full": lambda: model(x)}
    for s in strategies:
        fns[s] = functools.partial(dynamic_forward, model, x, policy, strategy=s)
    with torch.inference_mode():
        t = interleaved(fns, rounds=args.repeats, warmup=1, device=device)
    ideal = ideal_speedup(model, policy, input_size=(3, size, size))
    print(
        f"{type(model).__name__} K={model.num_blocks}, batch {args.batch_size}, {size}px, "
        f"iid keep {args.keep}, {args.dtype}{' channels_last' if args.channels_last else ''}, "
        f"{device}, {torch.get_num_threads()} threads; "
        f"ideal speedup {ideal:.2f}x; median of {args.repeats} interleaved rounds"
    )
    print(f"{'strategy':<10} {'ms/batch':>10} {'img/s':>10} {'speedup':>8} {'spread':>7}")
    full = t["full"].median
    for k, v in t.items():
        print(
            f"{k:<10} {1e3 * v.median:>10.2f} {args.batch_size / v.median:>10.0f} "
            f"{full / v.median:>7.2f}x {100 * v.spread:>6.0f}%"
        )
    return 0
