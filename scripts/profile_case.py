"""Where the time of one benchmark case goes (used for the "targets missed" notes in
benchmarks/README.md).

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 \
        python scripts/profile_case.py --model R110 --batch 16 --mix iid:0.31

Prints, from interleaved rounds (medians):
  * full, auto, torch_gather times and their realized/ideal;
  * the *compute floor* of the policy: the same residual branches run on pre-sliced inputs of each
    block's executing sub-batch size (no gather, no merge, no plan) + stem + head. floor/full is the
    best any per-block gather can do on this machine; ideal assumes a conv costs the same per image
    at every batch size, which the floor measures the departure from;
  * a torch.profiler breakdown of ``auto`` by operator family (convolution, batch norm, blockdrop
    ops, elementwise, other).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import env  # noqa: E402
from blockdrop.evaluation.timing import interleaved  # noqa: E402
from cases import Case, Prepared  # noqa: E402


def floor_fn(prep: Prepared):
    """Residual branches on ready-made sub-batches of the plan's sizes (no data movement)."""
    model, x, pol = prep.model, prep.x, prep.policy.cpu()
    n = x.shape[0]
    with torch.inference_mode():
        h = model.stem(x)
        inputs = []
        for k, block in enumerate(model.blocks):
            c = int(pol[:, k].sum())
            inputs.append(h[:c].clone() if 0 < c else None)
            h = block.full(h)  # shapes of the next block's input
        h_head = h.clone()
    blocks = model.blocks

    def fn():
        with torch.inference_mode():
            model.stem(x)
            for block, hin in zip(blocks, inputs):
                if hin is not None:
                    block.residual(hin)
            model.head(h_head)

    return fn, n


def family(name: str) -> str:
    name = name.lower()
    if "conv" in name:
        return "convolution"
    if "batch_norm" in name:
        return "batch norm"
    if name.startswith("blockdrop::"):
        return "blockdrop ops (" + name.split("::")[1] + ")"
    if any(k in name for k in ("index_select", "index_copy", "index_add", "nonzero", "split")):
        return "index ops"
    if any(k in name for k in ("relu", "add", "where", "mul", "pad", "slice", "copy_", "clone")):
        return "elementwise / copies"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="R110")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mix", default="iid:0.31")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    env.setup_measurement(a.threads)
    case = Case(a.model, a.batch, a.mix)
    prep = Prepared(case)
    fns = {s: prep.fn(s) for s in ("full", "auto", "torch_gather")}
    floor, _ = floor_fn(prep)
    fns["floor"] = floor
    t = interleaved(fns, rounds=a.reps, warmup=1, clock=env.clock("cpu"), rotate=True)
    order = list(fns)
    med = {k: v.median for k, v in t.items()}
    print(
        f"{case.key}: ideal {prep.ideal:.2f}x, auto chose {prep.auto_choice}, "
        f"{prep.groups} distinct policies, "
        f"threads {torch.get_num_threads()}"
    )
    for k in order:
        sp = med["full"] / med[k]
        print(
            f"  {k:13} {med[k] * 1e3:9.1f} ms  speedup {sp:5.2f}x  realized/ideal {sp / prep.ideal:5.2f}  "
            f"spread {t[k].spread:.2f}"
        )
    print(
        f"  compute floor / ideal time = {med['floor'] / (med['full'] / prep.ideal):.2f} "
        f"(per-image cost of the sub-batch convs vs the full batch); "
        f"auto / floor = {med['auto'] / med['floor']:.2f}; "
        f"torch_gather / floor = {med['torch_gather'] / med['floor']:.2f}"
    )
    from torch.profiler import ProfilerActivity, profile

    for strategy in ("auto", "full"):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fns[strategy]()
        fam: defaultdict[str, float] = defaultdict(float)
        total = 0.0
        for e in prof.key_averages():
            if e.key.startswith("aten::") or e.key.startswith("blockdrop::"):
                fam[family(e.key)] += e.self_cpu_time_total
                total += e.self_cpu_time_total
        print(f"  profiler, {strategy} (self CPU time by family, 3 calls):")
        for k, v in sorted(fam.items(), key=lambda kv: -kv[1]):
            print(f"    {k:36} {v / 3e3:9.1f} ms/call  {100 * v / total:5.1f}%")


if __name__ == "__main__":
    main()
