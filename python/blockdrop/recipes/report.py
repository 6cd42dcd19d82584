"""The reproduce report's numbers: :func:`build_report` gathers a finished run's results into a
:class:`Report`, whose ``to_dict()`` is ``report.json`` (:data:`REPORT_KEYS`; one row per model,
:data:`ROW_KEYS`). :mod:`blockdrop.recipes.report_files` writes it out with ``report.md`` and the
figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blockdrop.data import DataInfo
from blockdrop.evaluation.evaluate import EvalResult
from blockdrop.evaluation.speed import ModelSpeed
from blockdrop.evaluation.stats import accuracy_se, paired_difference
from blockdrop.recipes.config import preset_to_dict
from blockdrop.recipes.run import Run
from blockdrop.recipes.selection import Point, describe, point_name
from blockdrop.recipes.steps import Baseline, Candidates, commit
from blockdrop.recipes.verdict import TestResults

__all__ = ["REPORT_KEYS", "ROW_KEYS", "Report", "build_report", "validation_rows"]

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
#: Keys every row of ``results`` holds: one row per model, BlockDrop and every baseline. Every row
#: but the chosen model's also holds ``vs_blockdrop``: this model minus the chosen BlockDrop
#: model, paired on the same images (``{"test": ..., "val": ...}``, each a
#: :class:`~blockdrop.evaluation.stats.PairedDifference` as a dict).
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
    "val_accuracy",
)


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
        """``report.json``: the chosen model's fields at the top level, then ``val`` and ``results``."""
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


def _timing(speed: dict[str, ModelSpeed], name: str) -> dict[str, Any]:
    """A row's measured time: model ``name`` at its fastest chunk, and against the full network."""
    s = speed[name]
    return {
        "ms_per_image": s.ms_per_image,
        "best_chunk": s.best_chunk,
        "ms_by_chunk": {str(c): v for c, v in s.ms_by_chunk.items()},
        "measured_speedup_best_vs_best": speed["full"].ms_per_image / s.ms_per_image,
    }


def validation_rows(
    cands: Candidates, chosen: Point, baselines: list[Baseline], speed: dict[str, ModelSpeed]
) -> list[dict[str, Any]]:
    """A run without a test set: the full network, the chosen BlockDrop model and every baseline
    on the validation data (:data:`ROW_KEYS` but ``checkpoint``; ``accuracy`` is the validation
    accuracy), timed as ``speed`` says, each but BlockDrop with ``vs_blockdrop`` (that model minus
    BlockDrop, paired on the validation images)."""
    assert cands.full_val is not None
    bd, name = chosen.val, point_name(chosen)
    rows = [
        _row(
            "full",
            cands.full_val,
            name="full",
            vs_blockdrop=_paired(cands.full_val, bd),
            **_timing(speed, "full"),
        ),
        _row("blockdrop", bd, name=name, **_timing(speed, name)),
    ]
    for b in baselines:
        assert b.val is not None  # train_baselines evaluates each on validation
        rows.append(
            _row(b.kind, b.val, name=b.name, vs_blockdrop=_paired(b.val, bd), **_timing(speed, b.name))
        )
    return rows


def _results(
    run: Run,
    cands: Candidates,
    shown: list[Point],
    chosen: Point,
    final_path: Path,
    baselines: list[Baseline],
    t: TestResults,
) -> list[dict[str, Any]]:
    def timing(name: str) -> dict[str, Any]:
        return _timing(t.speed, name)

    assert cands.full_val is not None
    bd_test, bd_val = t.points[id(chosen)], chosen.val

    def vs_blockdrop(res: EvalResult, val: EvalResult | None) -> dict[str, Any]:
        """This model - BlockDrop's chosen one, paired on the same images."""
        out = {"test": _paired(res, bd_test)}
        return {**out, "val": _paired(val, bd_val)} if val is not None else out

    rows = [
        _row(
            "full",
            t.full,
            name="full",
            val_accuracy=cands.full_val.accuracy,
            checkpoint=str(run.paths.full()),
            vs_blockdrop=vs_blockdrop(t.full, cands.full_val),
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
                **({} if q is chosen else {"vs_blockdrop": vs_blockdrop(t.points[id(q)], q.val)}),
                **timing(point_name(q)),
            )
        )
    for b, res in zip(baselines, t.baselines):
        extra: dict[str, Any] = {"k": b.net.policy_net.k} if b.kind != "family" else {}
        if b.point is not None:
            extra.update(gamma=b.point.gamma, threshold=b.point.threshold, stage=b.point.stage)
        if b.dropped is not None:
            extra["dropped"] = list(b.dropped)
        if b.val is not None:
            extra["val_accuracy"] = b.val.accuracy
        extra["vs_blockdrop"] = vs_blockdrop(res, b.val)
        rows.append(_row(b.kind, res, name=b.name, checkpoint=str(b.path), **extra, **timing(b.name)))
    return rows


def _chosen(res: EvalResult, full: EvalResult, chosen: Point, full_val: EvalResult) -> dict[str, Any]:
    """The chosen model's test numbers, and BlockDrop - full on the same images (paired), on test
    and on validation."""
    return {
        "accuracy": res.accuracy,
        "blocks_mean": res.blocks_mean,
        "blocks_std": res.blocks_std,
        "flops_mean": res.flops_mean,
        "flops_std": res.flops_std,
        "full_flops": full.flops_mean,
        "num_policies": res.num_policies,
        "full_accuracy": full.accuracy,
        "accuracy_se": _se(res),
        "full_accuracy_se": _se(full),
        "vs_full": {"test": _paired(res, full), "val": _paired(chosen.val, full_val)},
        "gamma": chosen.gamma,
        "threshold": chosen.threshold,
        "stage": chosen.stage,
        "draw": chosen.draw,
    }


def _speed(t: TestResults, chosen: Point, repeats: int) -> dict[str, Any]:
    """The chosen model's measured speed against the full network's, at the whole batch and each
    at its fastest chunk of it."""
    full_s, bd_s = t.speed["full"], t.speed[point_name(chosen)]
    whole = max(full_s.ms_by_chunk)  # the batch itself, unchunked
    return {
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
            "repeats": repeats,
            "chunks": sorted(full_s.ms_by_chunk),
            "method": "interleaved rounds, "
            "medians, each model at its fastest chunk (blockdrop.evaluation.speed)",
        },
    }


def _val(run: Run, cands: Candidates) -> dict[str, Any]:
    """The validation side: the full network's accuracy, the selection rule, every point."""
    cfg = run.preset.selection
    assert cands.full_val is not None
    return {
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
    res, p = t.points[id(chosen)], run.preset
    assert cands.full_val is not None
    chosen_d = {
        "checkpoint": str(final_path),
        **_chosen(res, t.full, chosen, cands.full_val),
        "num_blocks": cands.adapted.num_blocks,
    }
    speed = _speed(t, chosen, p.evaluation.speed_repeats)
    val = _val(run, cands)
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
