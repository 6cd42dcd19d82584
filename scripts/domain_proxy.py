"""A validation-only proxy of the lossless-test gap: does a recipe variant keep what the network
knows about cleaner images than those it is adapted on?

The `quick` preset adapts on JPEG re-encodings of CIFAR-10 and is tested on the lossless
originals, which the pretrained network knows better; there BlockDrop falls 3.0 points under the
full network while on validation (JPEG) it is 0.46 under. This script re-creates that situation
inside the training data: the recipe adapts on the training split re-encoded once more at JPEG
quality ``--quality`` (domain D) and every model is evaluated on the held-out validation images
both as they are (domain C, cleaner than anything it trained on) and re-encoded alike (D).

    python scripts/domain_proxy.py --arch resnet56 --train-data cifar10-jpeg-train.tar.gz \\
        --weights resnet56-4bfd9763.th --out runs/proxy/v0 [--quality 30] [--full] \\
        [--set adapt_anchor=0.3 ...]  ->  OUT/proxy.json

Test images are never read. ``--set`` as in ``scripts/recipe_variant.py``; CPU, seed 0 (the split
and every stage as ``blockdrop reproduce``'s defaults).
"""
from __future__ import annotations

import copy
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from blockdrop.training.baselines import BaselinePolicy
from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.checkpoint import atomic_write_text
from blockdrop.data import ImageArrayDataset, load_dataset, split_train_val
from blockdrop.recipes.reproduce import start_run
from blockdrop.recipes.policy_stage import stage_blockdrop
from blockdrop.recipes.stages import evaluate_on, stage_adapt, stage_full, stage_soup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_variant import variant_parser, variant_preset  # noqa: E402


def reencode(images: torch.Tensor, quality: int) -> torch.Tensor:
    """``uint8 [N,H,W,3]`` -> the same images through JPEG at ``quality`` (PIL)."""
    out = []
    for im in images.numpy():
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        out.append(np.array(Image.open(buf).convert("RGB")))
    return torch.from_numpy(np.stack(out))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = variant_parser(__doc__.split("\n")[0])
    ap.add_argument("--quality", type=int, default=30, help="JPEG quality of domain D (1-95)")
    ap.add_argument("--gamma", type=float, default=None, help="default: the preset's first")
    a = ap.parse_args(argv)
    if not 1 <= a.quality <= 95:
        raise SystemExit(f"--quality: expected 1..95, got {a.quality}")
    p = variant_preset(a)
    src = load_dataset(a.train_data, "train", seed=0)
    ds = src.dataset
    if not isinstance(ds, ImageArrayDataset):
        raise SystemExit("--train-data: expected an in-memory image set (a CIFAR-size archive)")
    degraded = replace(src, dataset=ImageArrayDataset(reencode(ds.images, a.quality), ds.labels,
                                                      ds.transform, ds.seed),
                       source=f"JPEG q{a.quality} of {src.source}")
    _, val_c = split_train_val(src, p.n_val, seed=0)         # the same images as run.val
    run, pretrained, _ = start_run(p, a.arch, degraded, a.weights, a.out, 0, "cpu", progress=False,
                                   resume=a.resume, overwrite=a.overwrite)
    val_d, nb = run.val, pretrained.num_blocks
    t0 = time.time()

    def both(net: BlockDropNet) -> dict[str, float]:
        rc, rd = evaluate_on(run, net, val_c), evaluate_on(run, net, val_d)
        return {"C": rc.accuracy, "D": rd.accuracy, "blocks": rc.blocks_mean}

    res: dict[str, Any] = {"quality": a.quality, "overrides": a.set,
                           "pretrained": both(BlockDropNet(BaselinePolicy("full", nb), pretrained).eval())}
    adapted = stage_adapt(run, pretrained)
    full = stage_full(run, pretrained) if a.full or p.soup_full else None
    if full is not None:
        res["full"] = both(full)
    res["adapted_every_block"] = both(BlockDropNet(BaselinePolicy("full", nb), adapted).eval())
    backbone = stage_soup(run, adapted, full)      # what BlockDrop executes
    if p.soup_full:
        res["souped_every_block"] = both(BlockDropNet(BaselinePolicy("full", nb), backbone).eval())
    res["points"] = []
    for draw in range(p.cl_draws):
        net = stage_blockdrop(run, backbone, a.gamma if a.gamma is not None else p.gammas[0],
                              adapted, draw, full.backbone if full is not None else None)
        for t in sorted(p.thresholds):
            q = copy.copy(net)
            q.threshold = t
            res["points"].append({"threshold": t, **({"draw": draw} if draw else {}), **both(q)})
            print(res["points"][-1], flush=True)
    res["seconds"], res["stage_seconds"] = time.time() - t0, run.seconds
    atomic_write_text(run.paths.out / "proxy.json", json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
