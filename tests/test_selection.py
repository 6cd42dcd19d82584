"""The reproduce recipe's choices on the validation split (blockdrop.recipes.selection): the
selection rule written out by brute force, the block budget, and where the threshold bisection
refines."""

from __future__ import annotations


def test_select_never_picks_a_point_dearer_than_the_full_network() -> None:
    """The selection rule written out here: among the points that cost fewer FLOPs than the full
    network (all of them if none does), the fewest blocks within the tolerance, else the most
    accurate."""
    from blockdrop.evaluation.evaluate import EvalResult
    from blockdrop.recipes.selection import Point, select

    def pt(acc: float, blocks: float, flops: float) -> Point:
        r = EvalResult(
            n=100,
            accuracy=acc,
            blocks_mean=blocks,
            blocks_std=0.0,
            num_blocks=27,
            num_policies=1,
            block_freq=[],
            flops_mean=flops,
            full_flops=100.0,
        )
        return Point(1.0, blocks / 100, None, r)  # type: ignore[arg-type]  # no net: selection never reads it

    full = EvalResult(
        n=100,
        accuracy=0.90,
        blocks_mean=27,
        blocks_std=0,
        num_blocks=27,
        num_policies=1,
        block_freq=[],
        flops_mean=100.0,
        full_flops=100.0,
    )
    dear, ok, low = pt(0.899, 25.5, 103.0), pt(0.893, 24.0, 96.0), pt(0.87, 21.0, 85.0)
    # within 0.5 points: only `dear`, which costs more than the full network -> the most accurate
    # of the cheaper ones
    assert select([dear, ok, low], full, _sel(0.005)) is ok
    # within 1 point: `ok` has the fewest blocks among the cheaper ones
    assert select([dear, ok, low], full, _sel(0.01)) is ok
    assert select([dear, ok, low], full, _sel(0.05)) is low
    # nothing is cheaper: every point competes again
    assert select([dear, pt(0.85, 26.0, 101.0)], full, _sel(0.005)) is dear
    # FLOPs unknown: accuracy alone
    unknown = pt(0.899, 25.5, 0.0)
    unknown.val.flops_mean = None
    assert select([unknown, low], full, _sel(0.005)) is unknown


def test_select_honours_the_block_budget() -> None:
    """With max_blocks = s, only points with at most s x K validation blocks compete (then the
    rule above); when none fits, the one with the fewest blocks. Points drawn at random, the rule
    evaluated here by brute force over every point."""
    import random

    from blockdrop.evaluation.evaluate import EvalResult
    from blockdrop.recipes.selection import Point, select

    def pt(acc: float, blocks: float, flops: float) -> Point:
        r = EvalResult(
            n=100,
            accuracy=acc,
            blocks_mean=blocks,
            blocks_std=0.0,
            num_blocks=27,
            num_policies=1,
            block_freq=[],
            flops_mean=flops,
            full_flops=100.0,
        )
        return Point(1.0, 0.5, None, r)  # type: ignore[arg-type]  # no net: selection never reads it

    full = EvalResult(
        n=100,
        accuracy=0.90,
        blocks_mean=27,
        blocks_std=0,
        num_blocks=27,
        num_policies=1,
        block_freq=[],
        flops_mean=100.0,
        full_flops=100.0,
    )
    rng = random.Random(7)
    seen = set()
    for _ in range(300):
        pts = []
        for _ in range(rng.randint(1, 6)):
            b = rng.uniform(15, 27)
            pts.append(pt(round(rng.uniform(0.85, 0.91), 4), b, b / 27 * 95 + rng.uniform(0, 9)))
        tol, share = rng.choice([0.005, 0.01, 0.03]), rng.choice([0.7, 0.85, 1.0])
        cheaper = [q for q in pts if q.val.flops_mean < 100.0] or pts
        fits = [q for q in cheaper if q.val.blocks_mean <= share * 27]
        good = [q for q in fits if q.val.accuracy >= 0.90 - tol]
        if not fits:
            want, case = min(cheaper, key=lambda q: q.val.blocks_mean), "none fits"
        elif good:
            want, case = min(good, key=lambda q: q.val.blocks_mean), "fewest within"
        else:
            want, case = max(fits, key=lambda q: q.val.accuracy), "most accurate"
        seen.add(case)
        assert select(pts, full, _sel(tol, share)) is want
    assert seen == {"none fits", "fewest within", "most accurate"}
    a, b = pt(0.899, 24.5, 92.0), pt(0.88, 22.0, 85.0)
    assert select([a, b], full, _sel(0.005)) is a and select([a, b], full, _sel(0.005, 0.85)) is b


def test_threshold_refinement_bisects_where_select_decides(monkeypatch) -> None:
    """val_points bisects between the last threshold select could choose and the next; with no
    threshold within the tolerance inside the block budget, at the budget's edge. Blocks and
    accuracy fall linearly with the threshold here (blocks 27 - 20 t, accuracy 0.95 - 0.2 t)."""
    from blockdrop.recipes import selection

    run, net, full = _linear_model(monkeypatch)
    # tolerance 0.035: ok iff t <= 0.425 -> bisect (0.4, 0.6) then (0.4, 0.5)
    got = [q.threshold for q in selection.val_points(_at(run, 0.035), 1.0, net, full)]
    assert got == [0.2, 0.4, 0.6, 0.5, 0.45]
    # budget 0.7 of 27 (18.9 blocks: t >= 0.405) and tolerance 0.005 (t <= 0.225): nothing is
    # chosen by tolerance inside the budget -> bisect at the budget's edge, (0.4, 0.6) then (0.4, 0.5)
    got = [q.threshold for q in selection.val_points(_at(run, 0.005, max_blocks=0.7), 1.0, net, full)]
    assert got == [0.2, 0.4, 0.6, 0.5, 0.45]
    # budget 0.9 (24.3 blocks: t >= 0.135) and tolerance 0.005: 0.2 is chosen -> (0.2, 0.4), (0.2, 0.3)
    got = [q.threshold for q in selection.val_points(_at(run, 0.005, max_blocks=0.9), 1.0, net, full)]
    assert got == [0.2, 0.4, 0.6, 0.3, 0.25]


def test_budget_rule_takes_each_models_edge_then_the_most_accurate() -> None:
    """Rule "budget": among the points cheaper than the full network (all if none is) and inside
    the budget, per trained model (gamma, stage, draw) the one with the most validation blocks
    (ties: more accurate), then the most accurate of those (ties: more blocks); none inside: the
    fewest blocks. Brute force over random points with repeated blocks and accuracies."""
    import random

    import pytest

    from blockdrop.evaluation.evaluate import EvalResult
    from blockdrop.recipes.selection import Point, select

    def pt(acc: float, blocks: float, model: tuple[float, str, int], flops: float) -> Point:
        r = EvalResult(
            n=100,
            accuracy=acc,
            blocks_mean=blocks,
            blocks_std=0.0,
            num_blocks=27,
            num_policies=1,
            block_freq=[],
            flops_mean=flops,
            full_flops=100.0,
        )
        return Point(
            model[0],
            0.5,
            None,  # type: ignore[arg-type]  # no net: selection never reads it
            r,
            stage=model[1],
            draw=model[2],
        )

    full = EvalResult(
        n=100,
        accuracy=0.90,
        blocks_mean=27,
        blocks_std=0,
        num_blocks=27,
        num_policies=1,
        block_freq=[],
        flops_mean=100.0,
        full_flops=100.0,
    )
    models = [(g, st, d) for g in (2.0, 5.0) for st in ("finetune", "curriculum") for d in (0, 1)]
    rng = random.Random(11)
    cases = set()
    for _ in range(500):
        share = rng.choice([0.7, 0.845, 1.0])
        pts = [
            pt(
                rng.choice([0.88, 0.89, 0.9, 0.91]),
                float(rng.randint(16, 27)),
                rng.choice(models[: rng.randint(1, len(models))]),
                rng.uniform(60, 104),
            )
            for _ in range(rng.randint(1, 10))
        ]
        cheaper = [q for q in pts if q.val.flops_mean < 100.0] or pts
        fits = [q for q in cheaper if q.val.blocks_mean <= share * 27]
        if not fits:
            want, case = min(cheaper, key=lambda q: (q.val.blocks_mean, -q.val.accuracy)), "none"
        else:
            keys = {(q.gamma, q.stage, q.draw) for q in fits}
            edges = [
                max(
                    (q for q in fits if (q.gamma, q.stage, q.draw) == k),
                    key=lambda q: (q.val.blocks_mean, q.val.accuracy),
                )
                for k in keys
            ]
            want = max(edges, key=lambda q: (q.val.accuracy, q.val.blocks_mean))
            case = "several models" if len(keys) > 1 else "one model"
        cases.add(case)
        got = select(pts, full, _sel(0.0, share, rule="budget"))
        # equal (blocks, accuracy) pairs may tie: the chosen point must rank equal to the wanted
        assert (got.val.blocks_mean, got.val.accuracy) == (want.val.blocks_mean, want.val.accuracy)
        assert got in (fits or cheaper)
    assert cases == {"none", "one model", "several models"}
    # the more accurate point of one draw loses to that draw's point nearer the budget
    one, two = (2.0, "finetune", 0), (2.0, "finetune", 1)
    a, b, c = pt(0.91, 22.0, one, 90.0), pt(0.90, 22.8, one, 92.0), pt(0.905, 22.5, two, 91.0)
    assert select([a, b, c], full, _sel(0.0, 0.845, rule="budget")) is c
    assert select([a, b], full, _sel(0.0, 0.845, rule="budget")) is b
    assert select([a, b], full, _sel(0.0, 0.845)) is a  # "tolerance": the fewest blocks within 0
    # a point dearer than the full network does not compete even inside the budget
    dear = pt(0.92, 22.9, two, 101.0)
    assert select([a, b, dear], full, _sel(0.0, 0.9, rule="budget")) is b
    with pytest.raises(ValueError, match="rule 'budget'.*max_blocks"):
        select([a], full, _sel(0.0, None, rule="budget"))
    with pytest.raises(ValueError, match="rule: expected one of tolerance, budget"):
        select([a], full, _sel(0.0, 0.8, rule="most"))


def test_budget_rule_bisects_at_the_budget_edge(monkeypatch) -> None:
    """With rule "budget" val_points always refines between the last threshold over the budget and
    the next, whatever the tolerance says (blocks 27 - 20 t, accuracy 0.95 - 0.2 t)."""
    from blockdrop.recipes import selection

    run, net, full = _linear_model(monkeypatch)
    # budget 0.9 (24.3 blocks: t >= 0.135): every threshold is inside; within tolerance 0.05 means
    # t <= 0.5, which rule "tolerance" refines at (0.4, 0.6) then (0.5, 0.6); "budget" at the
    # budget's edge, which no pair of thresholds straddles: nothing
    got = [q.threshold for q in selection.val_points(_at(run, 0.05, max_blocks=0.9), 1.0, net, full)]
    assert got == [0.2, 0.4, 0.6, 0.5, 0.55]
    got = [
        q.threshold
        for q in selection.val_points(_at(run, 0.05, max_blocks=0.9, rule="budget"), 1.0, net, full)
    ]
    assert got == [0.2, 0.4, 0.6]
    # budget 0.7 (18.9 blocks: t >= 0.405): (0.4, 0.6) then (0.4, 0.5), the edge at 0.405
    got = [
        q.threshold
        for q in selection.val_points(_at(run, 0.05, max_blocks=0.7, rule="budget"), 1.0, net, full)
    ]
    assert got == [0.2, 0.4, 0.6, 0.5, 0.45]
    pts = selection.val_points(_at(run, 0.05, max_blocks=0.7, rule="budget"), 1.0, net, full)
    assert selection.select(pts, full, _sel(0.05, 0.7, rule="budget")).threshold == 0.45

    # inside the budget but dearer than the full network does not compete either: with FLOPs
    # 130 - 100 t (cheaper iff t > 0.3) and budget 0.9 the edge is the FLOPs': (0.2, 0.4), (0.3, 0.4)
    run, net, full = _linear_model(monkeypatch, flops=lambda t: 130.0 - 100.0 * t)
    got = [
        q.threshold
        for q in selection.val_points(_at(run, 0.05, max_blocks=0.9, rule="budget"), 1.0, net, full)
    ]
    assert got == [0.2, 0.4, 0.6, 0.3, 0.35]


def _linear_model(monkeypatch, flops=lambda t: 90.0):
    """A model whose validation result is linear in the threshold t: blocks 27 - 20 t, accuracy
    0.95 - 0.2 t, FLOPs ``flops(t)`` of the full network's 100; grid (0.2, 0.4, 0.6), two
    bisections. Returns (run, net, full network's validation result)."""
    from types import SimpleNamespace

    from blockdrop.evaluation.evaluate import EvalResult
    from blockdrop.recipes import stages

    def fake_eval(run, net, data):
        t = net.threshold
        return EvalResult(
            n=100,
            accuracy=0.95 - 0.2 * t,
            blocks_mean=27 - 20 * t,
            blocks_std=0.0,
            num_blocks=27,
            num_policies=1,
            block_freq=[],
            flops_mean=flops(t),
            full_flops=100.0,
        )

    monkeypatch.setattr(stages, "evaluate_on", fake_eval)
    run = SimpleNamespace(preset=SimpleNamespace(selection=_sel(0.01)), val=None)
    return run, SimpleNamespace(threshold=0.5), SimpleNamespace(accuracy=0.90)


def _sel(tolerance: float, max_blocks: float | None = None, rule: str = "tolerance"):
    """A SelectionConfig on the grid (0.2, 0.4, 0.6) with two bisections."""
    from blockdrop.recipes.config import SelectionConfig

    return SelectionConfig(
        tolerance=tolerance, max_blocks=max_blocks, rule=rule, thresholds=(0.2, 0.4, 0.6), refine=2
    )


def _at(run, tolerance: float, max_blocks: float | None = None, rule: str = "tolerance"):
    """``run`` with the selection settings ``_sel(...)``."""
    from types import SimpleNamespace

    return SimpleNamespace(preset=SimpleNamespace(selection=_sel(tolerance, max_blocks, rule)), val=run.val)
