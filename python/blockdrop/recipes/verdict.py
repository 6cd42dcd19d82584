"""The steps of ``blockdrop reproduce`` after every choice is made (:mod:`blockdrop.recipes.steps`
1-4): the test set read once, its use counted (:func:`load_test`); every model evaluated on it and
timed side by side (:func:`evaluate_on_test`); further test sets beside it (:func:`evaluate_also`).
A run without a test set can time its models on validation images instead (:func:`measure_speed`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch

from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.data import DataInfo, make_loader
from blockdrop.errors import IncompatibleError
from blockdrop.evaluation.evaluate import EvalResult
from blockdrop.evaluation.speed import ModelSpeed, static_forward, time_models
from blockdrop.recipes import stages
from blockdrop.recipes.ledger import record_test_use
from blockdrop.recipes.run import Run
from blockdrop.recipes.selection import Point, point_name
from blockdrop.recipes.steps import Baseline, Candidates, DataArg, as_data

__all__ = [
    "TestResults",
    "load_test",
    "evaluate_on_test",
    "evaluate_also",
    "measure_speed",
    "timed_models",
]


@dataclass
class TestResults:
    """The test set's verdict: the full network, the shown points, the baselines, the measured
    time of every model (:func:`blockdrop.evaluation.speed.time_models`, by name)."""

    full: EvalResult
    points: dict[int, EvalResult]  # by id() of the shown Point
    baselines: list[EvalResult]
    speed: dict[str, ModelSpeed]


def load_test(run: Run, test_data: DataArg) -> tuple[DataInfo, dict[str, Any]]:
    """The test set, read here for the first time in a run, and its use recorded in the ledger
    (:mod:`blockdrop.recipes.ledger`): ``(test, {"key", "uses", "ledger"})``."""
    test = as_data(test_data, "test", run.seed)
    if test.classes != run.train.classes:
        raise IncompatibleError(
            f"test_data: classes {test.classes[:10]} differ from train_data's {run.train.classes[:10]}"
        )
    use = record_test_use(test_data)
    run.log(
        f"[test] {test.source}: use {use['uses']} of this test set on this machine (ledger {use['ledger']})"
    )
    return test, use


def evaluate_on_test(
    run: Run, test: DataInfo, cands: Candidates, shown: list[Point], baselines: list[Baseline]
) -> TestResults:
    """Step 5: the full network, every shown point and every baseline on ``test`` (once), then
    every model timed side by side (one thread, interleaved rounds, each at its fastest chunk:
    :func:`blockdrop.evaluation.speed.time_models`) on ``evaluation.speed_batch`` test images."""
    assert cands.full is not None
    run.log(f"[test] evaluating every model on {test.source}")
    ev = lambda net: run.timed("test", lambda: stages.evaluate_on(run, net, test))  # noqa: E731
    full = ev(cands.full)
    points = {id(q): ev(q.net) for q in shown}
    bases = [ev(b.net) for b in baselines]
    return TestResults(full, points, bases, measure_speed(run, test, cands.full, shown, baselines))


def measure_speed(
    run: Run,
    data: DataInfo,
    full: BlockDropNet,
    shown: list[Point],
    baselines: list[Baseline],
    stage: str = "speed",
) -> dict[str, ModelSpeed]:
    """Every model (:func:`timed_models`) timed side by side on the first two batches of
    ``evaluation.speed_batch`` images of ``data`` (x [B,3,H,W] each): one thread, interleaved
    rounds, each at its fastest chunk (:func:`blockdrop.evaluation.speed.time_models`), by report
    name; the seconds go to the run's clock as ``stage``."""
    cfg = run.preset.evaluation
    batches = [x.to(run.device) for x in _speed_batches(data, cfg.speed_batch)]
    models = timed_models(full, shown, baselines)
    run.log(
        f"[speed] {len(models)} models, {batches[0].shape[0]} x {len(batches)} images of "
        f"{data.source}, one thread, chunks {[batches[0].shape[0], *cfg.chunks]}"
    )
    return cast(
        "dict[str, ModelSpeed]",
        run.timed(stage, lambda: time_models(models, batches, cfg.chunks, cfg.speed_repeats)),
    )


def evaluate_also(
    run: Run, data: DataArg, cands: Candidates, shown: list[Point], baselines: list[Baseline], chosen: Point
) -> dict[str, Any]:
    """A further test set (e.g. the paper's lossless images inside the JPEG test set), read after
    the test set and counted in the ledger: every model's accuracy and blocks on it, and
    BlockDrop - full network paired over its images."""
    from blockdrop.evaluation.stats import paired_difference

    assert cands.full is not None
    test, use = load_test(run, data)
    ev = lambda net: run.timed("test", lambda: stages.evaluate_on(run, net, test))  # noqa: E731
    models = (
        [("full", "full", cands.full)]
        + [("blockdrop", point_name(q), q.net) for q in shown]
        + [(b.kind, b.name, b.net) for b in baselines]
    )
    res = {name: ev(net) for _, name, net in models}
    full, bd = res["full"], res[point_name(chosen)]
    assert full.correct is not None and bd.correct is not None
    return {
        "data": test.source,
        "images": full.n,
        "test_set": use,
        "vs_full": paired_difference(bd.correct, full.correct).to_dict(),
        "results": [
            {"method": m, "name": n, "accuracy": res[n].accuracy, "blocks_mean": res[n].blocks_mean}
            for m, n, _ in models
        ],
    }


def timed_models(
    full: BlockDropNet, shown: list[Point], baselines: list[Baseline]
) -> dict[str, Callable[[torch.Tensor], Any]]:
    """What runs when each model is timed, by report name: the full and the family networks as
    plain modules, StaticK as the pruned network (its kept blocks only), BlockDrop and
    FirstK/RandomK through their policy and the engine (``x [N,3,H,W] -> logits``)."""
    models: dict[str, Callable[[torch.Tensor], Any]] = {"full": full.backbone}
    for q in shown:
        models[point_name(q)] = q.net
    for b in baselines:
        if b.kind == "static_k":
            bb, dropped = b.net.backbone, b.dropped or []
            models[b.name] = functools.partial(static_forward, bb, dropped)
        else:
            models[b.name] = b.net.backbone if b.kind == "family" else b.net
    return models


def _speed_batches(test: DataInfo, batch: int, n: int = 2) -> list[torch.Tensor]:
    """Up to ``n`` full batches of test images (one smaller batch if the set is smaller)."""
    xs: list[torch.Tensor] = []
    for x, _ in make_loader(test.dataset, batch, train=False):
        if x.shape[0] == batch or not xs:
            xs.append(x)
        if len(xs) == n:
            break
    return [x for x in xs if x.shape[0] == xs[0].shape[0]]
