"""blockdrop.evaluation.speed: every model timed over the same images in every chunk size, each
judged at its fastest; the pruned network is the plain blocks it keeps. Checked with models whose
cost per call is known (sleeps), and the pruned forward against a plain-PyTorch reference."""

from __future__ import annotations

import time

import pytest
import torch

from blockdrop.evaluation.speed import static_forward, time_models


def test_each_model_is_judged_at_its_fastest_chunk() -> None:
    """A model paying 4 ms per call is fastest unchunked; one paying 0.05 ms per image squared
    per call (its cost grows faster than the chunk) is fastest in the smallest chunk. The ms per
    image follow from the sleeps (generous bounds: a sleep overshoots, never undershoots)."""
    calls: dict[str, list[int]] = {"per_call": [], "quadratic": []}

    def per_call(x: torch.Tensor) -> None:
        calls["per_call"].append(x.shape[0])
        time.sleep(0.004)

    def quadratic(x: torch.Tensor) -> None:
        calls["quadratic"].append(x.shape[0])
        time.sleep(0.00005 * x.shape[0] ** 2)

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
    # per image: 4 ms / 16 images; 0.05 ms * 4^2 / 4 images
    assert 0.25 <= s["per_call"].ms_per_image < 0.25 * 3
    assert 0.2 <= s["quadratic"].ms_per_image < 0.2 * 3
    assert s["quadratic"].ms_by_chunk[16] >= 0.8


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
