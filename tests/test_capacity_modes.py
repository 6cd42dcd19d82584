"""BlockDropNet in capacity mode: shares calibrated from the threshold policy's keep rates, a FLOP
budget met for every batch, the checkpoint round trip, ``torch.compile(fullgraph=True)`` with no
recompilation over 20 batches, ``torch.export`` saved and run in a fresh process, ``cuda_graphed``'s
static buffers (capture itself: GPU only), and ``blockdrop eval --mode capacity``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _helpers import randomize_bn, subprocess_env, tiny_image_folder
from blockdrop import BlockDropNet, cuda_graphed, dynamic_forward, load, models
from blockdrop.calibration import budget_counts, with_budget
from blockdrop.capacity import counts_from_shares
from blockdrop.checkpoint import save_blockdrop_net
from blockdrop.cli import main
from blockdrop.evaluation.accounting import block_flops, flops
from blockdrop.models.policy import CifarPolicyNet


def _net(depth: int = 20, seed: int = 0) -> BlockDropNet:
    torch.manual_seed(seed)
    bb = randomize_bn(models.cifar_resnet(depth))
    pnet = randomize_bn(CifarPolicyNet(bb.num_blocks, width=8))
    with torch.no_grad():  # keep-probabilities that vary per image and per block
        pnet.fc.weight.mul_(40)
        pnet.fc.bias.copy_(torch.linspace(-1, 1, bb.num_blocks))
    return BlockDropNet(pnet, bb).eval()


def _batches(n_batches: int, n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 32, 32, generator=g) for _ in range(n_batches)]


# ------------------------------------------------------------------------------------ calibration


def test_calibrated_shares_are_the_threshold_keep_rates() -> None:
    net = _net()
    xs = _batches(3, 16)
    spec = net.calibrate_capacity(xs)
    with torch.no_grad():
        net.set_mode("threshold")
        rates = torch.cat([net.policy(x) for x in xs]).mean(0)
        net.set_mode("capacity")
        assert torch.allclose(torch.tensor(spec.shares, dtype=torch.float32), rates)
        assert 0 < rates.mean() < 1
        logits, policy = net(xs[0])
    assert policy.sum(0).tolist() == list(counts_from_shares(spec.shares, 16))
    ref = dynamic_forward(net.backbone, xs[0], policy, "masked")
    assert (logits - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert spec.info["images"] == 48 and abs(spec.info["mean_blocks"] - float(rates.sum())) < 1e-4


def test_mode_switch_and_training_mode() -> None:
    net = _net()
    with pytest.raises(ValueError, match="mode: capacity mode needs per-block shares"):
        net.set_mode("capacity")
    with pytest.raises(ValueError, match="mode: expected one of"):
        net.set_mode("fast")
    net.set_capacity([0.5] * net.num_blocks)
    assert net.mode == "capacity"
    net.train()  # training samples its policy in every mode
    p = net.policy(_batches(1, 64)[0])
    assert p.sum(0).tolist() != list(counts_from_shares([0.5] * net.num_blocks, 64))


@pytest.mark.parametrize("budget", [0.45, 0.7, 1.0])
def test_budget_is_met_for_every_batch(budget: float) -> None:
    net = _net()
    net.calibrate_capacity(_batches(2, 16))
    spec = net.set_capacity(budget=budget)
    full = block_flops(net.backbone).full
    for n in (1, 2, 3, 7, 16, 33, 64, 255, 256):
        policy = net.policy(torch.randn(n, 3, 32, 32))
        spent = float(flops(net.backbone, policy, net.policy_net).sum())
        assert spent <= budget * full * n * (1 + 1e-9), (n, spent / (full * n))
        if n >= 64 and budget < 1:  # and the budget is used, up to a block per image
            assert spent >= (budget - max(spec.block_flops) / full / n * net.num_blocks) * full * n
    assert spec.info["profile_shares"] is not None  # shaped like the calibration


def test_budget_shares_follow_the_profile_then_fill() -> None:
    from blockdrop.calibration import budget_shares

    assert budget_shares([0.2, 0.4], [10, 10], 3.0) == pytest.approx((0.1, 0.2))
    assert budget_shares(None, [10, 30], 20.0) == pytest.approx((0.5, 0.5))
    assert budget_shares([0.0, 1.0, 0.5], [10, 10, 10], 25.0) == pytest.approx((0.5, 1.0, 1.0))
    assert budget_shares([0.5, 0.5], [10, 10], 100.0) == (1.0, 1.0)


def test_budget_counts_fill_up_to_the_allowance() -> None:
    assert budget_counts([0.5, 0.5], 3, [10, 10], 10.0) == (2, 1)  # floor 1+1, one more fits in 30
    assert budget_counts([0.5, 0.5], 3, [10, 10], 9.0) == (1, 1)  # 27 leaves no room for a third
    assert budget_counts([0.4, 0.6], 1, [5, 20], 5.0) == (1, 0)  # block 1 does not fit, block 0 does


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5, float("nan"), "half"])
def test_budget_outside_0_1_is_a_value_error(budget) -> None:
    net = _net()
    with pytest.raises(ValueError, match=r"budget: expected a share of the full network's FLOPs in \(0, 1\]"):
        net.set_capacity(budget=budget)
    with pytest.raises(ValueError, match=r"budget: expected"):
        with_budget(net, budget)


def test_budget_below_the_fixed_cost_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"budget: expected at least 0\.\d+ \(the stem, head"):
        _net().set_capacity(budget=0.01)


def test_bad_capacity_for_the_net() -> None:
    net = _net()
    with pytest.raises(ValueError, match=r"capacity: expected 9 shares \(one per block\), got 2"):
        net.set_capacity([0.5, 0.5])
    with pytest.raises(ValueError, match=r"capacity: expected one share in \[0, 1\]"):
        net.set_capacity([2.0] * 9)


# ------------------------------------------------------------------------------------- checkpoint


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net = _net()
    net.calibrate_capacity(_batches(2, 16))
    spec = net.set_capacity(budget=0.6)
    path = save_blockdrop_net(tmp_path / "cap", net)
    loaded = load(path)
    assert loaded.mode == "capacity" and loaded.capacity == spec
    x = _batches(1, 24, seed=9)[0]
    with torch.no_grad():
        a, b = net(x), loaded(x)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    net.set_mode("threshold")
    assert load(save_blockdrop_net(tmp_path / "thr", net)).mode == "threshold"


# ----------------------------------------------------------------------------- compile and export


class CountingBackend:
    """A torch.compile backend that counts the graphs it is handed (then runs them eagerly)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_fullgraph_compile_one_graph_no_recompile(fresh_dynamo) -> None:
    net = _net()
    net.set_capacity([0.25, 0.5, 0.75, 0.1, 0.9, 0.3, 0.6, 0.0, 1.0])
    backend = CountingBackend()
    compiled = torch.compile(net, fullgraph=True, backend=backend)
    seen = set()
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for x in _batches(20, 12, seed=4):
            (logits, policy), (ref_l, ref_p) = compiled(x), net(x)
            assert torch.equal(policy, ref_p)
            torch.testing.assert_close(logits, ref_l, rtol=1e-4, atol=1e-5)
            seen.add(tuple(policy.flatten().tolist()))
    assert backend.graphs == 1 and len(seen) == 20


def test_aot_compile_of_capacity_forward_matches(fresh_dynamo) -> None:
    """Through AOTAutograd's functionalization (the ops' fake kernels), forward and backward."""
    from blockdrop import capacity_forward

    net = _net(8)
    bb = net.backbone
    f = torch.compile(lambda x, s: capacity_forward(bb, x, s, [2, 3, 5]), fullgraph=True, backend="aot_eager")
    x, s = torch.randn(6, 3, 32, 32, requires_grad=True), torch.rand(6, 3)
    f(x, s).sum().backward()
    gx = x.grad.clone()
    x.grad = None
    capacity_forward(bb, x, s, [2, 3, 5]).sum().backward()
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-6)


_CHILD = """
import sys, torch, blockdrop
ep = torch.export.load(sys.argv[1])
x, logits, policy = torch.load(sys.argv[2])
got_logits, got_policy = ep.module()(x)
torch.testing.assert_close(got_logits, logits, rtol=1e-4, atol=1e-5)
assert torch.equal(got_policy, policy)
print("ok", [n for n in sys.modules if n.startswith("blockdrop")][:1])
"""


def test_export_round_trip_in_a_fresh_process(tmp_path: Path) -> None:
    net = _net(8)
    net.set_capacity([0.3, 0.6, 0.9])
    x = torch.randn(10, 3, 32, 32)
    ep = torch.export.export(net, (x,))
    torch.export.save(ep, tmp_path / "net.pt2")
    other = torch.randn(10, 3, 32, 32)  # new images, new policy: the same program
    with torch.no_grad():
        logits, policy = net(other)
    torch.save((other, logits, policy), tmp_path / "io.pt")
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "net.pt2"), str(tmp_path / "io.pt")],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"aten.index_select.default", "aten.index_copy.default", "aten.argsort.stable"} <= ops, ops


# ------------------------------------------------------------------------------------ cuda_graphed


def test_graphed_static_buffers_replay_equals_eager() -> None:
    net = _net()
    net.set_capacity([0.5] * net.num_blocks)
    xs = _batches(3, 8, seed=6)
    g = cuda_graphed(net, xs[0], clone_outputs=False)
    first = g(xs[1])
    with torch.no_grad():
        ref = net(xs[1])
    assert torch.equal(first[0], ref[0]) and torch.equal(first[1], ref[1])
    kept = [t.clone() for t in first]
    second = g(xs[2])
    assert all(a is b for a, b in zip(first, second))  # the same static tensors, overwritten
    assert not torch.equal(second[1], kept[1])
    assert g.static_input.data_ptr() == g.static_input.data_ptr() and torch.equal(g.static_input, xs[2])
    cloned = cuda_graphed(net, xs[0])
    assert cloned(xs[1])[0] is not cloned(xs[1])[0]


def test_graphed_refuses_what_cannot_be_captured() -> None:
    net = _net()
    x = _batches(1, 8)[0]
    with pytest.raises(ValueError, match="net: expected a BlockDropNet in capacity mode"):
        cuda_graphed(net, x)
    net.set_capacity([0.5] * net.num_blocks)
    with pytest.raises(ValueError, match="net: expected eval mode"):
        cuda_graphed(net.train(), x)
    g = cuda_graphed(net.eval(), x)
    with pytest.raises(ValueError, match=r"x: expected \[8, 3, 32, 32\] torch.float32 on cpu"):
        g(torch.randn(4, 3, 32, 32))
    plain = cuda_graphed(net.backbone, x)  # the dense baseline graphs too
    torch.testing.assert_close(plain(x), net.backbone(x))


@pytest.mark.gpu
def test_cuda_graph_capture_replays_capacity_mode() -> None:
    net = _net().cuda()
    net.set_capacity([0.5] * net.num_blocks)
    xs = [x.cuda() for x in _batches(3, 16, seed=7)]
    g = cuda_graphed(net, xs[0])
    assert g.graph is not None
    for x in xs[1:]:
        with torch.no_grad():
            ref = net(x)
        out = g(x)
        assert torch.equal(out[1], ref[1])
        torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- CLI


def test_eval_capacity_mode_cli(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    data = tmp_path / "data"
    tiny_image_folder(data / "train", n_per_class=8)
    tiny_image_folder(data / "test", n_per_class=4)
    bb = models.cifar_resnet(8, num_classes=3).eval()
    ck = save_blockdrop_net(
        tmp_path / "m", BlockDropNet(CifarPolicyNet(3, width=8), bb), {"classes": ["blue", "green", "red"]}
    )
    common = [
        "--data",
        str(data),
        "--batch-size",
        "8",
        "--bench-batches",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(["eval", str(ck), *common, "--mode", "capacity"]) == 2
    assert "stores no capacity" in capsys.readouterr().err
    out = tmp_path / "cap.safetensors"
    assert (
        main(
            [
                "eval",
                str(ck),
                *common,
                "--mode",
                "both",
                "--calibrate-data",
                str(data),
                "--calibrate-holdout",
                "6",
                "--budget",
                "0.8",
                "--save-calibrated",
                str(out),
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "m capacity - m threshold" in text and "within 0.8 of the full network's FLOPs" in text
    import json

    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["label"] for r in rows] == ["m threshold", "m capacity"]
    assert rows[1]["flops_mean"] <= 0.8 * rows[1]["full_flops"] * (1 + 1e-9)
    assert load(out).mode == "capacity" and load(out).capacity.budget == 0.8
    assert main(["eval", str(out), *common]) == 0  # the saved capacity, used as it is
    with pytest.raises(SystemExit):
        main(["eval", str(ck), *common, "--budget", "1.5", "--mode", "capacity"])
    with pytest.raises(SystemExit):
        main(["eval", str(ck), *common, "--budget", "0.5"])  # without --mode capacity
