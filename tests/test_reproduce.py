"""``blockdrop reproduce`` on tiny data: every stage runs, the report holds what it promises, the
test set is evaluated once, resume reuses the stages, and the checkpoints load back."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import blockdrop
from blockdrop.recipes.presets import PRESETS, Preset, get_preset
from blockdrop.recipes.report import REPORT_KEYS

TINY = Preset(name="tiny", summary="test", n_val=12, batch_size=8, adapt_steps=2, adapt_distill=0.5, cl_step=2,
              cl_steps_per_epoch=1, cl_extra_epochs=0, ft_steps=6, ft_distill=0.5, ft_alpha=0.9,
              ft_backbone_on="greedy", gammas=(1.0, 5.0), thresholds=(0.4, 0.5), amp="off")


@pytest.fixture(scope="module")
def tiny(tiny_recipe_data: dict[str, Path]) -> dict[str, Path]:
    return tiny_recipe_data


def test_ft_schedule_makes_the_requested_steps() -> None:
    from blockdrop.recipes.stages import ft_schedule
    assert ft_schedule(500, 351) == (2, 250)
    assert ft_schedule(100, 351) == (1, 100)
    assert ft_schedule(7, 3) == (3, 3)        # 9 >= 7, the fewest epochs of at most 3
    for steps, nb in [(1, 1), (13, 5), (351, 351), (352, 351), (1000, 7)]:
        e, s = ft_schedule(steps, nb)
        assert s <= nb and steps <= e * s < steps + e
    with pytest.raises(ValueError, match="steps"):
        ft_schedule(0, 5)


def test_presets_are_complete_and_named() -> None:
    assert set(PRESETS) == {"quick", "cpu", "gpu", "official"}
    off = get_preset("official")
    # the authors' schedule: no adaptation, no distillation, whole-epoch curriculum of 5000 epochs
    # at batch 2048 with gamma 1, finetune 2000 epochs at batch 256 with gamma 5, masked forward
    assert (off.adapt_steps, off.ft_distill, off.cl_epochs, off.cl_batch_size, off.cl_gamma,
            off.cl_steps_per_epoch, off.ft_epochs, off.batch_size, off.gammas, off.strategy,
            off.ft_alpha, off.ft_backbone_on) == (
        0, 0.0, 5000, 2048, 1.0, None, 2000, 256, (5.0,), "masked", 0.8, "sample")
    with pytest.raises(ValueError, match="preset"):
        get_preset("fast")
    with pytest.raises(ValueError, match="ft_backbone_on"):
        off.with_overrides(ft_backbone_on="both")
    with pytest.raises(ValueError, match="ft_alpha"):
        off.with_overrides(ft_alpha=0.3)


def test_reproduce_end_to_end_on_tiny_data(tiny: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    from blockdrop.recipes import reproduce as rep
    evaluated: list[str] = []
    from blockdrop.recipes import stages
    real = stages.evaluate_on

    def spy(run, net, data):
        evaluated.append(data.source)
        return real(run, net, data)

    monkeypatch.setattr(stages, "evaluate_on", spy)
    out = tmp_path / "run"
    logs: list[str] = []
    report = rep.reproduce(TINY, "resnet8", tiny["train"], tiny["test"], tiny["weights"], out,
                           device="cpu", progress=False, speed_batch=4, log=logs.append)
    on_disk = json.loads((out / "report.json").read_text())
    # the full baseline sees the adapt stage's batches: the pretrained teacher runs once per step
    assert any("replayed from the adapt stage: 2 of 2 steps" in line for line in logs), logs
    # the finetune makes the preset's steps although they exceed one epoch (36 images / 8 = 4)
    from blockdrop.checkpoint import read_meta
    for g in TINY.gammas:
        meta = read_meta(out / f"gamma{g:g}" / "finetune")
        assert meta["progress"]["global_step"] == TINY.ft_steps
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
    assert [(r["gamma"], r["threshold"]) for r in bd
            if r["threshold"] == 0.5 and r["stage"] == "finetune"] == [(1.0, 0.5), (5.0, 0.5)]
    chosen = [r for r in bd if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["accuracy"] == report["accuracy"]
    assert (chosen[0]["gamma"], chosen[0]["threshold"]) == (report["gamma"], report["threshold"])
    pts = report["val"]["points"]
    # every threshold of each finetuned gamma, and of the curriculum (a candidate stage), on validation
    for stage, g in [("finetune", 1.0), ("finetune", 5.0), ("curriculum", TINY.cl_gamma)]:
        ts = {q["threshold"] for q in pts if q["stage"] == stage and q["gamma"] == g}
        assert set(TINY.thresholds) <= ts, (stage, g, ts)
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
    # FirstK / RandomK at every shown point's validation block count
    base = [r for r in rows if r["method"] in ("first_k", "random_k")]
    assert len(base) == 2 * len(bd)
    for r in base:
        match = [b for b in bd if b["gamma"] == r["gamma"] and b["threshold"] == r["threshold"]]
        assert r["k"] == pytest.approx(match[0]["val_blocks"])
    assert blockdrop.load(report["checkpoint"]).threshold == report["threshold"]
    # the test set: once per model, after every validation evaluation
    n_test = sum(1 for s in evaluated if "test" in s and "held out" not in s)
    assert n_test == len(report["results"])
    first_test = next(i for i, s in enumerate(evaluated) if "held out" not in s)
    assert all("held out" not in s for s in evaluated[first_test:])
    for name in ("report.md", "tradeoff.png", "block_usage.png", "policy_grid.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert re.search(r"\| BlockDrop( \(chosen\))? \| 1 \|", md) and md.count("(chosen)") == 1
    # the final checkpoint reproduces the reported test accuracy
    net = blockdrop.load(report["checkpoint"])
    from blockdrop.data import load_dataset, make_loader
    from blockdrop.evaluation.evaluate import evaluate
    res = evaluate(net, make_loader(load_dataset(tiny["test"], "test").dataset, 5, train=False),
                   full=False, flops=False, progress=False)
    assert res.accuracy == pytest.approx(report["accuracy"])
    # the paired comparison with the full network: the discordant images, counted here
    fres = evaluate(blockdrop.load(rows[0]["checkpoint"]),
                    make_loader(load_dataset(tiny["test"], "test").dataset, 5, train=False),
                    full=False, flops=False, progress=False)
    a, b = res.correct, fres.correct
    vs = report["vs_full"]["test"]
    assert (vs["a_only"], vs["b_only"], vs["n"]) == (int((a & ~b).sum()), int((b & ~a).sum()), 12)
    assert vs["diff"] == pytest.approx(report["accuracy"] - report["full_accuracy"])
    assert report["vs_full"]["val"]["n"] == TINY.n_val
    assert report["accuracy_se"] == pytest.approx((res.accuracy * (1 - res.accuracy) / 12) ** 0.5)
    assert "BlockDrop - full network, on the same images" in md
    # every stage's model loads
    for r in report["results"]:
        assert blockdrop.load(r["checkpoint"]).backbone.num_blocks == 3
    # resume: no stage runs again, same numbers
    logs.clear()
    again = rep.reproduce(TINY, "resnet8", tiny["train"], tiny["test"], tiny["weights"], out,
                          device="cpu", progress=False, speed_batch=4, resume=True, log=logs.append)
    assert sum("reusing" in line for line in logs) == 1 + 1 + 2 + len(base)
    assert [r["accuracy"] for r in again["results"]] == [r["accuracy"] for r in report["results"]]


def test_soup_full_starts_blockdrop_from_the_weight_average(tiny, tmp_path) -> None:
    """soup_full = s: the curriculum's (frozen) backbone is (1 - s) x adapted + s x the full
    network finetuned alike, each tensor as computed here in float64 from the two checkpoints."""
    from blockdrop.checkpoint import load_blockdrop_net
    from blockdrop.recipes import reproduce as rep
    p = TINY.with_overrides(soup_full=0.3, gammas=(1.0,), ft_steps=0, first_random_k=False)
    out = tmp_path / "soup"
    logs: list[str] = []
    report = rep.reproduce(p, "resnet8", tiny["train"], tiny["test"], tiny["weights"], out,
                           device="cpu", progress=False, speed_batch=4, log=logs.append)
    sa = load_blockdrop_net(out / "adapt" / "backbone.safetensors")[0].backbone.state_dict()
    sf = load_blockdrop_net(out / "baselines" / "full.safetensors")[0].backbone.state_dict()
    final = blockdrop.load(report["checkpoint"]).backbone.state_dict()
    assert not torch.equal(sa["conv1.weight"], sf["conv1.weight"])
    for k, t in sa.items():
        ref = t.double() * 0.7 + sf[k].double() * 0.3 if t.is_floating_point() else t
        torch.testing.assert_close(final[k].double(), ref.double(), rtol=1e-6, atol=1e-7, msg=k)
    assert any("[soup]" in line for line in logs)
    logs.clear()
    rep.reproduce(p, "resnet8", tiny["train"], tiny["test"], tiny["weights"], out, device="cpu",
                  progress=False, speed_batch=4, resume=True, log=logs.append)
    assert any(line.startswith("[soup] reusing") for line in logs), logs


def test_soup_averages_with_the_full_network_before_its_finetune_steps(tiny, tmp_path) -> None:
    """With finetune steps the full baseline trains past the adapt stage's point; the soup takes
    it as it was there (baselines/full_adapt), not the final baseline (float64 reference); with
    ft_cl_candidate off the curriculum's policy is no validation candidate."""
    from blockdrop.checkpoint import load_blockdrop_net
    from blockdrop.recipes import reproduce as rep
    p = TINY.with_overrides(soup_full=0.3, gammas=(1.0,), ft_steps=2, first_random_k=False,
                            ft_cl_candidate=False)
    out = tmp_path / "soupft"
    report = rep.reproduce(p, "resnet8", tiny["train"], tiny["test"], tiny["weights"], out,
                  device="cpu", progress=False, speed_batch=4)
    sa = load_blockdrop_net(out / "adapt" / "backbone.safetensors")[0].backbone.state_dict()
    mid = load_blockdrop_net(out / "baselines" / "full_adapt.safetensors")[0].backbone.state_dict()
    end = load_blockdrop_net(out / "baselines" / "full.safetensors")[0].backbone.state_dict()
    souped = load_blockdrop_net(out / "adapt" / "souped.safetensors")[0].backbone.state_dict()
    assert not torch.equal(mid["conv1.weight"], end["conv1.weight"])
    for k, t in sa.items():
        ref = t.double() * 0.7 + mid[k].double() * 0.3 if t.is_floating_point() else t
        torch.testing.assert_close(souped[k].double(), ref.double(), rtol=1e-6, atol=1e-7, msg=k)
    # ft_cl_candidate=False: only the finetuned policies compete on validation
    assert {q["stage"] for q in report["val"]["points"]} == {"finetune"}


def test_cl_on_adapted_learns_over_the_adapted_backbone_and_executes_on_the_average(tiny, tmp_path) -> None:
    """cl_on_adapted: the curriculum's trainer holds the adapted backbone (tensor for tensor as the
    adapt stage saved it), the reported model carries that trainer's policy on the weight average
    (float64 reference); without the flag the trainer holds the average itself."""
    from blockdrop.checkpoint import load_blockdrop_net
    from blockdrop.recipes import reproduce as rep
    base = TINY.with_overrides(soup_full=0.3, gammas=(1.0,), ft_steps=0, first_random_k=False)
    with pytest.raises(ValueError, match="cl_on_adapted.*soup_full"):
        TINY.with_overrides(cl_on_adapted=True)
    runs: dict[bool, tuple] = {}
    for flag in (False, True):
        out = tmp_path / f"swap{int(flag)}"
        logs: list[str] = []
        runs[flag] = (out, logs, rep.reproduce(base.with_overrides(cl_on_adapted=flag), "resnet8",
                                               tiny["train"], tiny["test"], tiny["weights"], out,
                                               device="cpu", progress=False, speed_batch=4,
                                               log=logs.append))
    out, logs, report = runs[True]
    sa = load_blockdrop_net(out / "adapt" / "backbone.safetensors")[0].backbone.state_dict()
    sf = load_blockdrop_net(out / "baselines" / "full.safetensors")[0].backbone.state_dict()
    trainer = load_blockdrop_net(out / "gamma1" / "curriculum" / "last.safetensors")[0]
    final = blockdrop.load(report["checkpoint"])
    for k, t in sa.items():
        torch.testing.assert_close(trainer.backbone.state_dict()[k], t, rtol=0, atol=0, msg=k)
        ref = t.double() * 0.7 + sf[k].double() * 0.3 if t.is_floating_point() else t
        torch.testing.assert_close(final.backbone.state_dict()[k].double(), ref.double(),
                                   rtol=1e-6, atol=1e-7, msg=k)
    for k, t in trainer.policy_net.state_dict().items():
        torch.testing.assert_close(final.policy_net.state_dict()[k], t, rtol=0, atol=0, msg=k)
    # the two backbones differ, so the trainer's holding the adapted one says what it learnt over
    assert not torch.equal(final.backbone.state_dict()["conv1.weight"], sa["conv1.weight"])
    own = load_blockdrop_net(runs[False][0] / "gamma1" / "curriculum" / "last.safetensors")[0]
    assert torch.equal(own.backbone.state_dict()["conv1.weight"], final.backbone.state_dict()["conv1.weight"])
    # every validation point's checkpoint is the executed model, not the trainer's
    executed = out / "gamma1" / "curriculum" / "executed.safetensors"
    assert all(r["checkpoint"] in (str(executed), report["checkpoint"])
               for r in report["results"] if r["method"] == "blockdrop")
    assert any("before averaging" in line for line in logs)
    logs.clear()
    again = rep.reproduce(base.with_overrides(cl_on_adapted=True), "resnet8", tiny["train"],
                          tiny["test"], tiny["weights"], out, device="cpu", progress=False,
                          speed_batch=4, resume=True, log=logs.append)
    assert any(line.startswith("[gamma 1] reusing") and "executed" in line for line in logs), logs
    assert again["accuracy"] == report["accuracy"] and again["blocks_mean"] == report["blocks_mean"]


def test_recipe_variant_script_reports_validation_only(tiny, tmp_path) -> None:
    """scripts/recipe_variant.py runs the preset's stages with overrides and reports validation
    accuracies: the adapted backbone's equals a plain forward over the validation split."""
    import importlib.util
    from blockdrop.checkpoint import load_blockdrop_net
    from blockdrop.data import load_dataset, make_loader, split_train_val
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("recipe_variant", root / "scripts" / "recipe_variant.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sets = ["n_val=12", "batch_size=8", "adapt_steps=30", "adapt_lr=0.05", "adapt_distill=0.5",
            "cl_step=2", "cl_steps_per_epoch=1", "cl_extra_epochs=0", "thresholds=[0.4, 0.5]",
            "gammas=[1.0]", "cl_draws=1", "amp=off"]
    out = tmp_path / "variant"
    res = mod.main(["--arch", "resnet8", "--train-data", str(tiny["train"]), "--weights",
                    str(tiny["weights"]), "--out", str(out), "--full"]
                   + [a for s in sets for a in ("--set", s)])
    assert json.loads((out / "variant.json").read_text()) == json.loads(json.dumps(res))
    assert res["overrides"] == sets and list(res["gammas"]) == ["1.0"]
    assert {q["threshold"] for q in res["gammas"]["1.0"]} >= {0.4, 0.5}
    backbone = load_blockdrop_net(out / "adapt" / "backbone.safetensors")[0].backbone.eval()
    _, val = split_train_val(load_dataset(tiny["train"], "train", seed=0), 12, seed=0)
    hits = n = 0
    with torch.no_grad():
        for x, y in make_loader(val.dataset, 5, train=False):
            hits += int((backbone(x).argmax(1) == y).sum())
            n += len(y)
    # trained off chance (a constant prediction scores exactly 4 of the 12 stratified images)
    assert n == 12 and hits != 4 and res["adapted_val"] == pytest.approx(hits / n)
    with pytest.raises(SystemExit, match="--set"):
        mod.main(["--arch", "resnet8", "--train-data", str(tiny["train"]), "--weights",
                  str(tiny["weights"]), "--out", str(tmp_path / "x"), "--set", "adapt_stps=1"])


def test_domain_proxy_script_evaluates_clean_and_reencoded_validation(tiny, tmp_path) -> None:
    """scripts/domain_proxy.py adapts on re-encoded training images and evaluates the held-out
    validation images as they are (C) and re-encoded (D): the pretrained network's accuracies on
    both equal plain forwards over images re-encoded here with PIL."""
    import importlib.util
    import io
    import numpy as np
    from PIL import Image
    from blockdrop.checkpoint import load_backbone
    from blockdrop.data import load_dataset, split_train_val
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("domain_proxy", root / "scripts" / "domain_proxy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sets = ["n_val=12", "batch_size=8", "adapt_steps=3", "cl_step=2", "cl_steps_per_epoch=1",
            "cl_extra_epochs=0", "thresholds=[0.5]", "cl_draws=1", "amp=off"]
    res = mod.main(["--arch", "resnet8", "--train-data", str(tiny["train"]), "--weights",
                    str(tiny["weights"]), "--out", str(tmp_path / "p"), "--quality", "10"]
                   + [a for s in sets for a in ("--set", s)])
    _, val = split_train_val(load_dataset(tiny["train"], "train", seed=0), 12, seed=0)
    ds = val.dataset
    net = load_backbone(tiny["weights"], "resnet8", 3)[0].eval()

    def acc(images: torch.Tensor) -> float:
        x = torch.stack([ds.transform(im, None) for im in images])
        with torch.no_grad():
            return float((net(x).argmax(1) == ds.labels).float().mean())

    def jpeg(im: torch.Tensor) -> torch.Tensor:
        buf = io.BytesIO()
        Image.fromarray(im.numpy()).save(buf, "JPEG", quality=10)
        return torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))

    d_images = torch.stack([jpeg(im) for im in ds.images])
    # the two accuracies alone could agree by chance on 12 images: the images themselves must not
    assert (d_images.float() - ds.images.float()).abs().mean() > 1.0
    assert torch.equal(mod.reencode(ds.images, 10), d_images)
    assert res["pretrained"]["C"] == pytest.approx(acc(ds.images))
    assert res["pretrained"]["D"] == pytest.approx(acc(d_images))
    assert [q["threshold"] for q in res["points"]] == [0.5]
    assert (tmp_path / "p" / "proxy.json").is_file()


def test_reproduce_rejects_a_bad_block_budget(tiny, tmp_path) -> None:
    import subprocess
    import sys
    from blockdrop.recipes import reproduce as rep
    with pytest.raises(ValueError, match="max_blocks"):
        rep.reproduce(TINY, "resnet8", tiny["train"], tiny["test"], tiny["weights"], tmp_path / "o",
                      device="cpu", progress=False, max_blocks=1.5)
    r = subprocess.run([sys.executable, "-m", "blockdrop", "reproduce", "--arch", "resnet8",
                        "--train-data", str(tiny["train"]), "--test-data", str(tiny["test"]),
                        "--weights", str(tiny["weights"]), "--out", str(tmp_path / "c"),
                        "--max-blocks", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--max-blocks" in r.stderr and "(0, 1]" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "c").exists()


def test_reproduce_rejects_a_budget_rule_without_a_budget(tiny, tmp_path) -> None:
    import subprocess
    import sys
    from blockdrop.recipes import reproduce as rep
    assert TINY.max_blocks is None
    with pytest.raises(ValueError, match="select_rule 'budget'.*max_blocks"):
        rep.reproduce(TINY, "resnet8", tiny["train"], tiny["test"], tiny["weights"], tmp_path / "o",
                      device="cpu", progress=False, select_rule="budget")
    with pytest.raises(ValueError, match="select_rule: expected one of tolerance, budget"):
        rep.reproduce(TINY, "resnet8", tiny["train"], tiny["test"], tiny["weights"], tmp_path / "o",
                      device="cpu", progress=False, select_rule="most")
    base = [sys.executable, "-m", "blockdrop", "reproduce", "--arch", "resnet8", "--train-data",
            str(tiny["train"]), "--test-data", str(tiny["test"]), "--weights", str(tiny["weights"]),
            "--out", str(tmp_path / "c"), "--preset", "official"]
    for extra, want in ((["--select", "most"], "--select"),
                        (["--select", "budget"], "--select budget: needs a block budget, --max-blocks")):
        r = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and want in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "c").exists()


@pytest.mark.parametrize("teacher", ["backbone", "full"])
def test_finetune_distils_from_the_preset_teacher(tiny, tmp_path, monkeypatch, teacher: str) -> None:
    """ft_teacher: the joint stage's soft targets come from the backbone it starts from (as the
    adapt stage saved it) or from the full network finetuned alike (as saved), tensor for tensor."""
    from blockdrop.checkpoint import load_blockdrop_net
    from blockdrop.recipes import policy_stage
    from blockdrop.recipes import reproduce as rep
    seen: list[dict[str, torch.Tensor]] = []
    real = policy_stage.Trainer

    def spy(cfg, *a, teacher=None, **kw):
        if cfg.stage == "finetune":
            seen.append({k: v.detach().clone() for k, v in teacher.state_dict().items()})
        return real(cfg, *a, teacher=teacher, **kw)

    monkeypatch.setattr(policy_stage, "Trainer", spy)
    p = TINY.with_overrides(gammas=(1.0,), first_random_k=False, ft_teacher=teacher)
    out = tmp_path / teacher
    rep.reproduce(p, "resnet8", tiny["train"], tiny["test"], tiny["weights"], out, device="cpu",
                  progress=False, speed_batch=4)
    want = load_blockdrop_net(out / ("baselines/full.safetensors" if teacher == "full"
                                     else "adapt/backbone.safetensors"))[0].backbone.state_dict()
    other = load_blockdrop_net(out / ("adapt/backbone.safetensors" if teacher == "full"
                                      else "baselines/full.safetensors"))[0].backbone.state_dict()
    assert len(seen) == 1 and not torch.equal(want["conv1.weight"], other["conv1.weight"])
    for k, t in want.items():
        assert torch.equal(seen[0][k], t), k
    with pytest.raises(ValueError, match="ft_teacher"):
        TINY.with_overrides(ft_teacher="pretrained")
