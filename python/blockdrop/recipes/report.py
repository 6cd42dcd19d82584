"""The reproduce report: ``report.json`` (the numbers), ``report.md`` (a summary table) and the
figures (accuracy vs FLOPs with the baselines on the same axes, block usage, images by policy)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blockdrop.checkpoint import atomic_write_text
from blockdrop.data import DataInfo, denormalize
from blockdrop.evaluation.evaluate import EvalResult
from blockdrop.evaluation.plots import plot_block_usage, plot_policy_grid, plot_tradeoff
from blockdrop.evaluation.stats import accuracy_se, paired_difference
from blockdrop.recipes.config import preset_to_dict
from blockdrop.recipes.selection import Point, describe
from blockdrop.recipes.stages import Run
from blockdrop.recipes.steps import Baseline, Candidates, TestResults, commit, point_name

__all__ = ["REPORT_KEYS", "ROW_KEYS", "Report", "build_report", "write_report", "summary_markdown"]

#: Keys every report.json holds (tests check them).
REPORT_KEYS = (
    "checkpoint",
    "accuracy",
    "blocks_mean",
    "blocks_std",
    "flops_mean",
    "full_accuracy",
    "accuracy_se",
    "full_accuracy_se",
    "vs_full",
    "minutes",
    "minutes_total",
    "minutes_blockdrop",
    "sessions",
    "measured_speedup_best_vs_best",
    "ms_per_image",
    "timing",
    "test_set",
    "config",
    "preset",
    "seed",
    "commit",
    "results",
)
#: Keys every row of ``results`` holds: one row per model, BlockDrop and every baseline.
ROW_KEYS = (
    "method",
    "name",
    "accuracy",
    "blocks_mean",
    "flops_mean",
    "ms_per_image",
    "best_chunk",
    "measured_speedup_best_vs_best",
    "checkpoint",
)

_NAMES = {
    "full": "full network",
    "blockdrop": "BlockDrop",
    "first_k": "FirstK",
    "random_k": "RandomK",
    "static_k": "StaticK",
    "family": "smaller network",
}


def summary_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown page: settings line, then one row per model."""
    r = report
    lines = [
        f"# blockdrop reproduce --preset {r['preset']} ({r.get('arch', '')})",
        "",
        f"{r['test_images']} test images (`{r['test_data']}`, use {r['test_set']['uses']} of "
        f"this test set on this machine); settings chosen on {r['val']['images']} validation "
        f"images (`{r['val_data']}`: {r['val']['selection']}); trained on `{r['train_data']}`; "
        f"seed {r['seed']}, commit {r['commit']}; {r['minutes_blockdrop']:.1f} minutes to "
        f"BlockDrop's model, {r['minutes_total']:.1f} in all"
        f"{'' if r.get('sessions', 1) == 1 else ' over ' + str(r['sessions']) + ' sessions (resumed)'}"
        f", on {r['device']} "
        f"({r['threads']} threads).",
        "",
        f"**Result**: BlockDrop (gamma {r['gamma']:g}"
        f"{', curriculum only' if _cl_only(r, r.get('stage')) else ''}) "
        f"{100 * r['accuracy']:.2f}% with "
        f"{r['blocks_mean']:.2f} +- {r['blocks_std']:.2f} of {r['num_blocks']} blocks "
        f"({100 * r['blocks_mean'] / r['num_blocks']:.0f}%), {r['flops_mean']:.3e} FLOPs/image "
        f"(policy network included); the full network finetuned alike: "
        f"{100 * r['full_accuracy']:.2f}%. Measured speedup: "
        f"{r['measured_speedup_best_vs_best']:.2f}x (each network at its fastest chunk of "
        f"{r['speed_batch']} test images, one thread: BlockDrop {r['best_blockdrop_chunk']:.0f}, "
        f"the full network {r['best_plain_chunk']:.0f}; {r['measured_speedup']:.2f}x both at "
        f"{r['speed_batch']}).",
        "",
        *_uncertainty(r),
        "| model | gamma | threshold | val acc | test acc | blocks | FLOPs / image | ms / image "
        "(chunk) | speedup | policies |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["results"]:
        g = row.get("gamma")
        va, t = row.get("val_accuracy"), row.get("threshold")
        cl_only = _cl_only(r, row.get("stage"))
        name = (
            _NAMES.get(row["method"], row["method"])
            + (", curriculum only" if cl_only else "")
            + (f", draw {row['draw']}" if row.get("draw") else "")
            + (f" ({row['name'].split('(')[-1].rstrip(')')})" if row["method"] == "family" else "")
            + (" (chosen)" if row.get("chosen") else "")
        )
        lines.append(
            f"| {name} | {'' if g is None else f'{g:g}'} | {'' if t is None else f'{t:g}'} | "
            f"{'' if va is None else f'{100 * va:.2f}%'} | {100 * row['accuracy']:.2f}% | "
            f"{row['blocks_mean']:.2f} +- {row['blocks_std']:.2f} | {row['flops_mean']:.3e} | "
            f"{row['ms_per_image']:.3f} ({row['best_chunk']}) | "
            f"{row['measured_speedup_best_vs_best']:.2f}x | {row['num_policies']} |"
        )
    for a in r.get("also_test", []):
        lines += [
            "",
            f"Also on `{a['data']}` ({a['images']} images, use {a['test_set']['uses']}): "
            + ", ".join(f"{row['name']} {100 * row['accuracy']:.2f}%" for row in a["results"])
            + f"; BlockDrop - full network {_pts(a['vs_full'])}.",
        ]
    lines += [
        "",
        "Minutes per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_minutes"].items()),
        "",
    ]
    return "\n".join(lines)


def _cl_only(report: dict[str, Any], stage: str | None) -> bool:
    """A curriculum model in a run that also finetunes (its curriculum-only candidate)."""
    return stage == "curriculum" and report["config"].get("finetune") is not None


def _uncertainty(r: dict[str, Any]) -> list[str]:
    """The paired BlockDrop - full differences (reports written before they existed: none)."""
    vs = r.get("vs_full")
    if not vs:
        return []
    line = [
        f"BlockDrop - full network, on the same images: {_pts(vs['test'])} on test, "
        f"{_pts(vs['val'])} on validation (paired standard errors; accuracies +- "
        f"{100 * r['accuracy_se']:.2f} / {100 * r['full_accuracy_se']:.2f} points alone)."
    ]
    return line + [""]


def _pts(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    return (
        f"{100 * d['diff']:+.2f} +- {100 * d['se']:.2f} points (95% CI {100 * lo:+.2f} .. "
        f"{100 * hi:+.2f}, McNemar p = {d['p_value']:.2g}, {d['n']} images)"
    )


def write_report(
    out: Path, report: dict[str, Any], final_net: Any, final: EvalResult, test: DataInfo
) -> list[Path]:
    """Write ``report.json``, ``report.md``, ``tradeoff.png``, ``block_usage.png`` and
    ``policy_grid.png`` into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / "report.md", summary_markdown(report))
    series: dict[str, list[dict[str, float]]] = {}
    full = None
    for row in report["results"]:
        pt = {
            "accuracy": row["accuracy"],
            "flops": row["flops_mean"],
            "ms_per_image": row["ms_per_image"],
            "label": (
                f"g={row['gamma']:g}" + (" cl" if _cl_only(report, row.get("stage")) else "")
                if row["method"] == "blockdrop"
                else row["name"].split("(")[-1].rstrip(")")
                if row["method"] == "family"
                else ""
            ),
        }
        if row["method"] == "full":
            full = pt
        else:
            series.setdefault(_NAMES[row["method"]], []).append(pt)
    paths = [
        out / "report.json",
        out / "report.md",
        plot_tradeoff(
            series,
            out / "tradeoff.png",
            full=full,
            axes=("ms_per_image", "flops"),
            title=f"{report.get('arch', '')}: accuracy vs measured time and FLOPs (test set)",
        ),
    ]
    paths.append(
        plot_block_usage(
            final.block_freq,
            out / "block_usage.png",
            title=f"Block usage (BlockDrop, gamma {report['gamma']:g})",
        )
    )
    assert final.policies is not None and final.labels is not None
    n = min(len(test.dataset), final.policies.shape[0])
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:512].sort().values
    imgs = torch.stack([test.dataset[int(i)][0] for i in pick])
    names = [test.classes[int(final.labels[i])] for i in pick]
    paths.append(
        plot_policy_grid(
            denormalize(imgs),
            final.policies[pick],
            out / "policy_grid.png",
            labels=names,
            title="Test images grouped by policy",
        )
    )
    return paths


@dataclass
class Report:
    """A run's report: the chosen model on test, every model's row, the validation choices and
    how the run was made. :meth:`to_dict` is ``report.json`` (:data:`REPORT_KEYS` and more)."""

    chosen: dict[str, Any]
    results: list[dict[str, Any]]
    val: dict[str, Any]
    speed: dict[str, Any]
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.chosen, **self.speed, **self.provenance, "val": self.val, "results": self.results}


def _row(method: str, res: EvalResult, **extra: Any) -> dict[str, Any]:
    return {
        "method": method,
        "accuracy": res.accuracy,
        "blocks_mean": res.blocks_mean,
        "blocks_std": res.blocks_std,
        "flops_mean": res.flops_mean,
        "flops_std": res.flops_std,
        "num_policies": res.num_policies,
        **extra,
    }


def _se(r: EvalResult) -> float:
    assert r.correct is not None  # evaluate always records per-image correctness
    return accuracy_se(r.correct)[1]


def _paired(a: EvalResult, b: EvalResult) -> dict[str, Any]:
    assert a.correct is not None and b.correct is not None
    return paired_difference(a.correct, b.correct).to_dict()


def _results(
    run: Run,
    cands: Candidates,
    shown: list[Point],
    chosen: Point,
    final_path: Path,
    baselines: list[Baseline],
    t: TestResults,
) -> list[dict[str, Any]]:
    full_speed = t.speed["full"]

    def timing(name: str) -> dict[str, Any]:
        s = t.speed[name]
        return {
            "ms_per_image": s.ms_per_image,
            "best_chunk": s.best_chunk,
            "ms_by_chunk": {str(c): v for c, v in s.ms_by_chunk.items()},
            "measured_speedup_best_vs_best": full_speed.ms_per_image / s.ms_per_image,
        }

    assert cands.full_val is not None
    rows = [
        _row(
            "full",
            t.full,
            name="full",
            val_accuracy=cands.full_val.accuracy,
            checkpoint=str(run.paths.full()),
            **timing("full"),
        )
    ]
    for q in shown:
        rows.append(
            _row(
                "blockdrop",
                t.points[id(q)],
                name=point_name(q),
                gamma=q.gamma,
                threshold=q.threshold,
                stage=q.stage,
                draw=q.draw,
                chosen=q is chosen,
                val_accuracy=q.val.accuracy,
                val_blocks=q.val.blocks_mean,
                checkpoint=str(final_path if q is chosen else q.checkpoint),
                **timing(point_name(q)),
            )
        )
    for b, res in zip(baselines, t.baselines):
        extra: dict[str, Any] = {"k": b.net.policy_net.k} if b.kind != "family" else {}
        if b.point is not None:
            extra.update(gamma=b.point.gamma, threshold=b.point.threshold, stage=b.point.stage)
        if b.dropped is not None:
            extra["dropped"] = list(b.dropped)
        rows.append(_row(b.kind, res, name=b.name, checkpoint=str(b.path), **extra, **timing(b.name)))
    return rows


def build_report(
    run: Run,
    cands: Candidates,
    shown: list[Point],
    chosen: Point,
    final_path: Path,
    baselines: list[Baseline],
    t: TestResults,
    test: DataInfo,
    arch: str,
    weights: Any,
    train_source: str,
    minutes: float,
    minutes_blockdrop: float,
) -> Report:
    """Step 6: the report of a finished run (``minutes``: the whole run; ``minutes_blockdrop``:
    until BlockDrop's model was chosen, everything it depends on included; both wall time, added
    over ``run.sessions`` sessions for a resumed run, see :meth:`Run.elapsed`)."""
    res, p, cfg = t.points[id(chosen)], run.preset, run.preset.selection
    assert cands.full_val is not None
    chosen_d = {
        "checkpoint": str(final_path),
        "accuracy": res.accuracy,
        "blocks_mean": res.blocks_mean,
        "blocks_std": res.blocks_std,
        "flops_mean": res.flops_mean,
        "flops_std": res.flops_std,
        "full_flops": t.full.flops_mean,
        "num_blocks": cands.adapted.num_blocks,
        "num_policies": res.num_policies,
        "full_accuracy": t.full.accuracy,
        # BlockDrop - full on the same images (paired), on test and on the validation split
        "accuracy_se": _se(res),
        "full_accuracy_se": _se(t.full),
        "vs_full": {"test": _paired(res, t.full), "val": _paired(chosen.val, cands.full_val)},
        "gamma": chosen.gamma,
        "threshold": chosen.threshold,
        "stage": chosen.stage,
        "draw": chosen.draw,
    }
    full_s, bd_s = t.speed["full"], t.speed[point_name(chosen)]
    whole = max(full_s.ms_by_chunk)  # the batch itself, unchunked
    speed = {
        "measured_speedup": full_s.ms_by_chunk[whole] / bd_s.ms_by_chunk[whole],
        "speed_batch": whole,
        # the plain network at its fastest chunk size of the batch (a fair CPU baseline)
        "measured_speedup_vs_best_plain": full_s.ms_per_image / bd_s.ms_by_chunk[whole],
        "best_plain_chunk": full_s.best_chunk,
        "measured_speedup_best_vs_best": full_s.ms_per_image / bd_s.ms_per_image,
        "best_blockdrop_chunk": bd_s.best_chunk,
        "ms_per_image": bd_s.ms_per_image,
        "timing": {
            "threads": 1,
            "batch": whole,
            "repeats": p.evaluation.speed_repeats,
            "chunks": sorted(full_s.ms_by_chunk),
            "method": "interleaved rounds, "
            "medians, each model at its fastest chunk (blockdrop.evaluation.speed)",
        },
    }
    val = {
        "images": len(run.val.dataset),
        "full_accuracy": cands.full_val.accuracy,
        "selection": describe(cfg),
        "select_rule": cfg.rule,
        "tolerance": cfg.tolerance if cfg.rule == "tolerance" else None,  # unused by "budget"
        "max_blocks": cfg.max_blocks,
        "points": [
            {
                "gamma": q.gamma,
                "threshold": q.threshold,
                "stage": q.stage,
                "draw": q.draw,
                "accuracy": q.val.accuracy,
                "blocks_mean": q.val.blocks_mean,
                "flops_mean": q.val.flops_mean,
            }
            for q in cands.points
        ],
    }
    provenance = {
        "minutes": minutes,
        "minutes_total": minutes,
        "minutes_blockdrop": minutes_blockdrop,
        "sessions": run.sessions,
        "stage_minutes": {k: v / 60 for k, v in run.seconds.items()},
        "val_data": run.val.source,
        "preset": p.name,
        "config": preset_to_dict(p),
        "seed": run.seed,
        "commit": commit(),
        "arch": arch,
        "train_data": train_source,
        "test_data": test.source,
        "weights": str(weights),
        "test_images": res.n,
        "device": str(run.device),
        "threads": torch.get_num_threads(),
    }
    rows = _results(run, cands, shown, chosen, final_path, baselines, t)
    return Report(chosen_d, rows, val, speed, provenance)
