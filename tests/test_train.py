"""Trainer: curriculum masking, frozen backbone, finetuning, checkpoints, exact resume, DDP."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _helpers import oracle, subprocess_env, tiny_image_folder, write_cifar_weights
from blockdrop.checkpoint import load_checkpoint, save_checkpoint
from blockdrop.data import DataInfo, ImageArrayDataset, SmallImageTransform
from blockdrop.models import cifar_resnet
from blockdrop.models.policy import CifarPolicyNet
from blockdrop.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def tiny_data(n: int = 24, size: int = 16, classes: int = 3, train: bool = True, seed: int = 0) -> DataInfo:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % classes
    ds = ImageArrayDataset(images, labels, SmallImageTransform(train, pad=2), seed=seed)
    return DataInfo(ds, [str(i) for i in range(classes)], size, "tiny")


def make_models(depth: int = 14, seed: int = 0) -> tuple[CifarPolicyNet, torch.nn.Module]:
    torch.manual_seed(seed)
    backbone = cifar_resnet(depth, num_classes=3).eval()
    return CifarPolicyNet(backbone.num_blocks, width=8), backbone


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, steps_per_epoch=3, batch_size=4, progress=False, device="cpu", log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def snapshot(*mods: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(mods) for k, v in m.state_dict().items()}


def test_config_defaults_are_the_official_settings() -> None:
    # Tushar-N/blockdrop: cl_training.py (lr 1e-3, beta 0.1, penalty -1, no lr decay) and
    # finetune.py (lr 1e-4, penalty -5, rnet.train(), lr x0.1 at epoch 1600 of 2000)
    c = TrainConfig(stage="curriculum")
    assert (c.lr, c.beta, c.alpha, c.gamma, c.cl_step, c.lr_decay_at) == (1e-3, 0.1, 0.8, 1.0, 1, None)
    f = TrainConfig(stage="finetune")
    assert (f.lr, f.beta, f.gamma, f.bn, f.lr_decay_at, f.lr_decay) == (1e-4, 0.0, 5.0, "train", 0.8, 0.1)
    assert (f.baseline_eval, f.distill) == (False, 0.0)
    assert (c.batch_size, f.batch_size) == (2048, 256)  # official CIFAR batch sizes
    with pytest.raises(ValueError):
        TrainConfig(stage="pretrain")
    with pytest.raises(ValueError):
        TrainConfig(bn="sometimes")
    with pytest.raises(ValueError):
        TrainConfig(stage="curriculum", distill=0.5)


def test_finetune_lr_drops_tenfold_at_80_percent() -> None:
    f = TrainConfig(stage="finetune", lr=1e-4)
    # official: epoch 1600 of 2000 is the first at lr 1e-5
    assert [f.lr_at(e, 2000) for e in (0, 1599, 1600, 1999)] == [
        1e-4,
        1e-4,
        pytest.approx(1e-5),
        pytest.approx(1e-5),
    ]
    c = TrainConfig(stage="curriculum")
    assert c.lr_at(4999, 5000) == 1e-3


def test_trainer_applies_the_lr_schedule(tmp_path: Path) -> None:
    pnet, bb = make_models()
    seen: list[float] = []
    tr = Trainer(
        cfg(stage="finetune", epochs=1, steps_per_epoch=5, lr=1e-3, bn="frozen"),
        pnet,
        bb,
        tiny_data(),
        tmp_path,
    )
    tr.fit(on_step=lambda t: seen.append(t.optimizer.param_groups[0]["lr"]))
    assert seen == [1e-3] * 4 + [pytest.approx(1e-4)]


def test_finetune_baseline_pass_mode(tmp_path: Path, monkeypatch) -> None:
    """Official: the self-critical pass runs with BN in train mode; baseline_eval runs it in eval."""
    import blockdrop.training.train_step as train_mod

    modes: list[bool] = []
    real = train_mod.dynamic_forward

    def spy(model, x, policy, strategy="auto"):
        if not torch.is_grad_enabled():
            modes.append(model.training)
        return real(model, x, policy, strategy=strategy)

    monkeypatch.setattr(train_mod, "dynamic_forward", spy)
    for baseline_eval, expected in ((False, True), (True, False)):
        modes.clear()
        pnet, bb = make_models()
        Trainer(
            cfg(stage="finetune", epochs=1, steps_per_epoch=1, baseline_eval=baseline_eval),
            pnet,
            bb,
            tiny_data(),
            tmp_path / str(baseline_eval),
        ).fit()
        assert modes == [expected]


def test_finetune_distillation_loss_matches_formula(tmp_path: Path) -> None:
    from blockdrop.training.train_step import BlockDropStep as _Step

    pnet, bb = make_models()
    teacher = cifar_resnet(14, num_classes=3).eval()
    c = cfg(stage="finetune", bn="frozen", distill=0.25, temperature=3.0)
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    logits = torch.randn(6, 3, dtype=torch.float64)
    step = _Step(pnet, bb, c, teacher)
    got = step._backbone_loss(x, logits.float(), y)
    with torch.no_grad():
        t = teacher(x).double()
    q = torch.softmax(t / 3.0, 1)
    kl = (q * (q.log() - torch.log_softmax(logits / 3.0, 1))).sum(1).mean() * 9.0
    ce = -torch.log_softmax(logits, 1)[torch.arange(6), y].mean()
    torch.testing.assert_close(got.double(), 0.75 * ce + 0.25 * kl, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        Trainer(c, pnet, bb, tiny_data(), tmp_path)


def test_curriculum_learns_only_the_last_blocks_and_freezes_backbone(tmp_path: Path) -> None:
    pnet, bb = make_models()
    before = snapshot(pnet, bb)
    # beta = 0: only the log-probabilities of the learned blocks reach the policy head
    tr = Trainer(
        cfg(stage="curriculum", epochs=1, steps_per_epoch=2, cl_step=2, beta=0.0),
        pnet,
        bb,
        tiny_data(),
        tmp_path,
    )
    assert tr.curriculum_mask(0).tolist() == [False] * 4 + [True] * 2
    assert tr.curriculum_mask(2) is None  # 3 * 2 >= K = 6: everything learned
    tr.fit()
    after = snapshot(pnet, bb)
    for k, v in before.items():
        if k.startswith("1."):
            assert torch.equal(v, after[k]), f"backbone changed in curriculum: {k}"
    w0, w1 = before["0.fc.weight"], after["0.fc.weight"]
    assert torch.equal(w0[:4], w1[:4]) and torch.equal(before["0.fc.bias"][:4], after["0.fc.bias"][:4])
    assert not torch.equal(w0[4:], w1[4:])
    assert not bb.training  # backbone left in eval mode
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,split,loss,reward,acc,blocks") and len(rows) == 3


def test_curriculum_entropy_bonus_reaches_every_block_as_officially(tmp_path: Path) -> None:
    # official cl_training.py: the entropy term is summed over all K blocks, forced ones included
    pnet, bb = make_models()
    w0 = pnet.fc.weight.detach().clone()
    Trainer(
        cfg(stage="curriculum", epochs=1, steps_per_epoch=2, cl_step=2), pnet, bb, tiny_data(), tmp_path
    ).fit()
    assert not torch.equal(w0[:4], pnet.fc.weight[:4])


def test_finetune_trains_policy_and_backbone_through_gather(tmp_path: Path, monkeypatch) -> None:
    import blockdrop.training.train_step as train_mod

    seen: list[str] = []
    real = train_mod.dynamic_forward

    def spy(model, x, policy, strategy="auto"):
        seen.append(strategy)
        return real(model, x, policy, strategy=strategy)

    monkeypatch.setattr(train_mod, "dynamic_forward", spy)
    pnet, bb = make_models()
    before = snapshot(pnet, bb)
    tr = Trainer(
        cfg(stage="finetune", epochs=1, steps_per_epoch=2, lr=1e-2, bn="frozen"),
        pnet,
        bb,
        tiny_data(),
        tmp_path,
        val_data=tiny_data(train=False),
    )
    last = tr.fit()
    after = snapshot(pnet, bb)
    assert not torch.equal(before["1.linear.weight"], after["1.linear.weight"])
    assert not torch.equal(before["0.fc.weight"], after["0.fc.weight"])
    # frozen BN: running statistics unchanged
    assert torch.equal(before["1.bn1.running_mean"], after["1.bn1.running_mean"])
    assert set(seen) == {"gather"} and len(seen) >= 4
    assert last["split"] == "val" and 0 <= last["acc"] <= 1


def _grads(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient (zeros where none reached it)."""
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("backbone_on", ["greedy", "sample"])
def test_finetune_backbone_learns_on_the_chosen_pass(backbone_on: str) -> None:
    from blockdrop.training.train_step import BlockDropStep as _Step

    pnet, bb = make_models(seed=3)
    torch.nn.init.normal_(pnet.fc.weight, std=0.5)  # per-image policies
    bb = bb.double()
    x, y = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.arange(8) % 3
    step = _Step(
        pnet.double(), bb, cfg(stage="finetune", bn="frozen", backbone_on=backbone_on, amp="off")
    ).train()
    step.generator = torch.Generator().manual_seed(0)
    loss, _ = step(x, y, None)
    loss.backward()
    got = _grads(bb)
    with torch.no_grad():
        probs = pnet(x)
    greedy = probs >= 0.5
    assert 0 < greedy.sum() < greedy.numel() and len({tuple(r.tolist()) for r in greedy}) > 1
    bb.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(oracle(bb, x, greedy, grad=True), y).backward()
    want = _grads(bb)
    same = all(torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-7) for n in want)  # the loss is float32
    # greedy: exactly the thresholded (executed) sub-network's gradient; sample: another one
    assert same == (backbone_on == "greedy")


def test_finetune_greedy_pass_in_eval_mode_trains_through_running_statistics() -> None:
    """bn="train" with baseline_eval: the self-critical pass -- here the one the backbone learns
    on -- runs with BatchNorm in eval mode, so its gradient is the per-image one through the
    running statistics that the step leaves (the train-mode sampled pass, which updates them in
    place, must not run between that pass's forward and its backward), and the sampled pass adds
    no gradient of its own."""
    from blockdrop.training.train_step import BlockDropStep as _Step

    pnet, bb = make_models(seed=4)
    torch.nn.init.normal_(pnet.fc.weight, std=0.5)
    bb = bb.double()
    for m in bb.modules():  # running statistics away from 0 / 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    before = bb.bn1.running_mean.clone()
    x, y = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.arange(8) % 3
    step = _Step(
        pnet.double(),
        bb,
        cfg(stage="finetune", bn="train", baseline_eval=True, backbone_on="greedy", amp="off"),
    ).train()
    step.generator = torch.Generator().manual_seed(0)
    loss, _ = step(x, y, None)
    loss.backward()
    got = _grads(bb)
    ref = copy.deepcopy(bb).eval()  # the statistics the step's train-mode pass left
    assert not torch.equal(ref.bn1.running_mean, before)  # ... which did move them
    with torch.no_grad():
        greedy = pnet(x) >= 0.5
    assert 0 < greedy.sum() < greedy.numel()
    torch.nn.functional.cross_entropy(oracle(ref, x, greedy, grad=True), y).backward()
    want = _grads(ref)
    assert all(torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-7) for n in want)
    assert any(float(w.abs().max()) > 0 for w in want.values())


def test_config_rejects_an_unknown_backbone_pass() -> None:
    with pytest.raises(ValueError, match="backbone_on"):
        cfg(stage="finetune", backbone_on="both")


def test_finetune_bn_train_updates_running_stats(tmp_path: Path) -> None:
    pnet, bb = make_models()
    before = snapshot(bb)
    Trainer(
        cfg(stage="finetune", epochs=1, steps_per_epoch=1),
        pnet,
        bb,
        tiny_data(),  # default: train
        tmp_path,
    ).fit()
    assert not torch.equal(before["0.bn1.running_mean"], bb.bn1.running_mean)


def test_checkpoint_is_atomic_and_self_describing(tmp_path: Path) -> None:
    p = save_checkpoint(
        tmp_path / "ck", {"a": torch.arange(3), "b": torch.ones(2, 2)[:, 0]}, {"stage": "x", "n": 3}
    )
    assert p.name == "ck.safetensors" and (tmp_path / "ck.json").is_file()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ck.json", "ck.safetensors"]
    t, meta = load_checkpoint(p)
    assert meta["n"] == 3 and meta["format"].startswith("blockdrop-checkpoint")
    assert json.loads((tmp_path / "ck.json").read_text()) == meta
    assert torch.equal(t["b"], torch.ones(2))


class Killed(Exception):
    pass


@pytest.mark.parametrize(
    "stage,bn,device",
    [
        ("curriculum", "frozen", "cpu"),
        ("finetune", "train", "cpu"),
        pytest.param("finetune", "frozen", "cuda", marks=pytest.mark.gpu),  # AMP + scaler
    ],
)
def test_resume_after_kill_matches_uninterrupted_run(
    tmp_path: Path, stage: str, bn: str, device: str
) -> None:
    if device == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    c = dict(
        stage=stage,
        bn=bn,
        epochs=3,
        steps_per_epoch=3,
        ckpt_every=1,
        seed=7,
        lr=5e-3,
        cl_step=2,
        device=device,
    )
    # uninterrupted
    pnet, bb = make_models(seed=1)
    ref = Trainer(cfg(**c), pnet, bb, tiny_data(), tmp_path / "a")
    saved: list[tuple[int, int]] = []  # on_save runs once each checkpoint is on disk

    def on_save(t: Trainer) -> None:
        saved.append(
            (
                t.global_step,
                load_checkpoint(tmp_path / "a" / "last.safetensors")[1]["progress"]["global_step"],
            )
        )

    ref.fit(on_save=on_save)
    steps = [1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9]  # every step (ckpt_every=1), and each epoch's end
    assert saved == [(s, s) for s in steps]
    ref_state = snapshot(pnet, bb)
    ref_opt = ref.optimizer.state_dict()["state"]

    # killed after step 4 (mid epoch 1), then resumed by a fresh process-like trainer
    pnet, bb = make_models(seed=1)

    def kill(t: Trainer) -> None:
        if t.global_step == 4:
            raise Killed

    with pytest.raises(Killed):
        Trainer(cfg(**c), pnet, bb, tiny_data(), tmp_path / "b").fit(on_step=kill)
    _, meta = load_checkpoint(tmp_path / "b" / "last.safetensors")
    assert meta["progress"]["global_step"] == 4 and meta["progress"]["batch"] == 1
    pnet2, bb2 = make_models(seed=99)  # different init: must be overwritten
    res = Trainer(cfg(**c), pnet2, bb2, tiny_data(), tmp_path / "b")
    res.fit(resume=True)
    assert res.global_step == ref.global_step == 9
    got = snapshot(pnet2, bb2)
    for k, v in ref_state.items():
        assert torch.equal(v, got[k]), f"{k} differs after resume"
    opt = res.optimizer.state_dict()["state"]
    for pid, st in ref_opt.items():
        for k, v in st.items():
            assert torch.equal(v, opt[pid][k]), f"optimizer {pid}.{k} differs"
    a = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()

    def strip(rows: list[str]) -> list[str]:
        return [r.rsplit(",", 1)[0] for r in rows]  # drop the wall-clock column

    assert strip(a) == strip(b)


def test_ddp_two_cpu_processes_gloo(tmp_path: Path) -> None:
    """torchrun, 2 processes, gloo: finetune a tiny model; replicas must stay identical."""
    tiny_image_folder(tmp_path / "data", classes=("a", "b", "c"), learnable=False)
    write_cifar_weights(tmp_path / "r8.th")
    env = {**subprocess_env(), "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "blockdrop",
        "finetune",
        "--data",
        str(tmp_path / "data"),
        "--weights",
        str(tmp_path / "r8.th"),
        "--out",
        str(tmp_path / "out"),
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--no-progress",
        "--threads",
        "1",
        "--lr",
        "1e-2",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _, meta = load_checkpoint(tmp_path / "out" / "last.safetensors")
    assert meta["world_size"] == 2 and meta["progress"]["global_step"] == 4
    assert meta["progress"]["done"]
    t, _ = load_checkpoint(tmp_path / "out" / "last.safetensors")
    assert "rng.policy.0" in t and "rng.policy.1" in t
    assert not torch.equal(t["rng.policy.0"], t["rng.policy.1"])  # ranks sample independently


@pytest.mark.parametrize("kind", ["curriculum", "finetune", "policy_net", "full", "first_k", "random_k"])
def test_blockdrop_load_round_trips_every_checkpoint_kind(tmp_path: Path, kind: str) -> None:
    import blockdrop
    from blockdrop.blockdrop_net import BlockDropNet
    from blockdrop.checkpoint import backbone_spec, save_blockdrop_net
    from blockdrop.training.baselines import BaselinePolicy

    pnet, bb = make_models(seed=3)
    if kind in ("curriculum", "finetune"):
        tr = Trainer(
            cfg(stage=kind, epochs=1, steps_per_epoch=1, lr=1e-2),
            pnet,
            bb,
            tiny_data(),
            tmp_path,
            extra_meta={"backbone_spec": backbone_spec(bb), "policy_spec": pnet.spec()},
        )
        tr.fit()
        path = tmp_path  # a run directory: its last.safetensors
    else:
        policy = pnet if kind == "policy_net" else BaselinePolicy(kind, bb.num_blocks, k=2.5, seed=1)
        path = save_blockdrop_net(tmp_path / "m", BlockDropNet(policy, bb), {"note": kind})
    loaded = blockdrop.load(path)
    assert isinstance(loaded, BlockDropNet) and not loaded.training
    x = torch.randn(5, 3, 16, 16)
    ref_policy = (
        BaselinePolicy(kind, bb.num_blocks, k=2.5, seed=1)
        if kind in ("full", "first_k", "random_k")
        else pnet
    )
    with torch.no_grad():
        ref_policy.eval(), bb.eval()
        expect_p = (ref_policy(x) >= 0.5).float()
        expect = bb(x) if kind == "full" else None
        logits, policy = loaded(x)
    assert torch.equal(policy, expect_p)
    from blockdrop.engine import dynamic_forward

    ref = dynamic_forward(bb, x, expect_p, strategy="masked")
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-5)
    if expect is not None:
        torch.testing.assert_close(logits, expect, rtol=1e-4, atol=1e-5)


def test_curriculum_frees_one_block_per_epoch_over_the_whole_training_set(tmp_path: Path) -> None:
    # official cl_training.py: args.cl_step = 1 + epoch, an epoch being the whole trainloader
    pnet, bb = make_models()
    learned: list[tuple[int, int]] = []
    c = TrainConfig(stage="curriculum", epochs=3, batch_size=4, progress=False, device="cpu")
    tr = Trainer(c, pnet, bb, tiny_data(n=24), tmp_path)
    assert tr.batches_per_epoch == 24 // 4  # no cap: every image once per epoch
    tr.fit(on_step=lambda t: learned.append((t.epoch, int(t.curriculum_mask(t.epoch).sum()))))
    assert learned == [(e, e + 1) for e in range(3) for _ in range(6)]


def test_best_checkpoint_is_the_most_accurate_validated_epoch(tmp_path: Path, monkeypatch) -> None:
    pnet, bb = make_models()
    tr = Trainer(
        cfg(stage="curriculum", epochs=4, steps_per_epoch=1),
        pnet,
        bb,
        tiny_data(),
        tmp_path,
        val_data=tiny_data(train=False),
    )
    accs = iter([0.5, 0.8, 0.6, 0.7])
    real = tr.validate

    def fake(epoch, learned, elapsed):
        row = real(epoch, learned, elapsed)
        row["acc"] = next(accs)
        return row

    monkeypatch.setattr(tr, "validate", fake)
    tr.fit()
    _, best = load_checkpoint(tmp_path / "best.safetensors")
    _, last = load_checkpoint(tmp_path / "last.safetensors")
    assert best["progress"]["epoch"] == 2 and best["history"][-1]["acc"] == 0.8  # after epoch 1
    assert last["progress"]["epoch"] == 4


def test_the_schedule_has_one_rule() -> None:
    """resolve_schedule: the curriculum learns every block (ceil(K / cl_step) epochs) and then
    extra_epochs more; cl_step None frees all at once; finetuning defaults to 10 epochs; steps
    gives exactly that many steps in the fewest even epochs. The CLI and the recipe both reach
    it through the Trainer (written out by hand here)."""
    from blockdrop.training.config import resolve_schedule

    for k, step, extra in [(27, 3, 2), (27, 1, 5), (54, 4, 0), (15, None, 4)]:
        r = resolve_schedule(TrainConfig(stage="curriculum", cl_step=step, extra_epochs=extra), k, 50)
        want = -(-k // (step or k)) + extra
        assert (r.epochs, r.cl_step, r.steps_per_epoch) == (want, step or k, None)
    assert resolve_schedule(TrainConfig(stage="finetune"), 27, 50).epochs == 10
    assert resolve_schedule(TrainConfig(stage="curriculum", epochs=7), 27, 50).epochs == 7
    r = resolve_schedule(TrainConfig(stage="finetune", steps=130), 27, 50)
    assert (r.epochs, r.steps_per_epoch, r.steps) == (3, 44, None)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(stage="finetune", steps=10, epochs=2)
    with pytest.raises(ValueError, match="cl_step"):
        TrainConfig(cl_step=0)


def test_trainer_makes_exactly_the_configured_steps(tmp_path: Path) -> None:
    pnet, bb = make_models()
    tr = Trainer(
        cfg(stage="finetune", epochs=None, steps_per_epoch=None, steps=5, bn="frozen"),
        pnet,
        bb,
        tiny_data(),
        tmp_path,
    )
    tr.fit()
    # 5 steps over epochs of at most len(loader) batches, split evenly
    assert tr.global_step == tr.cfg.epochs * tr.cfg.steps_per_epoch >= 5
    assert tr.global_step < 5 + tr.cfg.epochs


def test_progress_writes_plain_lines_to_a_log(capsys) -> None:
    """Not a terminal: a line every tenth of the run (no carriage returns), the postfix in it."""
    from blockdrop.training.loop import progress

    bar = progress(40, "backbone", True)
    for i in range(40):
        bar.set_postfix(acc=f"{i:d}")
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 10
    assert lines[0].startswith("backbone: 4/40 (10%") and lines[-1].startswith("backbone: 40/40 (100%")
    assert lines[-1].endswith("acc 39")
    progress(40, "off", False).update(40)
    assert capsys.readouterr().err == ""
