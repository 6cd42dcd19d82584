"""Every user-facing failure of the ``blockdrop`` command: run for real in a subprocess, it must
exit with status 2 and one line naming the file or argument and what is wrong -- no traceback --
and must leave existing files untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    env = subprocess_env()
    return subprocess.run(
        [sys.executable, "-m", "blockdrop", *argv], env=env, capture_output=True, text=True, timeout=300
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny 3-class dataset (folder + archive), a ResNet-8 ``.th``, a real checkpoint, and
    broken copies of each."""
    from PIL import Image

    from blockdrop.blockdrop_net import BlockDropNet
    from blockdrop.checkpoint import save_blockdrop_net
    from blockdrop.models import cifar_resnet
    from blockdrop.models.policy import CifarPolicyNet

    root = tmp_path_factory.mktemp("errors")
    rng = np.random.default_rng(0)
    for c in ("red", "green", "blue"):
        d = root / "data" / c
        d.mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    with tarfile.open(root / "data.tar.gz", "w:gz") as tf:
        tf.add(root / "data", arcname="data")
    raw = (root / "data.tar.gz").read_bytes()
    (root / "truncated.tar.gz").write_bytes(raw[: len(raw) // 2])
    torch.manual_seed(0)
    bb = cifar_resnet(8, num_classes=3)
    torch.save({"state_dict": bb.state_dict()}, root / "r8.th")
    ck = save_blockdrop_net(
        root / "model",
        BlockDropNet(CifarPolicyNet(3, width=8), bb),
        {"classes": ["blue", "green", "red"], "image_size": 16},
    )
    other = save_blockdrop_net(
        root / "digits_model",
        BlockDropNet(CifarPolicyNet(3, width=8), bb),
        {"classes": ["0", "1", "2"], "image_size": 16},
    )
    data = ck.read_bytes()
    (root / "garbage.safetensors").write_bytes(os.urandom(4096))
    (root / "empty.safetensors").write_bytes(b"")
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "garbage.th").write_bytes(os.urandom(2048))
    (root / "empty.th").write_bytes(b"")
    run_dir = root / "run"
    run_dir.mkdir()
    (run_dir / "last.safetensors").write_bytes(data)
    return {
        "root": root,
        "data": root / "data",
        "archive": root / "data.tar.gz",
        "truncated_archive": root / "truncated.tar.gz",
        "weights": root / "r8.th",
        "ckpt": ck,
        "other_classes": other,
        "run": run_dir,
    }


def _eval(files: dict[str, Path], ckpt: Path, data: Path | None = None) -> subprocess.CompletedProcess:
    return run_cli(
        "eval",
        str(ckpt),
        "--data",
        str(data or files["data"]),
        "--bench-batches",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    )


@pytest.mark.parametrize(
    "name,expect",
    [
        ("garbage.safetensors", "expected a blockdrop checkpoint"),
        ("empty.safetensors", "the file is empty"),
        ("truncated.safetensors", "expected a blockdrop checkpoint"),
    ],
)
def test_eval_broken_checkpoint(files: dict[str, Path], name: str, expect: str) -> None:
    r = _eval(files, files["root"] / name)
    assert r.returncode == 2, r.stderr
    assert name in r.stderr and expect in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_eval_checkpoint_trained_on_other_classes(files: dict[str, Path]) -> None:
    r = _eval(files, files["other_classes"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "digits_model" in r.stderr and "classes" in r.stderr and "does not fit" in r.stderr


def test_truncated_archive_and_missing_data(files: dict[str, Path], tmp_path: Path) -> None:
    r = _eval(files, files["ckpt"], files["truncated_archive"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "truncated.tar.gz" in r.stderr and "truncated or corrupt" in r.stderr
    r = _eval(files, files["ckpt"], tmp_path / "nowhere")
    assert r.returncode == 2 and "nowhere" in r.stderr and "does not exist" in r.stderr


@pytest.mark.parametrize("name", ["garbage.th", "empty.th"])
def test_train_with_broken_weights(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    r = run_cli(
        "train",
        "--data",
        str(files["data"]),
        "--weights",
        str(files["root"] / name),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        "--device",
        "cpu",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert name in r.stderr and "expected a readable PyTorch checkpoint" in r.stderr
    assert not (tmp_path / "o" / "last.safetensors").exists()


def test_train_refuses_a_directory_holding_another_run(files: dict[str, Path]) -> None:
    before = digest(files["run"] / "last.safetensors")
    r = run_cli(
        "train",
        "--data",
        str(files["data"]),
        "--weights",
        str(files["weights"]),
        "--out",
        str(files["run"]),
        "--no-progress",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--batch-size",
        "4",
    )
    assert r.returncode == 2 and "already holds a run" in r.stderr and "--resume" in r.stderr
    assert digest(files["run"] / "last.safetensors") == before


def test_unwritable_out_and_debug_shows_the_traceback(files: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli(
        "train",
        "--data",
        str(files["data"]),
        "--weights",
        str(files["weights"]),
        "--out",
        str(blocker / "sub"),
        "--no-progress",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--batch-size",
        "4",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "file" in r.stderr
    r = run_cli(
        "eval",
        str(files["root"] / "garbage.safetensors"),
        "--data",
        str(files["data"]),
        "--device",
        "cpu",
        "--debug",
    )
    assert r.returncode == 1 and "Traceback" in r.stderr and "FileFormatError" in r.stderr


def test_reproduce_with_fewer_training_images_than_the_validation_split(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """12 training images against quick's 5,000 held out: one line naming --train-data's data,
    nothing written."""
    r = run_cli(
        "reproduce",
        "--preset",
        "quick",
        "--arch",
        "resnet8",
        "--train-data",
        str(files["data"]),
        "--test-data",
        str(files["data"]),
        "--weights",
        str(files["weights"]),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "train_data" in r.stderr and "holds 12 images" in r.stderr and "5000" in r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize(
    "arch,expect",
    [
        ("resnet999", "arch: unknown model 'resnet999'; close matches: "),
        ("timm-nothing", "arch: unknown model 'timm-nothing' (names: cifar_resnet<6n+2>"),
        (
            "resnet26",
            "arch: 'resnet26' is ambiguous; name one of cifar_resnet26 (cifar), timm/resnet26 (timm)",
        ),
    ],
)
def test_bench_with_an_unknown_architecture(arch: str, expect: str) -> None:
    if arch != "resnet999":
        pytest.importorskip("timm", reason="timm is not installed (optional)")
    r = run_cli("bench", "--arch", arch, "--batch-size", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"blockdrop bench: error: {expect}") and r.stderr.count("\n") == 1, r.stderr
