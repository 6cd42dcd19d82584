"""Figures (matplotlib, PNG, headless): accuracy vs FLOPs, block-usage frequency, and a grid of
images grouped by their policy (the paper's qualitative figure)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["plot_acc_vs_flops", "plot_tradeoff", "plot_block_usage", "plot_policy_grid", "write_eval_figures"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_acc_vs_flops(
    points: Sequence[dict],
    path: str | os.PathLike[str],
    full: dict | None = None,
    title: str = "Accuracy vs FLOPs",
) -> Path:
    """One point per checkpoint: ``points = [{"label", "accuracy", "flops", "flops_std"?}]``
    (accuracy in [0, 1]); ``full`` = the full network's ``{"accuracy", "flops"}`` (a star)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for p in points:
        ax.errorbar(p["flops"], 100 * p["accuracy"], xerr=p.get("flops_std"), fmt="o", capsize=3)
        ax.annotate(
            str(p["label"]),
            (p["flops"], 100 * p["accuracy"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    if len(points) > 1:
        srt = sorted(points, key=lambda p: p["flops"])
        ax.plot([p["flops"] for p in srt], [100 * p["accuracy"] for p in srt], "-", alpha=0.4)
    if full:
        ax.plot(full["flops"], 100 * full["accuracy"], "*", markersize=14, label="full network")
        ax.legend()
    ax.set_xlabel("FLOPs / image")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_tradeoff(
    series: Mapping[str, Sequence[dict]],
    path: str | os.PathLike[str],
    full: dict | None = None,
    title: str = "Accuracy vs FLOPs",
    axes: Sequence[str] = ("flops",),
) -> Path:
    """Several methods on the same axes: ``series = {name: [{"accuracy", "flops",
    "ms_per_image"?, "label"?}]}`` (accuracy in [0, 1]), each drawn as a line through its points
    sorted along x; ``full`` = the full network's point (a star). One panel per entry of ``axes``
    ("ms_per_image": measured time, "flops"), side by side."""
    plt = _plt()
    fig, axs = plt.subplots(1, len(axes), figsize=(6 * len(axes), 4.2), squeeze=False)
    for ax, key in zip(axs[0], axes):
        _draw(ax, series, full, key)
    fig.suptitle(title)
    return _save(fig, path)


_XLABELS = {"flops": "FLOPs / image", "ms_per_image": "measured ms / image (each at its fastest chunk)"}


def _draw(ax: Any, series: Mapping[str, Sequence[dict]], full: dict | None, x: str) -> None:
    for (name, pts), marker in zip(series.items(), "osD^v<>ph"):
        srt = sorted(pts, key=lambda p: p[x])
        ax.plot(
            [p[x] for p in srt], [100 * p["accuracy"] for p in srt], marker=marker, linestyle="-", label=name
        )
        for p in srt:
            if p.get("label"):
                ax.annotate(
                    str(p["label"]),
                    (p[x], 100 * p["accuracy"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
    if full:
        ax.plot(full[x], 100 * full["accuracy"], "*", markersize=14, color="k", label="full network")
    ax.set_xlabel(_XLABELS.get(x, x))
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_block_usage(
    freq: Sequence[float] | Tensor, path: str | os.PathLike[str], title: str = "Block usage"
) -> Path:
    """Bar chart of how often each block ``k`` (``freq [K]`` in [0, 1]) is executed."""
    plt = _plt()
    f = torch.as_tensor(freq, dtype=torch.float32).tolist()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * len(f) + 1), 3))
    ax.bar(range(1, len(f) + 1), f, color="tab:blue")
    ax.set_xlabel("block")
    ax.set_ylabel("fraction of images executing it")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    return _save(fig, path)


def plot_policy_grid(
    images: Tensor,
    policies: Tensor,
    path: str | os.PathLike[str],
    max_groups: int = 8,
    per_group: int = 8,
    labels: Sequence[str] | None = None,
    title: str = "Images grouped by policy",
) -> Path:
    """Rows = the ``max_groups`` most frequent policies, each with up to ``per_group`` of its images.

    images: ``[N,3,H,W]`` in [0, 1] (denormalised); policies: ``[N,K]`` 0/1; labels: optional
    per-image captions (e.g. class names).
    """
    plt = _plt()
    P = policies.to(torch.uint8).cpu()
    uniq, inv, counts = torch.unique(P, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)[:max_groups]
    g = len(order)
    fig, axes = plt.subplots(g, per_group, figsize=(per_group * 1.0 + 2.5, g * 1.1 + 0.6), squeeze=False)
    for r, gi in enumerate(order.tolist()):
        idx = (inv == gi).nonzero().flatten()[:per_group].tolist()
        bits = "".join(str(int(b)) for b in uniq[gi].tolist())
        for c in range(per_group):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(
                    images[idx[c]].detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy(),
                    interpolation="nearest",
                )
                if labels is not None:
                    ax.set_title(str(labels[idx[c]]), fontsize=6)
        axes[r][0].text(
            -0.15,
            0.5,
            f"{bits}\n{int(counts[gi])} imgs, {int(uniq[gi].sum())} blk",
            transform=axes[r][0].transAxes,
            ha="right",
            va="center",
            fontsize=7,
            family="monospace",
        )
    fig.suptitle(title)
    fig.subplots_adjust(left=0.3 if P.shape[1] > 20 else 0.22, wspace=0.05, hspace=0.35)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_eval_figures(
    out: str | os.PathLike[str],
    results: Sequence[tuple[str, Any]],
    data: Any,
    title: str = "Images grouped by policy",
) -> list[Path]:
    """The figures of ``blockdrop eval``: accuracy vs FLOPs (one point per ``(label,
    EvalResult)``), each result's block usage, and the last result's images grouped by policy
    (``data``: the evaluated ``DataInfo``, in the same order). Returns the paths written."""
    from blockdrop.data import denormalize

    out = Path(out)
    paths = []
    pts = [
        {"label": lab, "accuracy": r.accuracy, "flops": r.flops_mean, "flops_std": r.flops_std}
        for lab, r in results
        if r.flops_mean is not None
    ]
    last = results[-1][1]
    full = (
        {"accuracy": last.full_accuracy, "flops": last.full_flops}
        if last.full_accuracy is not None and last.full_flops
        else None
    )
    if pts:
        paths.append(plot_acc_vs_flops(pts, out / "acc_vs_flops.png", full=full))
    for i, (lab, r) in enumerate(results):
        suffix = "" if len(results) == 1 else f"_{i}"
        paths.append(
            plot_block_usage(r.block_freq, out / f"block_usage{suffix}.png", title=f"Block usage ({lab})")
        )
    n = min(len(data.dataset), last.policies.shape[0])
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:512].sort().values
    imgs = torch.stack([data.dataset[int(i)][0] for i in pick])
    names = [data.classes[int(last.labels[i])] for i in pick]
    paths.append(
        plot_policy_grid(
            denormalize(imgs), last.policies[pick], out / "policy_grid.png", labels=names, title=title
        )
    )
    return paths
