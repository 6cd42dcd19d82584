"""Evaluation of a :class:`~blockdrop.blockdrop_net.BlockDropNet`: accuracy, blocks, FLOPs,
distinct policies, and measured throughput of the dynamic path vs the full network."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from blockdrop.evaluation.accounting import flops as count_flops
from blockdrop.evaluation.timing import interleaved
from blockdrop.runtime import amp_autocast

if TYPE_CHECKING:
    from blockdrop.blockdrop_net import BlockDropNet

__all__ = ["EvalResult", "evaluate", "measure_throughput", "format_table", "format_threshold_table"]


@dataclass
class EvalResult:
    """What :func:`evaluate` measures (floats in [0, 1] for accuracies)."""

    n: int
    accuracy: float
    blocks_mean: float
    blocks_std: float
    num_blocks: int
    num_policies: int
    block_freq: list[float]
    flops_mean: float | None = None
    flops_std: float | None = None
    full_accuracy: float | None = None
    full_flops: float | None = None
    throughput: dict[str, float] | None = None
    policies: Tensor | None = field(default=None, repr=False)  # uint8 [N, K]
    labels: Tensor | None = field(default=None, repr=False)  # int64 [N]
    correct: Tensor | None = field(default=None, repr=False)  # bool [N]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the per-image tensors)."""
        d = asdict(self)
        for k in ("policies", "labels", "correct"):
            d.pop(k)
        return d


@torch.inference_mode()
def evaluate(
    net: BlockDropNet,
    loader: DataLoader | Iterable[tuple[Tensor, Tensor]],
    device: torch.device | str = "cpu",
    amp: str | bool = "off",
    full: bool = True,
    flops: bool = True,
    progress: bool = True,
    strategy: str | None = None,
    channels_last: bool = False,
) -> EvalResult:
    """Evaluate ``net`` (a BlockDropNet, put in eval mode: thresholded policies, or in capacity
    mode the top-``C_k`` images of each batch per block).

    loader yields ``(x [B,3,H,W], y [B])``.  ``full`` also runs the backbone with every block (the
    "full network" column); ``flops`` counts per-image FLOPs with the engine's accounting, policy
    network included.  The training mode of ``net`` is restored afterwards.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    was = net.training
    net.eval()
    pols, labels, correct, fcorrect = [], [], [], []
    size: tuple[int, int, int] | None = None
    try:
        for x, y_host in tqdm(loader, desc="eval", leave=False, disable=not progress):
            x, y = x.to(device), y_host.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            size = tuple(x.shape[1:])
            with amp_autocast(device, amp):
                if getattr(net, "mode", "threshold") == "capacity":  # the top-C_k path itself
                    logits, policy = net(x)
                else:
                    policy = net.policy(x)
                    logits = net.run_backbone(x, policy, strategy)
                if full:
                    fcorrect.append(net.backbone(x).argmax(1) == y)
            # kept on the device: one copy to the host after the loop, not three per batch
            pols.append(policy.to(torch.uint8))
            labels.append(y_host)
            correct.append(logits.argmax(1) == y)
    finally:
        net.train(was)
    if not pols:
        raise ValueError("evaluation data is empty")
    P = torch.cat(pols).cpu()
    blocks = P.float().sum(1)
    c = torch.cat(correct).cpu()
    res = EvalResult(
        n=int(P.shape[0]),
        accuracy=float(c.float().mean()),
        blocks_mean=float(blocks.mean()),
        blocks_std=float(blocks.std(unbiased=False)),
        num_blocks=int(P.shape[1]),
        num_policies=int(torch.unique(P, dim=0).shape[0]),
        block_freq=P.float().mean(0).tolist(),
        policies=P,
        labels=torch.cat(labels).cpu(),
        correct=c,
    )
    if full:
        res.full_accuracy = float(torch.cat(fcorrect).float().mean())  # one sync
    if flops:
        uniq, inv = torch.unique(P, dim=0, return_inverse=True)
        per_policy = count_flops(net.backbone, uniq, net.policy_net, input_size=size)
        per_image = per_policy[inv]
        res.flops_mean = float(per_image.mean())
        res.flops_std = float(per_image.std(unbiased=False))
        ones = torch.ones(1, P.shape[1], dtype=torch.uint8)
        res.full_flops = float(count_flops(net.backbone, ones, None, input_size=size)[0])
    return res


@torch.inference_mode()
def measure_throughput(
    net: BlockDropNet,
    batches: Sequence[Tensor],
    device: torch.device | str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    amp: str | bool = "off",
    strategy: str | None = None,
    plain_chunks: Sequence[int] = (),
) -> dict[str, float]:
    """Images/second of the full backbone vs BlockDrop (policy net + dynamic path) on the same
    ``batches`` (each ``[B,3,H,W]``), interleaved, median over ``repeats`` passes.

    Returns ``{"full_ips", "blockdrop_ips", "speedup", "backbone_only_ips", "backbone_speedup",
    "batch_size"}``; ``backbone_only`` times the dynamic backbone with precomputed policies.

    ``plain_chunks`` (sizes below ``B``): the full backbone is also timed running each batch in
    chunks of each size, in the same rounds, and ``"best_plain_ips"``, ``"best_plain_chunk"`` (the
    fastest size, ``B`` included) and ``"speedup_vs_best_plain"`` are added; BlockDrop is timed in
    the same chunks too, giving ``"best_blockdrop_chunk"`` and ``"speedup_best_vs_best"`` (each at
    its own fastest size). On CPUs a small
    network can run faster per image in smaller chunks (its activations stay in cache), which
    BlockDrop's sub-batches get for free: this is the fair plain baseline.
    """
    chunks = sorted({int(c) for c in plain_chunks})
    if any(c < 1 for c in chunks):
        raise ValueError(f"plain_chunks: expected positive sizes, got {list(plain_chunks)}")
    device = torch.device(device)
    was = net.training
    net.eval()
    xs = [b.to(device) for b in batches]
    pols = []
    with amp_autocast(device, amp):
        for x in xs:
            pols.append(net.policy(x))
    n_img = sum(x.shape[0] for x in xs)

    def chunked(fn: Callable[[Tensor], Any], c: int) -> Callable[[], None]:
        """``fn`` over every batch, in pieces of at most ``c`` images."""

        def run() -> None:
            with amp_autocast(device, amp):
                for x in xs:
                    for part in x.split(c):
                        fn(part)

        return run

    def run_bb() -> None:
        with amp_autocast(device, amp):
            for x, p in zip(xs, pols):
                net.run_backbone(x, p, strategy)

    batch = int(xs[0].shape[0])
    whole = max(int(x.shape[0]) for x in xs)  # one piece per batch
    small = [c for c in chunks if c < batch]
    fns: dict[str, Callable[[], None]] = {
        "full": chunked(net.backbone, whole),
        "blockdrop": chunked(net, whole),
        "backbone_only": run_bb,
    }
    for c in small:
        fns[f"full_chunk{c}"] = chunked(net.backbone, c)
        fns[f"blockdrop_chunk{c}"] = chunked(net, c)
    try:
        t = interleaved(fns, rounds=max(1, repeats), warmup=warmup, device=device)
    finally:
        net.train(was)
    return _rates({k: v.median for k, v in t.items()}, n_img, batch, repeats, small, bool(chunks))


def _rates(
    med: dict[str, float], n_img: int, batch: int, repeats: int, small: list[int], chunked: bool
) -> dict[str, float]:
    """:func:`measure_throughput`'s result from the median seconds of each timed function."""
    out = {
        "full_ips": n_img / med["full"],
        "blockdrop_ips": n_img / med["blockdrop"],
        "backbone_only_ips": n_img / med["backbone_only"],
        "speedup": med["full"] / med["blockdrop"],
        "backbone_speedup": med["full"] / med["backbone_only"],
        "batch_size": float(batch),
        "repeats": float(repeats),
    }
    if chunked:
        plain = {batch: med["full"], **{c: med[f"full_chunk{c}"] for c in small}}
        bd = {batch: med["blockdrop"], **{c: med[f"blockdrop_chunk{c}"] for c in small}}
        bp, bb = min(plain, key=lambda c: plain[c]), min(bd, key=lambda c: bd[c])
        out.update(
            {
                "best_plain_ips": n_img / plain[bp],
                "best_plain_chunk": float(bp),
                "speedup_vs_best_plain": plain[bp] / med["blockdrop"],
                "best_blockdrop_chunk": float(bb),
                "speedup_best_vs_best": plain[bp] / bd[bb],
            }
        )
    return out


def format_table(res: EvalResult, title: str = "") -> str:
    """Side-by-side text table: full network vs BlockDrop."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    def fl(v: float | None, s: float | None = None) -> str:
        if v is None:
            return "-"
        return f"{v:.3e}" + (f" +- {s:.2e}" if s is not None else "")

    tp = res.throughput
    rows = [
        ("accuracy", pct(res.full_accuracy), pct(res.accuracy)),
        ("blocks used", f"{res.num_blocks}", f"{res.blocks_mean:.2f} +- {res.blocks_std:.2f}"),
        ("FLOPs / image", fl(res.full_flops), fl(res.flops_mean, res.flops_std)),
        ("distinct policies", "1", f"{res.num_policies}"),
    ]
    if res.full_flops and res.flops_mean:
        rows.append(("ideal speedup (FLOPs)", "1.00x", f"{res.full_flops / res.flops_mean:.2f}x"))
    if tp:
        rows.append(("throughput (img/s)", f"{tp['full_ips']:.0f}", f"{tp['blockdrop_ips']:.0f}"))
        rows.append(("measured speedup", "1.00x", f"{tp['speedup']:.2f}x"))
        rows.append(("  backbone only", "1.00x", f"{tp['backbone_speedup']:.2f}x"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", "full network", "")])
    w2 = max(len(r[2]) for r in rows + [("", "", "BlockDrop")])
    line = f"+-{'-' * w0}-+-{'-' * w1}-+-{'-' * w2}-+"
    out = [title] if title else []
    out += [line, f"| {'':{w0}} | {'full network':>{w1}} | {'BlockDrop':>{w2}} |", line]
    out += [f"| {a:{w0}} | {b:>{w1}} | {c:>{w2}} |" for a, b, c in rows]
    out.append(line)
    out.append(
        f"({res.n} images"
        + (
            f"; throughput at batch {int(tp['batch_size'])}, median of "
            f"{int(tp['repeats'])} interleaved passes"
            if tp
            else ""
        )
        + ")"
    )
    return "\n".join(out)


def format_threshold_table(
    results: Sequence[tuple[str, EvalResult]], thresholds: Sequence[float], title: str = ""
) -> str:
    """One checkpoint at several keep thresholds: a markdown table of threshold, accuracy,
    blocks, FLOPs, ideal and measured speedup (``results`` in the order of ``thresholds``)."""
    lines = [title] if title else []
    lines += [
        "| threshold | accuracy | blocks | FLOPs / image | ideal speedup | measured speedup |",
        "|---|---|---|---|---|---|",
    ]
    for t, (_, r) in zip(thresholds, results):
        ideal = f"{r.full_flops / r.flops_mean:.2f}x" if r.full_flops and r.flops_mean else "-"
        meas = f"{r.throughput['speedup']:.2f}x" if r.throughput else "-"
        fl = f"{r.flops_mean:.3e}" if r.flops_mean else "-"
        lines.append(
            f"| {t:g} | {100 * r.accuracy:.2f}% | {r.blocks_mean:.2f} +- {r.blocks_std:.2f} "
            f"| {fl} | {ideal} | {meas} |"
        )
    full = results[0][1].full_accuracy if results else None
    if full is not None:
        lines.append(f"(full network: {100 * full:.2f}%, {results[0][1].num_blocks} blocks)")
    return "\n".join(lines)
