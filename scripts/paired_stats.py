"""Paired accuracy differences for a finished ``blockdrop reproduce`` run: every model of its
report re-evaluated on the run's test set (and the chosen BlockDrop model and the full network
on its validation split), then each model minus the full network and the chosen BlockDrop model
minus its FirstK / RandomK baselines, on the same images (standard error, 95% interval, exact
McNemar p). Reports written since ``blockdrop.evaluation.stats`` existed hold the BlockDrop - full part.

    python scripts/paired_stats.py runs/quick8 [--train-data T --test-data V] -> runs/quick8/paired.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

import blockdrop
from blockdrop.checkpoint import atomic_write_text
from blockdrop.data import load_dataset, make_loader, split_train_val
from blockdrop.errors import BlockDropError
from blockdrop.evaluation.evaluate import evaluate
from blockdrop.evaluation.stats import paired_difference


def _source(s: str) -> str:
    return s.split(" (in memory)")[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a reproduce output folder (holds report.json)")
    ap.add_argument("--train-data", help="default: the report's")
    ap.add_argument("--test-data", help="default: the report's")
    ap.add_argument("--batch-size", type=int, default=500)
    a = ap.parse_args(argv)
    rep_path = a.run / "report.json"
    if not rep_path.is_file():
        print(f"error: run: {a.run} holds no report.json", file=sys.stderr)
        return 2
    rep = json.loads(rep_path.read_text())
    test = load_dataset(a.test_data or _source(rep["test_data"]), "test", seed=rep["seed"])
    train = load_dataset(a.train_data or _source(rep["train_data"]), "train", seed=rep["seed"])
    _, val = split_train_val(train, rep["val"]["images"], seed=rep["seed"])

    def correct(ck: str, data) -> torch.Tensor:
        res = evaluate(
            blockdrop.load(ck),
            make_loader(data.dataset, a.batch_size, train=False),
            full=False,
            flops=False,
            progress=False,
        )
        assert res.correct is not None  # evaluate fills it
        return res.correct

    rows = rep["results"]
    test_c = [correct(r["checkpoint"], test) for r in rows]
    for r, c in zip(rows, test_c):  # the same models as the report: the same accuracies
        if abs(float(c.float().mean()) - r["accuracy"]) > 1e-6:
            print(
                f"error: {r['checkpoint']}: {float(c.float().mean()):.4f} now, the report says "
                f"{r['accuracy']:.4f}",
                file=sys.stderr,
            )
            return 1
    chosen = next(i for i, r in enumerate(rows) if r.get("chosen"))
    out: dict[str, Any] = {
        "run": str(a.run),
        "test_images": int(test_c[0].numel()),
        "vs_full": [],
        "vs_baselines": [],
    }
    for i, r in enumerate(rows[1:], 1):
        out["vs_full"].append(
            {
                **{k: r.get(k) for k in ("method", "gamma", "threshold", "stage", "blocks_mean", "accuracy")},
                "test": paired_difference(test_c[i], test_c[0]).to_dict(),
            }
        )
    key = lambda r: (r.get("gamma"), r.get("threshold"), r.get("stage"))  # noqa: E731
    for i, r in enumerate(rows):  # FirstK / RandomK at the chosen point's block count
        if r["method"] in ("first_k", "random_k") and key(r) == key(rows[chosen]):
            out["vs_baselines"].append(
                {
                    "baseline": r["method"],
                    "blocks_mean": r["blocks_mean"],
                    "test": paired_difference(test_c[chosen], test_c[i]).to_dict(),
                }
            )
    val_c = [correct(rows[i]["checkpoint"], val) for i in (chosen, 0)]
    for c, want in zip(val_c, (rows[chosen]["val_accuracy"], rep["val"]["full_accuracy"])):
        if abs(float(c.float().mean()) - want) > 1e-6:  # the same validation split as the run
            print(
                f"error: validation split: {float(c.float().mean()):.4f} now, the report says "
                f"{want:.4f} -- is --train-data the run's?",
                file=sys.stderr,
            )
            return 1
    out["val"] = paired_difference(*val_c).to_dict()
    atomic_write_text(a.run / "paired.json", json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BlockDropError, ValueError, FileNotFoundError) as e:  # one line naming the input
        raise SystemExit(f"paired_stats: {e}") from None
