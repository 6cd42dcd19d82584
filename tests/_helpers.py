"""Helpers shared by the test files: models with non-trivial BN statistics, inputs and policies,
the per-image oracle (independent of the engine), tiny datasets and checkpoints, the subprocess
environment, the lossless CIFAR-10 subset."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from blockdrop import dynamic_forward, models

ROOT = Path(__file__).resolve().parents[1]


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics/affine so that every block visibly changes its input."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def cifar(depth: int = 20) -> models.CifarResNet:
    torch.manual_seed(0)
    return randomize_bn(models.cifar_resnet(depth))


def tv(name: str) -> models.TorchvisionResNet:
    torch.manual_seed(0)
    return models.from_torchvision(randomize_bn(getattr(torchvision.models, name)(num_classes=10)))


MODELS = {
    "cifar20": (lambda: cifar(20), (3, 32, 32)),
    "resnet18": (lambda: tv("resnet18"), (3, 64, 64)),
    "resnet50": (lambda: tv("resnet50"), (3, 64, 64)),
}
BUILT: dict[str, torch.nn.Module] = {}


def model(name: str) -> torch.nn.Module:
    if name not in BUILT:
        BUILT[name] = MODELS[name][0]()
    return BUILT[name]


def inputs(name: str, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *MODELS[name][1]), generator=g)


def policy(kind: str, n: int, k: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return (torch.rand(n, k, generator=g) < 0.5).to(torch.uint8)
    if kind == "prototypes":  # few distinct policies, repeated: exercises grouping
        protos = torch.rand(3, k, generator=g) < 0.5
        return protos[torch.randint(0, 3, (n,), generator=g)]
    if kind == "zeros":
        return torch.zeros(n, k, dtype=torch.bool)
    if kind == "ones":
        return torch.ones(n, k)
    raise AssertionError(kind)


def oracle(model: torch.nn.Module, x: torch.Tensor, policy: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Per-image oracle from the blocks' own modules, independent of the engine (differentiable
    with ``grad``)."""
    outs = []
    with torch.set_grad_enabled(grad):
        for n in range(x.shape[0]):
            h = model.stem(x[n : n + 1])
            for k, view in enumerate(model.blocks):
                b = view.module
                if policy[n, k]:
                    h = b(h)  # the block's own forward
                elif isinstance(model, models.CifarResNet):
                    h = b.shortcut(h)
                else:
                    h = h if b.downsample is None else b.downsample(h)
            outs.append(model.head(h))
    return torch.cat(outs)


def tol(ref: torch.Tensor) -> float:
    return 1e-4 * max(float(ref.abs().max()), 1e-3)


def tiny_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("red", "green", "blue"),
    n_per_class: int = 8,
    size: int = 16,
    learnable: bool = True,
    seed: int = 0,
) -> Path:
    """A small ImageFolder tree ``root/<class>/<i>.png`` (with ``learnable``, the dominant colour
    channel is the class; ``seed`` draws the pixels)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 80 if learnable else 256, (size, size, 3), dtype=np.uint8)
            if learnable:
                arr[..., ci % 3] += 150
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def write_cifar_weights(path: Path, depth: int = 8, num_classes: int = 3, seed: int = 0) -> Path:
    """A CIFAR ResNet ``.th`` as the pretrained ones are stored (``{"state_dict": ...}``)."""
    torch.manual_seed(seed)
    torch.save({"state_dict": models.cifar_resnet(depth, num_classes=num_classes).state_dict()}, path)
    return path


def subprocess_env() -> dict[str, str]:
    """The environment for running ``python -m blockdrop`` from a test: this checkout on the
    path, one thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "python") + os.pathsep + str(ROOT)}


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_lossless_test1000(archive: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    from PIL import Image

    imgs, labels = [], []
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            if not member.isfile():
                continue
            cls = member.name.split("/")[-2]
            data = tf.extractfile(member).read()
            imgs.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            labels.append(CIFAR10_CLASSES.index(cls))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(labels)


def grads(model, x, policy, strategy, w):
    model.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    out = dynamic_forward(model, xg, policy, strategy)
    (out * w).sum().backward()
    grads = {"x": xg.grad.clone()}
    for pname, p in model.named_parameters():
        grads[pname] = torch.zeros_like(p) if p.grad is None else p.grad.clone()
    return grads


def expect_value_error(match: str, fn) -> None:
    with pytest.raises(ValueError, match=match):
        fn()
