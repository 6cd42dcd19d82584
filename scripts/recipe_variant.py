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
from pathlib import Path
from typing import Any

import torch

from blockdrop.baselines import BaselinePolicy
from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import load_backbone
from blockdrop.data import load_dataset, split_train_val
from blockdrop.errors import BlockDropError
from blockdrop.recipes.presets import get_preset
from blockdrop.recipes.selection import val_points
from blockdrop.recipes.stages import Run, RunPaths, evaluate_on, stage_adapt, stage_blockdrop, stage_full


def _override(text: str, fields: dict[str, Any]) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or name not in fields:
        raise SystemExit(f"--set: expected NAME=VALUE with NAME one of {', '.join(sorted(fields))}, "
                         f"got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name, tuple(value) if isinstance(value, list) else value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--train-data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--full", action="store_true", help="also train the full network alike")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="reuse the finished stages in --out")
    ap.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    a = ap.parse_args(argv)
    base = get_preset(a.preset)
    fields = {f.name: f for f in dataclasses.fields(base)}
    p = base.with_overrides(**dict(_override(s, fields) for s in a.set))
    data = load_dataset(a.train_data, "train", seed=a.seed)
    train, val = split_train_val(data, p.n_val, seed=a.seed)
    pretrained, spec = load_backbone(a.weights, a.arch, train.num_classes)
    pretrained.eval()
    paths = RunPaths(Path(a.out))
    paths.claim(a.resume, a.overwrite)
    meta = {"backbone_spec": spec, "classes": train.classes, "image_size": train.image_size,
            "data": train.source, "preset": p.name}
    run = Run(p, paths, torch.device("cpu"), a.seed, False, a.resume, train, val, meta, print)
    t0 = time.time()
    adapted = stage_adapt(run, pretrained)
    nb = adapted.num_blocks
    res: dict[str, Any] = {"preset": p.name, "overrides": a.set, "seed": a.seed}
    adapted_val = evaluate_on(run, BlockDropNet(BaselinePolicy("full", nb), adapted).eval(), val)
    full_val = evaluate_on(run, stage_full(run, pretrained), val) if a.full else None
    res["adapted_val"], res["full_val"] = adapted_val.accuracy, full_val.accuracy if full_val else None
    reference = full_val or adapted_val          # the tolerance of the threshold bisection
    res["gammas"] = {}
    for g in p.gammas:
        net = stage_blockdrop(run, adapted, g)
        pts = val_points(run, g, net, reference, p.tolerance)
        res["gammas"][str(g)] = [{"threshold": q.threshold, "accuracy": q.val.accuracy,
                                  "blocks_mean": q.val.blocks_mean} for q in pts]
    res["seconds"] = time.time() - t0
    res["stage_seconds"] = run.seconds
    (paths.out / "variant.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (BlockDropError, ValueError, FileNotFoundError) as e:   # one line naming the input
        raise SystemExit(f"recipe_variant: {e}") from None
