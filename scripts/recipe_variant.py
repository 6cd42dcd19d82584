"""Try a variant of a ``blockdrop reproduce`` preset on the validation split only.

    python scripts/recipe_variant.py --preset quick --arch resnet56 \\
        --train-data cifar10-jpeg-train.tar.gz --weights resnet56-4bfd9763.th \\
        --out runs/variant-kd04 --set adapt_distill=0.4 [--set adapt_lr=0.005 ...] [--full]

Runs the preset's own stages (adapt, then each gamma's curriculum and finetune; with ``--full``
also the full network trained alike) on the training split, then evaluates every model on the
validation split held out of it, at every preset threshold, and prints and writes
``OUT/variant.json``. The test set is never read, so settings can be compared here without
spending it. ``--set NAME=VALUE`` overrides a :class:`blockdrop.recipes.presets.Preset` field
(VALUE as JSON, e.g. ``0.4``, ``true``, ``[2, 5]``; anything else as a string).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from blockdrop.training.baselines import BaselinePolicy
from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import atomic_write_text
from blockdrop.errors import BlockDropError
from blockdrop.recipes.presets import Preset, get_preset
from blockdrop.recipes.reproduce import start_run
from blockdrop.recipes.selection import val_points
from blockdrop.recipes.policy_stage import stage_blockdrop
from blockdrop.recipes.stages import evaluate_on, stage_adapt, stage_full, stage_soup


def _override(text: str, names: set[str]) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or name not in names:
        raise SystemExit(f"--set: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}, "
                         f"got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name, tuple(value) if isinstance(value, list) else value


def variant_parser(description: str) -> argparse.ArgumentParser:
    """The options every preset-variant script takes (preset, arch, data, weights, out, --set,
    --full, --resume, --overwrite)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--train-data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--full", action="store_true", help="also train the full network alike")
    ap.add_argument("--resume", action="store_true", help="reuse the finished stages in --out")
    ap.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    return ap


def variant_preset(a: argparse.Namespace) -> Preset:
    """``--preset`` with every ``--set NAME=VALUE`` applied."""
    base = get_preset(a.preset)
    names = {f.name for f in dataclasses.fields(base)}
    return base.with_overrides(**dict(_override(s, names) for s in a.set))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = variant_parser(__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    p = variant_preset(a)
    run, pretrained, _ = start_run(p, a.arch, a.train_data, a.weights, a.out, a.seed, a.device,
                                   progress=False, resume=a.resume, overwrite=a.overwrite)
    val = run.val
    t0 = time.time()
    adapted = stage_adapt(run, pretrained)
    nb = adapted.num_blocks
    res: dict[str, Any] = {"preset": p.name, "overrides": a.set, "seed": a.seed}
    adapted_val = evaluate_on(run, BlockDropNet(BaselinePolicy("full", nb), adapted).eval(), val)
    full = stage_full(run, pretrained) if a.full or p.soup_full else None
    full_val = evaluate_on(run, full, val) if full is not None else None
    backbone = stage_soup(run, adapted, full)      # what BlockDrop executes
    if p.soup_full:
        res["souped_val"] = evaluate_on(run, BlockDropNet(BaselinePolicy("full", nb), backbone).eval(),
                                        val).accuracy
    res["adapted_val"], res["full_val"] = adapted_val.accuracy, full_val.accuracy if full_val else None
    reference = full_val or adapted_val          # the tolerance of the threshold bisection
    res["gammas"] = {}
    for g in p.gammas:
        res["gammas"][str(g)] = []
        for draw in range(p.cl_draws):
            net = stage_blockdrop(run, backbone, g, adapted, draw,
                                  full.backbone if full is not None else None)
            pts = val_points(run, g, net, reference, p.tolerance, max_blocks=p.max_blocks,
                             draw=draw, rule=p.select_rule)
            res["gammas"][str(g)] += [{"draw": draw, "threshold": q.threshold, "accuracy": q.val.accuracy,
                                       "blocks_mean": q.val.blocks_mean} for q in pts]
    res["seconds"] = time.time() - t0
    res["stage_seconds"] = run.seconds
    atomic_write_text(run.paths.out / "variant.json", json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (BlockDropError, ValueError, FileNotFoundError) as e:   # one line naming the input
        raise SystemExit(f"recipe_variant: {e}") from None
