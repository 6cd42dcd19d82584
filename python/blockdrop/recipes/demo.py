"""``blockdrop demo`` (``make demo``, the main job): the whole recipe end to end on data that ships
with scikit-learn, so it needs no download and no GPU.

A CIFAR ResNet-20 is trained from scratch on the handwritten digits (1,437 real 8x8 images
upsampled to 32x32; 300 held out for validation, 360 for the test), then BlockDrop runs the
``reproduce`` recipe on it: curriculum, joint finetuning, the full network and FirstK/RandomK
finetuned alike, (gamma, threshold) chosen on validation, one test evaluation. ``OUT/results.json``
holds ``full`` and ``blockdrop``, each with ``accuracy``, ``blocks_mean`` and
``measured_speedup`` (time of the plain network / time of the path, batch 256, interleaved; also
against the plain network run in its fastest chunk size, ``measured_speedup_vs_best_plain``), and
``policy_sha1`` (a digest of the test policies): one thread and a fixed seed give the same
accuracy and the same policies on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from blockdrop.checkpoint import atomic_write_text, load_blockdrop_net
from blockdrop.data import digits_dataset, make_loader
from blockdrop.evaluation.evaluate import evaluate
from blockdrop.recipes.config import AdaptConfig, CurriculumConfig, Preset, SelectionConfig
from blockdrop.recipes.reproduce import reproduce
from blockdrop.training.config import TrainConfig

__all__ = ["DEMO", "DEMO_SMOKE", "run_demo"]

DEMO = Preset(
    name="demo",
    summary="digits, ResNet-20 from scratch, a few minutes on one CPU core",
    n_val=300,
    gammas=(1.0, 3.0),
    pretrain=AdaptConfig(steps=1000, keep=0.5, lr=0.1, batch_size=64, amp="off"),
    curriculum=CurriculumConfig(
        width=8, pool=4, cl_step=3, steps_per_epoch=15, extra_epochs=2, gamma=1.0, batch_size=64, amp="off"
    ),
    finetune=TrainConfig(stage="finetune", steps=150, lr=1e-4, batch_size=64, amp="off"),
)

#: Tiny settings for tests (`blockdrop demo --quick`): every stage runs, nothing is learned well.
DEMO_SMOKE = DEMO.replace(
    name="demo-smoke",
    gammas=(1.0,),
    pretrain=AdaptConfig(steps=4, keep=0.5, lr=0.1, batch_size=64, amp="off"),
    curriculum=CurriculumConfig(
        width=8, pool=4, cl_step=3, steps_per_epoch=1, extra_epochs=0, gamma=1.0, batch_size=64, amp="off"
    ),
    finetune=TrainConfig(stage="finetune", steps=2, lr=1e-4, batch_size=64, amp="off"),
    selection=SelectionConfig(thresholds=(0.5,)),
)


def _policy_digest(report: dict[str, Any], test: Any) -> str:
    net = load_blockdrop_net(report["checkpoint"])[0]
    res = evaluate(
        net,
        make_loader(test.dataset, DEMO.evaluation.batch_size, train=False),
        full=False,
        flops=False,
        progress=False,
    )
    assert res.policies is not None
    return hashlib.sha1(res.policies.numpy().tobytes()).hexdigest()


def run_demo(
    out: str | os.PathLike[str],
    seed: int = 0,
    quick: bool = False,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns (and writes) ``results.json``'s content."""
    out = Path(out)
    train, test = digits_dataset("train", seed), digits_dataset("test", seed)
    preset = DEMO_SMOKE if quick else DEMO
    report = reproduce(
        preset,
        "resnet20",
        train,
        test,
        None,
        out,
        seed=seed,
        device=device,
        progress=progress,
        resume=resume,
        overwrite=overwrite,
        log=log,
    )
    rows = report["results"]
    full = rows[0]
    results = {
        "full": {
            "accuracy": full["accuracy"],
            "blocks_mean": full["blocks_mean"],
            "measured_speedup": 1.0,
            "flops_mean": full["flops_mean"],
        },
        "blockdrop": {
            "accuracy": report["accuracy"],
            "blocks_mean": report["blocks_mean"],
            "blocks_std": report["blocks_std"],
            "measured_speedup": report["measured_speedup"],
            "measured_speedup_vs_best_plain": report["measured_speedup_vs_best_plain"],
            "best_plain_chunk": report["best_plain_chunk"],
            "measured_speedup_best_vs_best": report["measured_speedup_best_vs_best"],
            "flops_mean": report["flops_mean"],
            "gamma": report["gamma"],
            "threshold": report["threshold"],
            "checkpoint": report["checkpoint"],
        },
        "speed_batch": report["speed_batch"],
        "threads": torch.get_num_threads(),
        "policy_sha1": _policy_digest(report, test),
        "seed": seed,
        "preset": preset.name,
        "minutes": report["minutes"],
        "report": str(out / "report.json"),
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    b, f = results["blockdrop"], results["full"]
    table = "\n".join(
        [
            f"{'':<22}{'full network':>14}{'BlockDrop':>14}",
            f"{'accuracy':<22}{100 * f['accuracy']:>13.2f}%{100 * b['accuracy']:>13.2f}%",
            f"{'blocks used':<22}{f['blocks_mean']:>14.2f}{b['blocks_mean']:>14.2f}",
            f"{'FLOPs / image':<22}{f['flops_mean']:>14.3e}{b['flops_mean']:>14.3e}",
            f"{'measured speedup':<22}{1.0:>13.2f}x{b['measured_speedup']:>13.2f}x",
            f"{'  vs best plain chunk':<22}{'':>14}{b['measured_speedup_vs_best_plain']:>13.2f}x",
            f"{'  both best chunks':<22}{'':>14}{b['measured_speedup_best_vs_best']:>13.2f}x",
            f"(test set: {len(test.dataset)} digits; speed at batch {results['speed_batch']}, "
            f"{results['threads']} thread(s); both networks finetuned the same way)",
        ]
    )
    atomic_write_text(out / "results.txt", table + "\n")
    log(table)
    return results
