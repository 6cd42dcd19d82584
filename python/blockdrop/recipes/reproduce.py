"""``blockdrop reproduce``: from a pretrained ResNet to a BlockDrop model, its fair baselines and a
report, in one call.

    report = reproduce("quick", arch="resnet56", train_data=..., test_data=..., weights=..., out=...)

The steps (:mod:`blockdrop.recipes.steps`) in order: the backbone and policy stages with every
model evaluated on validation -> the operating point chosen there -> the baselines (the full
network, StaticK, the smaller networks of the family, FirstK / RandomK where the preset asks) ->
one evaluation of every model on the test set, and their measured speed -> ``OUT/report.json``,
``OUT/report.md`` and plots. The settings are a :class:`~blockdrop.recipes.config.Preset` (a name
of :data:`~blockdrop.recipes.presets.PRESETS`, or one read from a file); the resolved preset is
stored in the report (``config``), so a run can be repeated from its report.

Validation vs test: every choice is made on ``val_data`` (without one, ``preset.n_val`` images
held out of the training data, stratified, seed ``seed``): the operating point
(``preset.selection``), and the block counts of the baselines. The test set is evaluated once,
after every choice is made, and each use is counted (:mod:`blockdrop.recipes.ledger`). The chosen
model is written to ``OUT/blockdrop.safetensors`` with its threshold.

Every stage writes its model under ``OUT`` (a ``blockdrop.load``-able checkpoint); with ``resume``
a stage whose checkpoint exists is loaded instead of run again, so a killed run continues at the
stage it was in, and its clock (``OUT/clock.json``) goes on from its last finished stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from blockdrop.data import DatasetNotFoundError
from blockdrop.recipes.config import Preset
from blockdrop.recipes.presets import get_preset
from blockdrop.recipes.report import build_report, validation_rows
from blockdrop.recipes.report_files import write_report
from blockdrop.recipes.run import Run, RunPaths
from blockdrop.recipes.selection import Point
from blockdrop.recipes.steps import (
    Candidates,
    DataArg,
    select,
    start_run,
    train_baselines,
    train_candidates,
    write_validation,
)
from blockdrop.recipes.verdict import evaluate_also, evaluate_on_test, load_test, measure_speed

__all__ = ["reproduce", "start_run", "RunPaths"]


def reproduce(
    preset: str | Preset,
    arch: str,
    train_data: DataArg,
    test_data: DataArg | None,
    weights: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    gammas: list[float] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    val_data: DataArg | None = None,
    family_weights: list[str | os.PathLike[str]] | None = None,
    also_test: list[DataArg] | None = None,
    val_baselines: bool = False,
) -> dict[str, Any]:
    """Run the recipe and write ``out/report.json`` (returned), ``out/report.md`` and plots.

    Args:
        preset: a name of :data:`~blockdrop.recipes.presets.PRESETS` or a :class:`Preset`.
        arch: backbone architecture (``resnet56``); must match ``weights``.
        train_data / val_data / test_data: datasets (paths for
            :func:`blockdrop.data.load_dataset`, or loaded ``DataInfo``). Every choice is made on
            ``val_data`` (default: ``preset.n_val`` images held out of ``train_data``).
            ``test_data`` is read once, after every choice, and its use counted
            (:mod:`blockdrop.recipes.ledger`); None stops after the choices and writes
            ``out/validation.json`` (returned) instead of a report: a run on validation only.
        val_baselines: a run on validation only also trains the baselines and compares them with
            BlockDrop on the validation data, timed on its images (``validation.json["results"]``).
            With ``test_data`` the baselines always run (the report holds their validation
            accuracy), so it is an error there.
        family_weights: pretrained smaller networks of the backbone's family (e.g. ResNet-32 and
            -44 beside a ResNet-56), each finetuned like the full network and reported beside it.
        also_test: further test sets every model is evaluated on after ``test_data`` (e.g. the
            paper's lossless images), each counted in the ledger (``report["also_test"]``).
        weights: the pretrained backbone; None trains ``arch`` from scratch first
            (``preset.pretrain``).
        gammas: finetune penalties to sweep (default: the preset's).
        resume / overwrite: an ``out`` that already holds a run is continued (``resume``: its
            finished stages are reused) or replaced (``overwrite``); otherwise IncompatibleError.
    """
    _check_inputs(test_data, also_test or [], val_baselines)
    p = get_preset(preset) if isinstance(preset, str) else preset
    if gammas:
        p = p.replace(gammas=tuple(gammas))
    run, pretrained, full_train = start_run(
        p, arch, train_data, weights, out, seed, device, progress, resume, overwrite, log, val_data
    )
    log(
        f"reproduce --preset {p.name}: {arch}, K={pretrained.num_blocks}, {len(run.train.dataset)} "
        f"train / {len(run.val.dataset)} validation images ({run.val.source}), gammas "
        f"{list(p.gammas)}, {run.device}, {torch.get_num_threads()} threads"
    )
    cands = train_candidates(run, pretrained, p.gammas, from_scratch=weights is None)
    chosen, shown, final_path = select(run, cands)
    minutes_blockdrop = run.mark("blockdrop") / 60
    if test_data is None:
        return _finish_on_validation(
            run, cands, shown, chosen, minutes_blockdrop, family_weights or (), val_baselines
        )
    baselines = train_baselines(run, cands, shown, chosen, family_weights or ())
    test, use = load_test(run, test_data)
    t = evaluate_on_test(run, test, cands, shown, baselines)
    report = build_report(
        run,
        cands,
        shown,
        chosen,
        final_path,
        baselines,
        t,
        test,
        arch,
        weights,
        full_train.source,
        run.elapsed() / 60,
        minutes_blockdrop,
    ).to_dict()
    report["test_set"] = use
    report["also_test"] = [evaluate_also(run, a, cands, shown, baselines, chosen) for a in also_test or []]
    res = t.points[id(chosen)]
    write_report(run.paths.out, report, chosen.net, res, test)
    run.checkpointed()  # the report is the run's last product: all of its time is kept
    log(_done_line(report, run.paths.out))
    return report


def _finish_on_validation(
    run: Run,
    cands: Candidates,
    shown: list[Point],
    chosen: Point,
    minutes_blockdrop: float,
    family_weights: list[str | os.PathLike[str]] | tuple[()],
    with_baselines: bool,
) -> dict[str, Any]:
    """A run without a test set ends here: ``OUT/validation.json`` (returned), with every baseline
    trained, timed on validation images and compared with BlockDrop there (its ``results``) when
    ``with_baselines``."""
    rows = None
    if with_baselines:
        baselines = train_baselines(run, cands, shown, chosen, family_weights)
        assert cands.full is not None  # train_baselines trains it
        speed = measure_speed(run, run.val, cands.full, [chosen], baselines, stage="val_speed")
        rows = validation_rows(cands, chosen, baselines, speed)
    out = write_validation(run, cands, chosen, minutes_blockdrop, rows)
    run.checkpointed()
    return out


def _check_inputs(test_data: DataArg | None, also_test: list[DataArg], val_baselines: bool) -> None:
    """Errors that name the argument, before anything is written (the test sets are checked to
    exist, not read)."""
    if val_baselines and test_data is not None:
        raise ValueError(
            "val_baselines: only for a run without test_data (with it the baselines always run and "
            "the report holds their validation results)"
        )
    for name, d in [("test_data", test_data)] + [("also_test", a) for a in also_test]:
        if isinstance(d, (str, os.PathLike)) and not Path(d).expanduser().exists():
            raise DatasetNotFoundError(f"{name}: {d} does not exist")


def _done_line(r: dict[str, Any], out: Path) -> str:
    """The run's last log line: BlockDrop against the full network, its speed and time."""
    return (
        f"[done] {r['preset']}: BlockDrop {100 * r['accuracy']:.2f}% at {r['blocks_mean']:.2f}/"
        f"{r['num_blocks']} blocks (gamma {r['gamma']:g}, threshold {r['threshold']:g}); "
        f"full network {100 * r['full_accuracy']:.2f}%; measured speedup "
        f"{r['measured_speedup_best_vs_best']:.2f}x (each at its fastest chunk of "
        f"{r['speed_batch']} images, one thread); "
        f"{r['minutes_blockdrop']:.1f} min to BlockDrop's model, {r['minutes']:.1f} in all "
        f"-> {out}/report.json"
    )
