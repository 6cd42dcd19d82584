"""``blockdrop demo`` (``make demo``): the recipe end to end on scikit-learn's digits."""

from __future__ import annotations

import argparse
from typing import Any

from blockdrop.cli._args import add_runtime, setup_threads

__all__ = ["register"]


def register(sub: Any) -> None:
    d = sub.add_parser("demo", help="the whole recipe end to end on scikit-learn's digits (CPU, minutes)")
    d.add_argument("--out", default="runs/demo", metavar="DIR")
    d.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    d.add_argument("--resume", action="store_true", help="reuse the stages already in OUT")
    d.add_argument("--overwrite", action="store_true", help="replace a previous demo in OUT")
    add_runtime(d)
    d.set_defaults(func=run, threads=1, device="cpu")  # one thread: the same result on every run


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from blockdrop.recipes.demo import run_demo

    setup_threads(args)
    run_demo(
        args.out,
        seed=args.seed,
        quick=args.quick,
        device=args.device,
        progress=not args.no_progress,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    return 0
