"""Fixed-policy baselines (the samplers' distributions) and backbone training under them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blockdrop.data import DataInfo, ImageArrayDataset, SmallImageTransform
from blockdrop.models import cifar_resnet
from blockdrop.training.baselines import (
    BaselinePolicy,
    drop_path_policy,
    first_k_policy,
    full_policy,
    random_k_policy,
)
from blockdrop.training.supervised import ReplayTeacher, SupervisedConfig, train_supervised


def toy_data(n: int = 32, size: int = 16, classes: int = 3) -> DataInfo:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    ds = ImageArrayDataset(images, torch.arange(n) % classes, SmallImageTransform(True, pad=2), 0)
    return DataInfo(ds, [str(i) for i in range(classes)], size, "toy")


def test_first_k_runs_the_leading_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    p = first_k_policy(3, 6)(4, g)
    assert p.tolist() == [[1, 1, 1, 0, 0, 0]] * 4
    q = first_k_policy(2.25, 6)(4000, g)  # 2 or 3 leading blocks, mean 2.25
    rows = {tuple(r) for r in q.tolist()}
    assert rows == {(1, 1, 0, 0, 0, 0), (1, 1, 1, 0, 0, 0)}
    assert abs(float(q.sum(1).mean()) - 2.25) < 0.04


def test_random_k_takes_k_uniform_blocks_per_image() -> None:
    g = torch.Generator().manual_seed(1)
    p = random_k_policy(4, 10)(5000, g)
    assert (p.sum(1) == 4).all()
    freq = p.mean(0)  # each block with probability 4/10
    assert float((freq - 0.4).abs().max()) < 0.03
    assert len({tuple(r) for r in p[:200].tolist()}) > 100  # per-image draws (of C(10,4) = 210)
    q = random_k_policy(7.5, 10)(4000, g)
    assert set(q.sum(1).tolist()) == {7.0, 8.0} and abs(float(q.sum(1).mean()) - 7.5) < 0.05
    with pytest.raises(ValueError, match="k"):
        random_k_policy(11, 10)(1, g)


def test_drop_path_keeps_each_block_with_its_probability() -> None:
    g = torch.Generator().manual_seed(2)
    keep = torch.tensor([1.0, 0.9, 0.5, 0.0])
    p = drop_path_policy(keep, 4)(20000, g)
    torch.testing.assert_close(p.mean(0), keep, atol=0.015, rtol=0)
    assert torch.equal(full_policy(4)(3, g), torch.ones(3, 4))
    with pytest.raises(ValueError, match="keep"):
        drop_path_policy(1.5, 4)


def test_train_supervised_full_policy_is_plain_sgd() -> None:
    """With every block kept and frozen BN, the loop is plain cross-entropy SGD: one step equals a
    step of torch's SGD over the ordinary forward (the independent reference)."""
    torch.manual_seed(0)
    net = cifar_resnet(8, num_classes=3)
    ref = cifar_resnet(8, num_classes=3)
    ref.load_state_dict(net.state_dict())
    data = toy_data()
    cfg = SupervisedConfig(steps=1, batch_size=8, lr=0.05, bn="frozen", progress=False, weight_decay=0.0)
    train_supervised(net, data, full_policy(net.num_blocks), cfg)
    from blockdrop.data import make_loader, set_loader_epoch

    loader = make_loader(data.dataset, 8, train=True, seed=0)
    set_loader_epoch(loader, 0)
    x, y = next(iter(loader))
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ref.eval()
    F.cross_entropy(ref(x), y).backward()
    opt.step()
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k, rtol=1e-4, atol=1e-6)


def test_train_supervised_dropped_blocks_get_no_gradient_and_distillation_needs_teacher() -> None:
    torch.manual_seed(0)
    net = cifar_resnet(14, num_classes=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = train_supervised(
        net,
        toy_data(),
        first_k_policy(2, net.num_blocks),
        SupervisedConfig(steps=2, batch_size=8, progress=False, weight_decay=0.0),
    )
    assert out["loss"] > 0 and not net.training
    after = net.state_dict()
    assert not torch.equal(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])
    for k in before:  # blocks 2.. never ran: untouched (weight decay off)
        if k.startswith(("layer2.", "layer3.")):
            assert torch.equal(before[k], after[k]), k
    with pytest.raises(ValueError, match="teacher"):
        train_supervised(
            net,
            toy_data(),
            full_policy(6),
            SupervisedConfig(steps=1, batch_size=8, distill=0.5, progress=False),
        )


def test_baseline_policy_module_replays_and_round_trips() -> None:
    x = torch.zeros(5, 3, 8, 8)
    a = BaselinePolicy("random_k", 6, k=2.5, seed=3)
    b = BaselinePolicy(**a.spec())
    pa, pb = a(x), b(x)
    assert torch.equal(pa, pb) and pa.shape == (5, 6) and set(pa.sum(1).tolist()) <= {2.0, 3.0}
    later = [a(x) for _ in range(3)]
    assert not all(torch.equal(p, pa) for p in later)  # the stream moves on
    a.reset()  # and starts again from the seed
    assert torch.equal(a(x), pa) and torch.equal(a(x), later[0])
    assert BaselinePolicy("first_k", 6, k=4)(x).tolist() == [[1, 1, 1, 1, 0, 0]] * 5
    assert torch.equal(BaselinePolicy("full", 6)(x), torch.ones(5, 6))
    with pytest.raises(ValueError, match="kind"):
        BaselinePolicy("best_k", 6, k=1)
    with pytest.raises(ValueError, match="k"):
        BaselinePolicy("first_k", 6)


def test_inplace_distillation_step_matches_a_plain_pytorch_reference() -> None:
    """inplace + distill 1: loss = CE(full network) + T^2 KL(full.detach() || sub-network); one
    SGD step equals the same step computed with plain modules (sub-network = the first k blocks,
    the rest shortcuts only)."""
    torch.manual_seed(0)
    net = cifar_resnet(14, num_classes=3)
    ref = cifar_resnet(14, num_classes=3)
    ref.load_state_dict(net.state_dict())
    data = toy_data()
    cfg = SupervisedConfig(
        steps=1,
        batch_size=8,
        lr=0.05,
        bn="frozen",
        progress=False,
        weight_decay=0.0,
        distill=1.0,
        inplace=True,
        temperature=2.0,
    )
    train_supervised(net, data, first_k_policy(2, net.num_blocks), cfg)
    from blockdrop.data import make_loader, set_loader_epoch

    loader = make_loader(data.dataset, 8, train=True, seed=0)
    set_loader_epoch(loader, 0)
    x, y = next(iter(loader))
    ref.eval()
    blocks = [b for layer in (ref.layer1, ref.layer2, ref.layer3) for b in layer]

    def sub(inp):
        h = torch.relu(ref.bn1(ref.conv1(inp)))
        for i, b in enumerate(blocks):
            h = b(h) if i < 2 else b.shortcut(h)
        return ref.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    full = ref(x)
    q = torch.softmax(full.detach() / 2.0, 1)
    kl = (q * (q.log() - torch.log_softmax(sub(x) / 2.0, 1))).sum(1).mean() * 4.0
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    (F.cross_entropy(full, y) + kl).backward()
    opt.step()
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k, rtol=1e-4, atol=1e-6)


def test_replay_teacher_returns_the_teachers_outputs_and_recomputes_changed_batches() -> None:
    torch.manual_seed(3)
    teacher = cifar_resnet(8, num_classes=3).eval()
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(1))
    rt = ReplayTeacher(teacher)
    xs = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    with torch.no_grad():
        ref = [teacher(x) for x in xs]  # the independent reference
        calls.clear()
        first = [rt(x) for x in xs]
        rt.rewind()
        x1 = xs[1].clone()
        x1[0, 0, 0, 1] += 1e-3  # off the strided sample: caught by the sums
        again = [rt(xs[0]), rt(x1), rt(xs[2])]
    n_calls = len(calls)
    for a, b in zip(first, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(again[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(again[2], ref[2], rtol=0, atol=0)
    torch.testing.assert_close(again[1], teacher(x1).detach(), rtol=0, atol=0)
    assert (rt.hits, rt.misses, n_calls) == (2, 4, 4)


def test_a_replayed_teacher_trains_the_same_network_as_the_teacher() -> None:
    """Two runs with one seed see the same batches: distilling from the replay (recorded by a run
    with another sampler) gives the weights that distilling from the teacher itself gives."""
    torch.manual_seed(4)
    teacher = cifar_resnet(8, num_classes=3).eval()
    start = cifar_resnet(8, num_classes=3)
    cfg = SupervisedConfig(steps=6, batch_size=8, distill=0.7, progress=False)
    rt = ReplayTeacher(teacher)
    train_supervised(
        cifar_resnet(8, num_classes=3), toy_data(), drop_path_policy(0.5, 3), cfg, teacher=rt
    )  # records
    a, b = cifar_resnet(8, num_classes=3), cifar_resnet(8, num_classes=3)
    a.load_state_dict(start.state_dict()), b.load_state_dict(start.state_dict())
    rt.rewind()
    train_supervised(a, toy_data(), full_policy(3), cfg, teacher=rt)
    train_supervised(b, toy_data(), full_policy(3), cfg, teacher=teacher)
    assert rt.hits == 6
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(u, v, rtol=0, atol=0, msg=k)
