"""blockdrop.evaluation.speed: every model timed over the same images in every chunk size, each
judged at its fastest; the pruned network is the plain blocks it keeps. Checked with models whose
cost per call is known (on a virtual clock), and the pruned forward against a plain-PyTorch reference."""

from __future__ import annotations

import pytest
import torch

from blockdrop.evaluation import speed as speed_mod
from blockdrop.evaluation.speed import static_forward, time_models
from blockdrop.evaluation.timing import Timing


def test_each_model_is_judged_at_its_fastest_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model paying 4 ms per call is fastest unchunked; one paying 0.05 ms per image squared
    per call (its cost grows faster than the chunk) is fastest in the smallest chunk. The costs
    run on a virtual clock, so the ms per image are exact whatever the machine is doing."""
    calls: dict[str, list[int]] = {"per_call": [], "quadratic": []}
    clock = [0.0]

    def per_call(x: torch.Tensor) -> None:
        calls["per_call"].append(x.shape[0])
        clock[0] += 0.004

    def quadratic(x: torch.Tensor) -> None:
        calls["quadratic"].append(x.shape[0])
        clock[0] += 0.00005 * x.shape[0] ** 2

    def virtual_interleaved(fns, rounds, warmup, **_):  # every function, every round, virtual time
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _round in range(rounds):
            for name, fn in fns.items():
                t0 = clock[0]
                fn()
                times[name].append(clock[0] - t0)
        return {name: Timing(tuple(t)) for name, t in times.items()}

    monkeypatch.setattr(speed_mod, "interleaved", virtual_interleaved)
    batches = [torch.zeros(16, 1), torch.zeros(16, 1)]
    before = torch.get_num_threads()
    s = time_models(
        {"per_call": per_call, "quadratic": quadratic}, batches, chunks=(8, 4, 32), repeats=2, warmup=0
    )
    assert torch.get_num_threads() == before
    assert set(s["per_call"].ms_by_chunk) == {16, 8, 4}  # 32 >= the batch: ignored
    assert s["per_call"].best_chunk == 16 and s["quadratic"].best_chunk == 4
    # every size, both batches, every round: the same images in each
    assert sorted(calls["per_call"]) == sorted([16] * 4 + [8] * 8 + [4] * 16)
    # per image: 4 ms / 16 images; 0.05 ms * 4^2 / 4 images; unchunked 0.05 ms * 16^2 / 16
    assert s["per_call"].ms_per_image == pytest.approx(0.25)
    assert s["quadratic"].ms_per_image == pytest.approx(0.2)
    assert s["quadratic"].ms_by_chunk[16] == pytest.approx(0.8)
    assert s["per_call"].ms_by_chunk[4] == pytest.approx(1.0)


def test_time_models_rejects_bad_batches() -> None:
    with pytest.raises(ValueError, match="batches"):
        time_models({"m": lambda x: x}, [])
    with pytest.raises(ValueError, match="equal sizes"):
        time_models({"m": lambda x: x}, [torch.zeros(4, 1), torch.zeros(3, 1)])
    with pytest.raises(ValueError, match="chunks"):
        time_models({"m": lambda x: x}, [torch.zeros(4, 1)], chunks=(0,))


def test_static_forward_is_the_pruned_network() -> None:
    """The pruned forward equals the model's own modules run with the dropped blocks' shortcuts
    (float64), and the masked engine path with the same static policy."""
    import blockdrop
    from blockdrop.models import cifar_resnet

    torch.manual_seed(2)
    net = cifar_resnet(14, num_classes=4).double().eval()
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    dropped = [1, 4]
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3) for b in layer]
    with torch.no_grad():
        h = torch.relu(net.bn1(net.conv1(x)))
        for i, b in enumerate(blocks):
            h = b.shortcut(h) if i in dropped else b(h)
        ref = net.linear(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))
        got = static_forward(net, dropped, x)
        policy = torch.ones(5, 6, dtype=torch.float64)
        policy[:, dropped] = 0
        masked = blockdrop.dynamic_forward(net, x, policy, strategy="masked")
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, masked, rtol=1e-10, atol=1e-10)
