"""The reproduce report as files: ``report.json`` (the numbers, :mod:`blockdrop.recipes.report`),
``report.md`` (a summary table, :func:`summary_markdown`) and the figures (accuracy against
measured time and FLOPs with every baseline on the same axes, block usage, images by policy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from blockdrop.checkpoint import atomic_write_text
from blockdrop.data import DataInfo, denormalize
from blockdrop.evaluation.evaluate import EvalResult
from blockdrop.evaluation.plots import plot_block_usage, plot_policy_grid, plot_tradeoff

__all__ = ["write_report", "summary_markdown"]

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
    lines += _vs_blockdrop(r["results"])
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


def _vs_blockdrop(rows: list[dict[str, Any]]) -> list[str]:
    """Each model minus the chosen BlockDrop model, paired, on test and validation (reports
    written before these existed: none)."""
    pairs = [(row["name"], row["vs_blockdrop"]) for row in rows if "vs_blockdrop" in row]
    if not pairs:
        return []

    def short(d: dict[str, Any] | None) -> str:
        if d is None:
            return "-"
        return f"{100 * d['diff']:+.2f} +- {100 * d['se']:.2f} points (p = {d['p_value']:.2g})"

    head = "Each model minus the chosen BlockDrop model, paired on the same images, test / validation:"
    lines = ["", head, ""]
    return lines + [f"- {name}: {short(vs['test'])} / {short(vs.get('val'))}" for name, vs in pairs]


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
