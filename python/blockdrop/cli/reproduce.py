"""``blockdrop reproduce``: the recipe from a pretrained ResNet to a report (library code in
:mod:`blockdrop.recipes.reproduce`; settings in :mod:`blockdrop.recipes.config`)."""

from __future__ import annotations

import argparse
from typing import Any

from blockdrop.cli._args import add_runtime, nonneg_float, setup_threads
from blockdrop.models.registry import ARCH_HELP

__all__ = ["register"]


def register(sub: Any) -> None:
    from blockdrop.recipes.presets import PRESETS

    r = sub.add_parser("reproduce", help="the whole recipe: BlockDrop vs fair baselines, report.json")
    r.add_argument(
        "--preset",
        default="quick",
        choices=tuple(PRESETS),
        help="budget: quick (15 min, 2 CPU cores), cpu (90 min), gpu, official",
    )
    r.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a YAML file (--print-config's form; whole, or partial over "
        "--preset or its own 'preset:' key) or a run's report.json",
    )
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        dest="overrides",
        help="override one setting, e.g. --set adapt.steps=200 "
        "--set selection.rule=budget (VALUE in YAML syntax)",
    )
    r.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    r.add_argument("--arch", help=f"backbone name: {ARCH_HELP}")
    r.add_argument(
        "--train-data",
        metavar="PATH",
        help="training data (all of it trains when --val-data is given; else the "
        "preset's n_val images are held out of it for every choice)",
    )
    r.add_argument(
        "--val-data",
        metavar="PATH",
        help="a validation set of its own, for every choice (recommended when the "
        "pretrained backbone saw all of --train-data)",
    )
    r.add_argument(
        "--test-data",
        metavar="PATH",
        help="test data, read once after every choice and counted in the test ledger; "
        "without it the run stops at the choices (OUT/validation.json)",
    )
    r.add_argument(
        "--also-test",
        metavar="PATH",
        nargs="+",
        default=None,
        help="further test sets every model is evaluated on after --test-data (e.g. the "
        "paper's lossless images), each counted in the ledger",
    )
    r.add_argument("--weights", metavar="FILE", help="pretrained backbone")
    r.add_argument(
        "--family-weights",
        metavar="FILE",
        nargs="+",
        default=None,
        help="pretrained smaller networks of the same family (e.g. ResNet-32 and -44 "
        "beside a ResNet-56), each finetuned like the full network and reported "
        "beside BlockDrop",
    )
    r.add_argument(
        "--val-baselines",
        action="store_true",
        help="without --test-data: also train the baselines and compare them with BlockDrop on "
        "the validation set, timed on its images (OUT/validation.json)",
    )
    r.add_argument("--out", metavar="DIR")
    r.add_argument(
        "--gamma",
        type=nonneg_float,
        nargs="+",
        default=None,
        help="finetune penalties to sweep (default: the preset's)",
    )
    r.add_argument("--resume", action="store_true", help="reuse the stages already in OUT")
    r.add_argument("--overwrite", action="store_true", help="replace a previous run in OUT")
    add_runtime(r)
    r.set_defaults(func=run)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from blockdrop.recipes.config import apply_overrides, dump_config, load_config
    from blockdrop.recipes.presets import get_preset
    from blockdrop.recipes.reproduce import reproduce

    preset = get_preset(args.preset)
    try:
        if args.config:
            preset = load_config(args.config, base=preset)
        preset = apply_overrides(preset, args.overrides)
    except ValueError as e:  # a bad setting: one line naming it, exit 2
        parser.error(f"{'--config ' + args.config + ': ' if args.config else ''}{e}")
    if args.gamma:
        preset = preset.replace(gammas=tuple(args.gamma))
    if args.print_config:
        print(dump_config(preset), end="")
        return 0
    missing = [
        f"--{n.replace('_', '-')}"
        for n in ("arch", "train_data", "weights", "out")
        if getattr(args, n) is None
    ]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if args.val_baselines and args.test_data:
        parser.error("--val-baselines: only without --test-data (with it the baselines always run)")
    setup_threads(args)
    reproduce(
        preset,
        arch=args.arch,
        train_data=args.train_data,
        test_data=args.test_data,
        val_data=args.val_data,
        also_test=args.also_test,
        weights=args.weights,
        family_weights=args.family_weights,
        val_baselines=args.val_baselines,
        out=args.out,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    return 0
