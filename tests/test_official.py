"""The authors' checkpoints: written here in their exact format (a legacy torch.save pickle of
{'agent', 'resnet'} state dicts, no num_batches_tracked) from a transcription of the official
modules (Tushar-N/blockdrop models/base.py, models/resnet.py) with random weights and non-trivial
BN statistics; loaded with blockdrop.interop.load_official, every strategy must give the policy
and the logits of the official semantics: ``forward`` (masked) and ``forward_single`` (batch 1)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from blockdrop.interop import load_official
from blockdrop.interop.official import official_meta

STRATEGIES = ["masked", "loop", "gather", "group", "auto"]


# ----------------------------------------------------------------- the official modules, transcribed
class RefBasic(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class RefDownsampleB(nn.Module):
    def __init__(self, nIn, nOut, stride):
        super().__init__()
        self.avg = nn.AvgPool2d(stride)
        self.expand_ratio = nOut // nIn

    def forward(self, x):
        x = self.avg(x)
        return torch.cat([x] + [x.mul(0)] * (self.expand_ratio - 1), 1)


class RefFlatResNet(nn.Module):
    def __init__(self, block, layers, num_classes, imagenet):
        super().__init__()
        self.imagenet = imagenet
        self.inplanes = 64 if imagenet else 16
        if imagenet:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.avgpool = nn.AvgPool2d(7)
        else:
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.avgpool = nn.AvgPool2d(8)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        filt = [64, 128, 256, 512] if imagenet else [16, 32, 64]
        strides = [1, 2, 2, 2] if imagenet else [1, 2, 2]
        self.blocks, self.ds = [], []
        for f, n, s in zip(filt, layers, strides):
            ds = nn.Sequential()
            if s != 1 or self.inplanes != f * block.expansion:
                ds = (
                    nn.Sequential(
                        nn.Conv2d(self.inplanes, f * block.expansion, 1, s, bias=False),
                        nn.BatchNorm2d(f * block.expansion),
                    )
                    if imagenet
                    else RefDownsampleB(self.inplanes, f * block.expansion, s)
                )
            blocks = [block(self.inplanes, f, s)]
            self.inplanes = f * block.expansion
            blocks += [block(self.inplanes, f) for _ in range(1, n)]
            self.blocks.append(nn.ModuleList(blocks))
            self.ds.append(ds)
        self.blocks, self.ds = nn.ModuleList(self.blocks), nn.ModuleList(self.ds)
        self.fc = nn.Linear(filt[-1] * block.expansion, num_classes)
        self.layer_config = layers

    def seed(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.maxpool(x) if self.imagenet else x

    def forward(self, x, policy):  # official masked forward
        x = self.seed(x)
        t = 0
        for segment, num_blocks in enumerate(self.layer_config):
            for b in range(num_blocks):
                action = policy[:, t].contiguous()
                residual = self.ds[segment](x) if b == 0 else x
                if action.data.sum() == 0:
                    x = residual
                    t += 1
                    continue
                action_mask = action.float().view(-1, 1, 1, 1)
                fx = F.relu(residual + self.blocks[segment][b](x))
                x = fx * action_mask + residual * (1 - action_mask)
                t += 1
        return self.fc(self.avgpool(x).view(x.size(0), -1))

    def forward_single(self, x, policy):  # official batch-1 forward
        x = self.seed(x)
        t = 0
        for segment, num_blocks in enumerate(self.layer_config):
            for b in range(num_blocks):
                residual = self.ds[segment](x) if b == 0 else x
                x = F.relu(residual + self.blocks[segment][b](x)) if policy[t] == 1 else residual
                t += 1
        return self.fc(self.avgpool(x).view(x.size(0), -1))

    def forward_full(self, x):
        x = self.seed(x)
        for segment, num_blocks in enumerate(self.layer_config):
            for b in range(num_blocks):
                residual = self.ds[segment](x) if b == 0 else x
                x = F.relu(residual + self.blocks[segment][b](x))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


class RefPolicy(nn.Module):
    def __init__(self, num_blocks, imagenet):
        super().__init__()
        self.imagenet = imagenet
        self.features = RefFlatResNet(
            RefBasic, [1, 1, 1, 1] if imagenet else [1, 1, 1], 1000 if imagenet else 10, imagenet
        )
        if imagenet:
            self.features.avgpool = nn.AvgPool2d(4)
        dim = self.features.fc.weight.shape[1]
        self.features.fc = nn.Sequential()
        self.logit = nn.Linear(dim, num_blocks)
        self.vnet = nn.Linear(dim, 1)

    def forward(self, x):
        if self.imagenet:
            x = F.avg_pool2d(x, 2)
        x = self.features.forward_full(x)
        return torch.sigmoid(self.logit(x)), self.vnet(x)


CONFIGS = {
    "R32_C10": ([5, 5, 5], 10, 15, False),
    "R110_C10": ([18, 18, 18], 10, 54, False),
    "R32_C100": ([5, 5, 5], 100, 15, False),
    "R110_C100": ([18, 18, 18], 100, 54, False),
    "R101_ImgNet": ([3, 4, 23, 3], 1000, 33, True),
}


def _randomise(m: nn.Module, g: torch.Generator) -> None:
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(mod.num_features, generator=g) * 0.2 - 0.1)
        elif isinstance(mod, nn.Conv2d):
            n = mod.kernel_size[0] * mod.kernel_size[1] * mod.out_channels
            mod.weight.data.copy_(torch.randn(mod.weight.shape, generator=g) * math.sqrt(2.0 / n))


def _legacy_state(m: nn.Module) -> dict[str, torch.Tensor]:
    """As torch 0.3 wrote it: no num_batches_tracked, a plain dict without version metadata."""
    return {k: v.clone() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}


def write_official(path: Path, name: str, seed: int = 0, with_resnet: bool = True):
    layers, classes, k, imagenet = CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rnet = RefFlatResNet(RefBottleneck if imagenet else RefBasic, layers, classes, imagenet).eval()
    agent = RefPolicy(k, imagenet).eval()
    _randomise(rnet, g)
    _randomise(agent, g)
    with torch.no_grad():  # logits large enough that p >= 0.5 splits the blocks
        agent.logit.weight.mul_(20.0)
    obj = {"agent": _legacy_state(agent), "epoch": 17, "acc": 0.9, "reward": 0.4}
    if with_resnet:
        obj["resnet"] = _legacy_state(rnet)
    torch.save(obj, path, _use_new_zipfile_serialization=False, pickle_protocol=2)
    return rnet, agent


@pytest.mark.parametrize("name", ["R32_C10", "R110_C10", "R32_C100", "R110_C100"])
def test_official_cifar_checkpoints_every_strategy(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.t7"
    rnet, agent = write_official(path, name)
    net = load_official(path, name).double()  # float64 on both sides: rounding out of the way
    rnet, agent = rnet.double(), agent.double()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        probs, _ = agent(x)
        policy = (probs >= 0.5).float()
        assert 0 < float(policy.mean()) < 1  # a mixed policy, not all or nothing
        ref = rnet(x, policy)
        singles = torch.cat([rnet.forward_single(x[i : i + 1], policy[i]) for i in range(6)])
        torch.testing.assert_close(ref, singles, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(net.probs(x).double(), probs, rtol=1e-6, atol=1e-7)
        for strategy in STRATEGIES:
            net.strategy = strategy
            logits, pol = net(x)
            assert torch.equal(pol, policy), strategy
            torch.testing.assert_close(logits, ref, rtol=1e-9, atol=1e-9, msg=strategy)
        net.strategy = "auto"
        logits1, pol1 = net(x[2:3])  # batch 1: forward_single's setting
        torch.testing.assert_close(logits1, singles[2:3], rtol=1e-9, atol=1e-9)


def test_official_imagenet_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "R101.t7"
    rnet, agent = write_official(path, "R101_ImgNet")
    net = load_official(path, "R101_ImgNet")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        probs, _ = agent(x)
        policy = (probs >= 0.5).float()
        ref = rnet(x, policy)
        single = rnet.forward_single(x[1:2], policy[1])
        for strategy in ("gather", "auto"):
            net.strategy = strategy
            logits, pol = net(x)
            assert torch.equal(pol, policy)
            torch.testing.assert_close(logits, ref, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(net(x[1:2])[0], single, rtol=1e-3, atol=1e-3)


def test_official_errors_and_trust(tmp_path: Path) -> None:
    from blockdrop.errors import FileFormatError

    path = tmp_path / "c.t7"
    write_official(path, "R32_C10")
    with pytest.raises(ValueError, match="model"):
        load_official(path, "R56_C10")
    with pytest.raises(FileFormatError, match="agent state dict"):
        load_official(path, "R110_C10")  # another model's shapes
    bad = tmp_path / "code.t7"
    torch.save({"agent": {}, "extra": Path("x")}, bad)  # a pickle of more than tensors
    with pytest.raises(FileFormatError, match="trust_pickle"):
        load_official(bad, "R32_C10")
    (tmp_path / "empty.t7").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        load_official(tmp_path / "empty.t7", "R32_C10")
    cl = tmp_path / "cl.t7"
    write_official(cl, "R32_C10", with_resnet=False)
    with pytest.warns(UserWarning, match="resnet"):
        load_official(cl, "R32_C10")
    assert official_meta("R32_C10")["input_normalization"]["mean"][0] == pytest.approx(125.3 / 255)
    assert official_meta("R110_C10")["input_normalization"] is None


def test_convert_then_eval_applies_the_official_input_normalisation(tmp_path: Path, capsys) -> None:
    """`blockdrop convert` + `blockdrop eval`: the reported accuracy is the official model's on
    the images normalised as the official R32_C10 expects (CIFAR mean/std)."""
    import json

    import numpy as np
    from PIL import Image

    from blockdrop.cli import main
    from blockdrop.interop.official import CIFAR10_CLASSES

    rnet, agent = write_official(tmp_path / "r32.t7", "R32_C10")
    rng = np.random.default_rng(0)
    imgs, labels = [], []
    for ci, c in enumerate(CIFAR10_CLASSES):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "data" / c / f"{i}.png")
            imgs.append(arr)
            labels.append(ci)
    assert (
        main(
            [
                "convert",
                str(tmp_path / "r32.t7"),
                "--official",
                "R32_C10",
                "--out",
                str(tmp_path / "r32.safetensors"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "eval",
                str(tmp_path / "r32.safetensors"),
                "--data",
                str(tmp_path / "data"),
                "--bench-batches",
                "0",
                "--json",
                str(tmp_path / "r.json"),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    got = json.loads((tmp_path / "r.json").read_text())[0]
    mean = torch.tensor([125.3, 123.0, 113.9]).view(1, 3, 1, 1) / 255
    std = torch.tensor([63.0, 62.1, 66.7]).view(1, 3, 1, 1) / 255
    x = (torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        policy = (agent(x)[0] >= 0.5).float()
        pred = rnet(x, policy).argmax(1)
    assert got["accuracy"] == pytest.approx(float((pred == torch.tensor(labels)).float().mean()))
    assert got["blocks_mean"] == pytest.approx(float(policy.sum(1).mean()))
