"""``blockdrop reproduce``: the recipe from a pretrained ResNet to a report (library code in
:mod:`blockdrop.recipes.reproduce`)."""
from __future__ import annotations

import argparse
from typing import Any

from blockdrop.cli._args import add_runtime, fraction, nonneg_float, setup_threads, share

__all__ = ["register"]


def register(sub: Any) -> None:
    from blockdrop.recipes.presets import PRESETS, SELECT_RULES
    r = sub.add_parser("reproduce", help="the whole recipe: BlockDrop vs fair baselines, report.json")
    r.add_argument("--preset", default="quick", choices=tuple(PRESETS),
                   help="budget: quick (15 min, 2 CPU cores), cpu (90 min), gpu, official")
    r.add_argument("--arch", required=True, help="backbone architecture, e.g. resnet56")
    r.add_argument("--train-data", required=True, metavar="PATH",
                   help="training data (the validation split is held out of it)")
    r.add_argument("--test-data", required=True, metavar="PATH", help="test data, evaluated once")
    r.add_argument("--weights", required=True, metavar="FILE", help="pretrained backbone")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--gamma", type=nonneg_float, nargs="+", default=None,
                   help="finetune penalties to sweep (default: the preset's)")
    r.add_argument("--tolerance", type=fraction, default=None, metavar="T",
                   help="with --select tolerance: validation accuracy the chosen point may give "
                        "up against the full network (default: the preset's)")
    r.add_argument("--max-blocks", type=share, default=None, metavar="S",
                   help="block budget of the chosen point, a share of the blocks in (0, 1] "
                        "(default: the preset's; 1: none)")
    r.add_argument("--select", choices=SELECT_RULES, default=None, dest="select_rule",
                   help="how the operating point is chosen on validation: tolerance (the fewest "
                        "blocks within --tolerance of the full network) or budget (each policy at "
                        "the most blocks inside --max-blocks, then the most accurate) "
                        "(default: the preset's)")
    r.add_argument("--resume", action="store_true", help="reuse the stages already in OUT")
    r.add_argument("--overwrite", action="store_true", help="replace a previous run in OUT")
    add_runtime(r)
    r.set_defaults(func=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from blockdrop.recipes.presets import get_preset
    from blockdrop.recipes.reproduce import reproduce
    budget = args.max_blocks if args.max_blocks is not None else get_preset(args.preset).max_blocks
    if args.select_rule == "budget" and budget is None:
        parser.error(f"--select budget: needs a block budget, --max-blocks S (preset "
                     f"{args.preset} sets none)")
    setup_threads(args)
    reproduce(args.preset, arch=args.arch, train_data=args.train_data, test_data=args.test_data,
              weights=args.weights, out=args.out, gammas=args.gamma, seed=args.seed,
              device=args.device, progress=not args.no_progress, resume=args.resume,
              overwrite=args.overwrite, tolerance=args.tolerance, max_blocks=args.max_blocks,
              select_rule=args.select_rule)
    return 0
