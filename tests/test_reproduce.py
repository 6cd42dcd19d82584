"""``blockdrop reproduce`` on tiny data: every stage runs, the report holds what it promises, the
test set is evaluated once, resume reuses the stages, and the checkpoints load back."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path

import pytest
import torch

import blockdrop
from blockdrop.recipes.config import (
    AdaptConfig,
    BaselinesConfig,
    CurriculumConfig,
    EvalConfig,
    Preset,
    SelectionConfig,
)
from blockdrop.recipes.presets import PRESETS, get_preset
from blockdrop.recipes.report import REPORT_KEYS
from blockdrop.training.config import TrainConfig

_TINY = {"batch_size": 8, "amp": "off"}
TINY = Preset(
    name="tiny",
    summary="test",
    n_val=12,
    gammas=(1.0, 5.0),
    adapt=AdaptConfig(steps=2, distill=0.5, **_TINY),
    curriculum=CurriculumConfig(cl_step=2, steps_per_epoch=1, extra_epochs=0, **_TINY),
    finetune=TrainConfig(stage="finetune", steps=8, distill=0.5, alpha=0.9, backbone_on="greedy", **_TINY),
    selection=SelectionConfig(thresholds=(0.4, 0.5)),
    baselines=BaselinesConfig(static_k=(0, -1), static_images=20),
    evaluation=EvalConfig(speed_batch=4, chunks=(2,), speed_repeats=1),
)
NO_BASELINES = BaselinesConfig(first_random_k=False, static_k=())


def _correct_on(data: Path, checkpoint: str | Path) -> torch.Tensor:
    """bool [N]: the checkpoint's plain forward right on each image of ``data`` (in order)."""
    from blockdrop.data import load_dataset, make_loader

    net, got = blockdrop.load(checkpoint).eval(), []
    with torch.no_grad():
        for x, y in make_loader(load_dataset(data, "test").dataset, 4, train=False):
            got.append(net(x)[0].argmax(1) == y)
    return torch.cat(got)


@pytest.fixture(scope="module")
def tiny(tiny_recipe_data: dict[str, Path]) -> dict[str, Path]:
    return tiny_recipe_data


def test_split_steps_makes_the_requested_steps() -> None:
    from blockdrop.training.config import split_steps

    assert split_steps(500, 351) == (2, 250)
    assert split_steps(100, 351) == (1, 100)
    assert split_steps(7, 3) == (3, 3)  # 9 >= 7, the fewest epochs of at most 3
    for steps, nb in [(1, 1), (13, 5), (351, 351), (352, 351), (1000, 7)]:
        e, s = split_steps(steps, nb)
        assert s <= nb and steps <= e * s < steps + e
    with pytest.raises(ValueError, match="steps"):
        split_steps(0, 5)


def test_presets_are_complete_and_named() -> None:
    assert set(PRESETS) == {"quick", "cpu", "gpu", "official"}
    off = get_preset("official")
    cl, ft = off.curriculum, off.finetune
    assert ft is not None
    # the authors' schedule: no adaptation, no distillation, whole-epoch curriculum of 5000 epochs
    # at batch 2048 with gamma 1, finetune 2000 epochs at batch 256 with gamma 5, masked forward
    assert (
        off.adapt,
        ft.distill,
        cl.epochs,
        cl.batch_size,
        cl.gamma,
        cl.steps_per_epoch,
        ft.epochs,
        ft.batch_size,
        off.gammas,
        cl.strategy,
        ft.strategy,
        ft.alpha,
        ft.backbone_on,
        cl.lr,
        ft.lr,
    ) == (None, 0.0, 5000, 2048, 1.0, None, 2000, 256, (5.0,), "masked", "masked", 0.8, "sample", 1e-3, 1e-4)
    with pytest.raises(ValueError, match="preset"):
        get_preset("fast")
    with pytest.raises(ValueError, match="backbone_on"):
        TrainConfig(stage="finetune", backbone_on="both")
    with pytest.raises(ValueError, match="alpha"):
        TrainConfig(stage="finetune", alpha=0.3)


def test_reproduce_end_to_end_on_tiny_data(tiny: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """The clean protocol: every choice on the validation set given (--val-data), all of the
    training data trains, the test set is read only by the final evaluation -- it is garbage on
    disk until then -- and its use is counted in the ledger."""
    import shutil

    from blockdrop.recipes import reproduce as rep, stages

    monkeypatch.setenv("BLOCKDROP_TEST_LEDGER", str(tmp_path / "ledger.json"))
    evaluated: list[str] = []
    real = stages.evaluate_on

    def spy(run, net, data):
        evaluated.append(data.source)
        return real(run, net, data)

    monkeypatch.setattr(stages, "evaluate_on", spy)
    test = tmp_path / "test.tar.gz"
    test.write_bytes(b"not yet a dataset")  # any read before the final evaluation fails
    archive = shutil.make_archive(str(tmp_path / "real_test"), "gztar", tiny["test"].parent, "test")
    real_load = rep.load_test

    def swap_in(run, data):
        shutil.copyfile(archive, test)
        return real_load(run, data)

    monkeypatch.setattr(rep, "load_test", swap_in)
    out = tmp_path / "run"
    logs: list[str] = []
    report = rep.reproduce(
        TINY,
        "resnet8",
        tiny["train"],
        test,
        tiny["weights"],
        out,
        device="cpu",
        progress=False,
        log=logs.append,
        val_data=tiny["val"],
        family_weights=[tiny["family"]],
        also_test=[tiny["test"]],
    )
    on_disk = json.loads((out / "report.json").read_text())
    # the full baseline sees the adapt stage's batches: the pretrained teacher runs once per step
    assert any("replayed from the adapt stage: 2 of 2 steps" in line for line in logs), logs
    # every choice on the validation set given; all 48 training images train
    assert report["val"]["images"] == 9 and "held out" not in report["train_data"]
    assert report["test_set"]["uses"] == 1 and report["test_images"] == 12
    # the finetune makes the preset's steps although they exceed one epoch (48 images / 8 = 6)
    from blockdrop.checkpoint import read_meta

    for g in TINY.gammas:
        meta = read_meta(out / f"gamma{g:g}" / "finetune")
        assert meta["progress"]["global_step"] == TINY.finetune.steps
        # the preset's joint-stage settings reach the trainer
        assert (meta["config"]["backbone_on"], meta["config"]["alpha"]) == ("greedy", 0.9)
    assert on_disk == json.loads(json.dumps(report))
    for key in REPORT_KEYS:
        assert key in report, key
    assert report["preset"] == "tiny" and report["seed"] == 0 and report["gamma"] in (1.0, 5.0)
    assert 0 <= report["accuracy"] <= 1 and 0 <= report["blocks_mean"] <= 3
    rows = report["results"]
    bd = [r for r in rows if r["method"] == "blockdrop"]
    # every gamma at the paper's threshold 0.5, plus the operating point chosen on validation
    assert [
        (r["gamma"], r["threshold"]) for r in bd if r["threshold"] == 0.5 and r["stage"] == "finetune"
    ] == [(1.0, 0.5), (5.0, 0.5)]
    chosen = [r for r in bd if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["accuracy"] == report["accuracy"]
    assert (chosen[0]["gamma"], chosen[0]["threshold"]) == (report["gamma"], report["threshold"])
    pts = report["val"]["points"]
    # every threshold of each finetuned gamma, and of the curriculum (a candidate stage), on validation
    for stage, g in [("finetune", 1.0), ("finetune", 5.0), ("curriculum", TINY.curriculum.gamma)]:
        ts = {q["threshold"] for q in pts if q["stage"] == stage and q["gamma"] == g}
        assert set(TINY.selection.thresholds) <= ts, (stage, g, ts)
    assert {q["stage"] for q in pts} == {"finetune", "curriculum"}
    assert report["stage"] == chosen[0]["stage"]
    full_val = report["val"]["full_accuracy"]
    # the selection rule: among the points cheaper than the full network (all, if none is), the
    # fewest validation blocks within the tolerance, else the most accurate
    cheaper = [q for q in pts if q["flops_mean"] < report["full_flops"]] or pts
    ok = [q for q in cheaper if q["accuracy"] >= full_val - 0.01]
    if ok:
        assert chosen[0]["val_blocks"] == min(q["blocks_mean"] for q in ok)
    else:
        assert chosen[0]["val_accuracy"] == max(q["accuracy"] for q in cheaper)
    assert rows[0]["method"] == "full"
    assert len({r["name"] for r in rows}) == len(rows)  # names key the timings: one per model
    # FirstK / RandomK at every shown point's validation block count
    base = [r for r in rows if r["method"] in ("first_k", "random_k")]
    assert len(base) == 2 * len(bd)
    for r in base:
        match = [
            b
            for b in bd
            if (b["gamma"], b["threshold"], b["stage"]) == (r["gamma"], r["threshold"], r["stage"])
        ]
        assert r["k"] == pytest.approx(match[0]["val_blocks"])
    assert blockdrop.load(report["checkpoint"]).threshold == report["threshold"]
    # the test set: once per model, after every validation evaluation
    also_src = report["also_test"][0]["data"]
    assert set(evaluated) == {report["val_data"], report["test_data"], also_src}
    assert evaluated.count(report["test_data"]) == evaluated.count(also_src) == len(report["results"])
    first_test = evaluated.index(report["test_data"])
    assert set(evaluated[:first_test]) == {report["val_data"]}
    assert set(evaluated[first_test:]) == {report["test_data"], also_src}
    # every model on the same axes: measured time (one thread, its best chunk) and FLOPs
    from blockdrop.recipes.report import ROW_KEYS

    for r in rows:
        assert all(k in r for k in ROW_KEYS), r
        assert r["best_chunk"] in (2, 4) and r["ms_per_image"] > 0
        assert r["ms_per_image"] == min(r["ms_by_chunk"].values())
        assert r["measured_speedup_best_vs_best"] == pytest.approx(
            rows[0]["ms_per_image"] / r["ms_per_image"]
        )
    assert report["minutes_blockdrop"] <= report["minutes_total"]
    # StaticK at the chosen point's validation blocks (rounded) and one block fewer, the same
    # blocks dropped for every image; the smaller family member finetuned like the full network
    static = [r for r in rows if r["method"] == "static_k"]
    cb = chosen[0]["val_blocks"]
    assert sorted(r["k"] for r in static) == sorted({min(3, max(1, round(cb) + off)) for off in (0, -1)})
    for r in static:
        net = blockdrop.load(r["checkpoint"])
        pol = net.policy(torch.zeros(2, 3, 16, 16))
        assert pol.sum(1).tolist() == [r["k"]] * 2 and r["blocks_mean"] == r["k"]
        assert [i for i in range(3) if pol[0, i] == 0] == sorted(r["dropped"])
    # the further test set (here the same images as a folder): every model, the same accuracies
    also = report["also_test"][0]
    assert also["test_set"]["uses"] == 1 and also["images"] == 12
    assert [a["name"] for a in also["results"]] == [r["name"] for r in rows]
    # every evaluation starts a random baseline from its seed: the same images, the same draws
    assert [a["accuracy"] for a in also["results"]] == [r["accuracy"] for r in rows]
    assert {"first_k", "random_k"} <= {a["method"] for a in also["results"]}
    fixed = ("full", "blockdrop", "static_k", "family")  # the plain forwards below batch otherwise
    fam = [r for r in rows if r["method"] == "family"]
    assert len(fam) == 1 and "r8b.th" in fam[0]["name"] and fam[0]["blocks_mean"] == 3
    for name in ("report.md", "tradeoff.png", "block_usage.png", "policy_grid.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert re.search(r"\| BlockDrop( \(chosen\))? \| 1 \|", md) and md.count("(chosen)") == 1
    # the final checkpoint reproduces the reported test accuracy
    net = blockdrop.load(report["checkpoint"])
    from blockdrop.data import load_dataset, make_loader
    from blockdrop.evaluation.evaluate import evaluate

    res = evaluate(
        net,
        make_loader(load_dataset(tiny["test"], "test").dataset, 5, train=False),
        full=False,
        flops=False,
        progress=False,
    )
    assert res.accuracy == pytest.approx(report["accuracy"])
    # the paired comparison with the full network: the discordant images, counted here
    fres = evaluate(
        blockdrop.load(rows[0]["checkpoint"]),
        make_loader(load_dataset(tiny["test"], "test").dataset, 5, train=False),
        full=False,
        flops=False,
        progress=False,
    )
    a, b = res.correct, fres.correct
    vs = report["vs_full"]["test"]
    assert (vs["a_only"], vs["b_only"], vs["n"]) == (int((a & ~b).sum()), int((b & ~a).sum()), 12)
    assert vs["diff"] == pytest.approx(report["accuracy"] - report["full_accuracy"])
    assert report["vs_full"]["val"]["n"] == 9
    assert report["accuracy_se"] == pytest.approx((res.accuracy * (1 - res.accuracy) / 12) ** 0.5)
    assert "BlockDrop - full network, on the same images" in md

    # every model on validation too, and each minus BlockDrop on the same images, counted here
    # from a plain forward of each checkpoint (FirstK/RandomK draw per batch, and batches differ)
    correct = functools.partial(_correct_on, tiny["val"])
    bd_val = correct(report["checkpoint"])
    assert "vs_blockdrop" not in chosen[0]
    for r in rows:
        if r["method"] not in fixed or r.get("chosen"):
            continue
        c = correct(r["checkpoint"])
        assert r["val_accuracy"] == pytest.approx(c.float().mean().item()), r["name"]
        d = r["vs_blockdrop"]["val"]
        assert (d["a_only"], d["b_only"], d["n"]) == (int((c & ~bd_val).sum()), int((bd_val & ~c).sum()), 9)
    others = [r for r in rows if not r.get("chosen")]
    assert any(r["accuracy"] != report["accuracy"] for r in others)  # so that a flipped sign shows
    for r in others:
        assert r["vs_blockdrop"]["test"]["diff"] == pytest.approx(r["accuracy"] - report["accuracy"])
    assert all("vs_blockdrop" in r for r in rows if not r.get("chosen"))
    assert "Each model minus the chosen BlockDrop model, paired" in md
    # every stage's model loads
    for r in report["results"]:
        assert blockdrop.load(r["checkpoint"]).backbone.num_blocks == 3
    # resume: no stage runs again, same numbers; the test set's second use is counted
    logs.clear()
    again = rep.reproduce(
        TINY,
        "resnet8",
        tiny["train"],
        test,
        tiny["weights"],
        out,
        device="cpu",
        progress=False,
        resume=True,
        log=logs.append,
        val_data=tiny["val"],
        family_weights=[tiny["family"]],
    )
    assert sum("reusing" in line for line in logs) == 1 + 1 + 2 + len(base) + len(static) + 1
    assert [r["accuracy"] for r in again["results"]] == [r["accuracy"] for r in report["results"]]
    assert again["test_set"]["uses"] == 2
    # the clock goes on: BlockDrop's minutes are the first session's, the total adds the second's
    assert again["sessions"] == 2 and report["sessions"] == 1
    assert again["minutes_blockdrop"] == report["minutes_blockdrop"]
    assert again["minutes"] > report["minutes"]
    for stage, m in report["stage_minutes"].items():
        assert again["stage_minutes"][stage] >= m
    assert "over 2 sessions (resumed)" in (out / "report.md").read_text()
    clock = out / "clock.json"
    saved = clock.read_text()
    clock.write_text('{"seconds": "soon"}')
    with pytest.raises(Exception, match="clock.json is not a run's clock"):
        rep.reproduce(
            TINY,
            "resnet8",
            tiny["train"],
            test,
            tiny["weights"],
            out,
            device="cpu",
            progress=False,
            resume=True,
            val_data=tiny["val"],
        )
    clock.write_text(saved)
    # resuming with other settings is refused, naming the setting
    from blockdrop.errors import IncompatibleError

    with pytest.raises(IncompatibleError, match="adapt.steps: 2 -> 3"):
        rep.reproduce(
            TINY.replace(adapt=dataclasses.replace(TINY.adapt, steps=3)),
            "resnet8",
            tiny["train"],
            test,
            tiny["weights"],
            out,
            device="cpu",
            progress=False,
            resume=True,
            val_data=tiny["val"],
        )


def test_soup_full_starts_blockdrop_from_the_weight_average(tiny, tmp_path) -> None:
    """soup_full = s: the curriculum's (frozen) backbone is (1 - s) x adapted + s x the full
    network finetuned alike, each tensor as computed here in float64 from the two checkpoints."""
    from blockdrop.checkpoint import load_blockdrop_net
    from blockdrop.recipes import reproduce as rep

    p = TINY.replace(
        adapt=dataclasses.replace(TINY.adapt, soup=0.3), gammas=(1.0,), finetune=None, baselines=NO_BASELINES
    )
    out = tmp_path / "soup"
    logs: list[str] = []
    report = rep.reproduce(
        p,
        "resnet8",
        tiny["train"],
        tiny["test"],
        tiny["weights"],
        out,
        device="cpu",
        progress=False,
        log=logs.append,
    )
    sa = load_blockdrop_net(out / "adapt" / "backbone.safetensors")[0].backbone.state_dict()
    sf = load_blockdrop_net(out / "baselines" / "full.safetensors")[0].backbone.state_dict()
    final = blockdrop.load(report["checkpoint"]).backbone.state_dict()
    assert not torch.equal(sa["conv1.weight"], sf["conv1.weight"])
    for k, t in sa.items():
        ref = t.double() * 0.7 + sf[k].double() * 0.3 if t.is_floating_point() else t
        torch.testing.assert_close(final[k].double(), ref.double(), rtol=1e-6, atol=1e-7, msg=k)
    assert any("[soup]" in line for line in logs)
    logs.clear()
    rep.reproduce(
        p,
        "resnet8",
        tiny["train"],
        tiny["test"],
        tiny["weights"],
        out,
        device="cpu",
        progress=False,
        resume=True,
        log=logs.append,
    )
    assert any(line.startswith("[soup] reusing") for line in logs), logs


def test_soup_averages_with_the_full_network_before_its_finetune_steps(tiny, tmp_path) -> None:
    """With finetune steps the full baseline trains past the adapt stage's point; the soup takes
    it as it was there (baselines/full_adapt), not the final baseline (float64 reference); with
    selection.include_curriculum off the curriculum's policy is no validation candidate."""
    from blockdrop.checkpoint import load_blockdrop_net
    from blockdrop.recipes import reproduce as rep

    p = TINY.replace(
        adapt=dataclasses.replace(TINY.adapt, soup=0.3),
        gammas=(1.0,),
        finetune=dataclasses.replace(TINY.finetune, steps=2),
        baselines=NO_BASELINES,
        selection=dataclasses.replace(TINY.selection, include_curriculum=False),
    )
    out = tmp_path / "soupft"
    report = rep.reproduce(
        p, "resnet8", tiny["train"], tiny["test"], tiny["weights"], out, device="cpu", progress=False
    )
    sa = load_blockdrop_net(out / "adapt" / "backbone.safetensors")[0].backbone.state_dict()
    mid = load_blockdrop_net(out / "baselines" / "full_adapt.safetensors")[0].backbone.state_dict()
    end = load_blockdrop_net(out / "baselines" / "full.safetensors")[0].backbone.state_dict()
    souped = load_blockdrop_net(out / "adapt" / "souped.safetensors")[0].backbone.state_dict()
    assert not torch.equal(mid["conv1.weight"], end["conv1.weight"])
    for k, t in sa.items():
        ref = t.double() * 0.7 + mid[k].double() * 0.3 if t.is_floating_point() else t
        torch.testing.assert_close(souped[k].double(), ref.double(), rtol=1e-6, atol=1e-7, msg=k)
    # include_curriculum=False: only the finetuned policies compete on validation
    assert {q["stage"] for q in report["val"]["points"]} == {"finetune"}


def test_reproduce_rejects_bad_settings(tiny, tmp_path) -> None:
    """A bad setting is a ValueError naming it, in the library and (one line, exit 2, nothing
    written) on the command line."""
    import subprocess
    import sys

    with pytest.raises(ValueError, match="max_blocks"):
        SelectionConfig(max_blocks=1.5)
    with pytest.raises(ValueError, match="rule 'budget'.*max_blocks"):
        SelectionConfig(rule="budget")
    with pytest.raises(ValueError, match="rule: expected one of tolerance, budget"):
        SelectionConfig(rule="most")
    base = [
        sys.executable,
        "-m",
        "blockdrop",
        "reproduce",
        "--arch",
        "resnet8",
        "--train-data",
        str(tiny["train"]),
        "--test-data",
        str(tiny["test"]),
        "--weights",
        str(tiny["weights"]),
        "--out",
        str(tmp_path / "c"),
        "--preset",
        "official",
    ]
    for extra, want in (
        (["--set", "selection.max_blocks=0"], "max_blocks"),
        (["--set", "selection.rule=budget"], "max_blocks"),
        (["--set", "selection.rule=most"], "rule"),
        (["--set", "adapt.steps=3"], "adapt does not run"),
        (["--set", "curriculum.stps=1"], "unknown setting 'stps'"),
        (["--val-baselines"], "--val-baselines: only without --test-data"),
    ):
        r = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and want in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "c").exists()


def test_a_run_without_a_test_set_compares_its_baselines_on_validation(tiny, tmp_path) -> None:
    """No test set: the run stops at ``validation.json``; with ``val_baselines`` it trains the
    baselines and compares them with the chosen BlockDrop model on the validation images, each
    accuracy and paired difference equal to a plain forward of the checkpoints counted here."""
    from blockdrop.recipes import reproduce as rep

    args = (TINY, "resnet8", tiny["train"], None, tiny["weights"])
    kw = dict(device="cpu", progress=False, log=lambda s: None, val_data=tiny["val"])
    plain = rep.reproduce(*args, tmp_path / "plain", **kw)
    assert plain["validation_only"] and "results" not in plain
    assert not (tmp_path / "plain" / "report.json").exists()
    assert not list((tmp_path / "plain" / "baselines").glob("static_k*"))  # only the full network
    out = tmp_path / "vb"
    v = rep.reproduce(*args, out, family_weights=[tiny["family"]], val_baselines=True, **kw)
    assert v == json.loads((out / "validation.json").read_text())
    assert v["minutes_total"] > v["minutes"] > 0 and "baseline_val" in v["stage_minutes"]
    assert not (out / "report.json").exists()
    rows = v["results"]
    methods = [r["method"] for r in rows]
    assert methods[:2] == ["full", "blockdrop"]
    ks = {min(3, max(1, round(v["chosen"]["blocks_mean"]) + off)) for off in (0, -1)}
    assert sorted(r["blocks_mean"] for r in rows if r["method"] == "static_k") == sorted(ks)
    assert {"first_k", "random_k", "family"} <= set(methods)
    assert rows[1]["accuracy"] == v["chosen"]["accuracy"] and "vs_blockdrop" not in rows[1]
    assert rows[0]["accuracy"] == v["full"]["accuracy"]
    correct = functools.partial(_correct_on, tiny["val"])
    bd = correct(out / "blockdrop.safetensors")
    assert rows[1]["accuracy"] == pytest.approx(bd.float().mean().item())
    ckpts = {"full": out / "baselines" / "full.safetensors"}
    ckpts.update(
        {
            r["name"]: out / "baselines" / f"static_k{int(r['blocks_mean'])}.safetensors"
            for r in rows
            if r["method"] == "static_k"
        }
    )
    ckpts.update(
        {r["name"]: out / "baselines" / "family_r8b.safetensors" for r in rows if r["method"] == "family"}
    )
    assert len(ckpts) == 2 + len(ks)
    assert any(r["accuracy"] != rows[1]["accuracy"] for r in rows)  # so that a flipped sign shows
    for r in rows[2:] + rows[:1]:  # each minus BlockDrop
        assert r["vs_blockdrop"]["diff"] == pytest.approx(r["accuracy"] - rows[1]["accuracy"]), r["name"]
    for r in rows:
        assert r["ms_per_image"] > 0 and r["best_chunk"] in (2, 4)
        assert r["measured_speedup_best_vs_best"] == pytest.approx(
            rows[0]["ms_per_image"] / r["ms_per_image"]
        )
        if r["name"] in ckpts:
            c = correct(ckpts[r["name"]])
            assert r["accuracy"] == pytest.approx(c.float().mean().item()), r["name"]
            d = r["vs_blockdrop"]
            assert (d["a_only"], d["b_only"], d["n"]) == (int((c & ~bd).sum()), int((bd & ~c).sum()), 9)
    # the test run that follows reuses every model, and holds the same validation numbers
    logs: list[str] = []
    kw_resume = {**kw, "log": logs.append, "resume": True, "family_weights": [tiny["family"]]}
    with_test = (TINY, "resnet8", tiny["train"], tiny["test"], tiny["weights"])
    report = rep.reproduce(*with_test, out, **kw_resume)
    assert not [line for line in logs if "steps as the" in line or "finetune steps" in line], logs
    val_of = {r["name"]: r for r in rows}  # FirstK/RandomK too: each evaluation starts from the seed
    for r in report["results"]:
        if r["name"] in val_of:
            assert r["val_accuracy"] == val_of[r["name"]]["accuracy"], r["name"]
            if "vs_blockdrop" in r:
                assert r["vs_blockdrop"]["val"] == val_of[r["name"]]["vs_blockdrop"], r["name"]
    assert len(val_of) >= 6
    with pytest.raises(ValueError, match="val_baselines: only for a run without test_data"):
        rep.reproduce(*with_test, tmp_path / "x", val_baselines=True, **kw)
    assert not (tmp_path / "x").exists()


def test_finetune_distils_from_the_backbone_it_starts_from(tiny, tmp_path, monkeypatch) -> None:
    """The joint stage's soft targets come from the backbone BlockDrop starts from (as the adapt
    stage saved it), tensor for tensor, not from the full network finetuned alike."""
    from blockdrop.checkpoint import load_blockdrop_net
    from blockdrop.recipes import policy_stage, reproduce as rep

    seen: list[dict[str, torch.Tensor]] = []
    real = policy_stage.Trainer

    def spy(cfg, *a, teacher=None, **kw):
        if cfg.stage == "finetune":
            seen.append({k: v.detach().clone() for k, v in teacher.state_dict().items()})
        return real(cfg, *a, teacher=teacher, **kw)

    monkeypatch.setattr(policy_stage, "Trainer", spy)
    p = TINY.replace(gammas=(1.0,), baselines=NO_BASELINES)
    out = tmp_path / "teacher"
    rep.reproduce(
        p, "resnet8", tiny["train"], tiny["test"], tiny["weights"], out, device="cpu", progress=False
    )
    want = load_blockdrop_net(out / "adapt/backbone.safetensors")[0].backbone.state_dict()
    other = load_blockdrop_net(out / "baselines/full.safetensors")[0].backbone.state_dict()
    assert len(seen) == 1 and not torch.equal(want["conv1.weight"], other["conv1.weight"])
    for k, t in want.items():
        assert torch.equal(seen[0][k], t), k
