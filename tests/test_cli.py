"""The ``blockdrop`` command line on tiny data: argument errors, train -> finetune -> eval, bench,
demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _helpers import subprocess_env, tiny_image_folder, write_cifar_weights
from blockdrop.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A 3-class 16x16 ImageFolder (train + test split dirs) and a ResNet-8 backbone ``.th``."""
    root = tmp_path_factory.mktemp("tiny")
    tiny_image_folder(root / "data" / "train", n_per_class=8)
    tiny_image_folder(root / "data" / "test", n_per_class=4)
    return {"root": root, "data": root / "data", "weights": write_cifar_weights(root / "r8.th")}


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no command
        ["fly"],  # unknown command
        ["train"],  # --data/--out missing
        ["train", "--data", "x", "--out", "y", "--epochs", "0"],
        ["train", "--data", "x", "--out", "y", "--alpha", "0.3"],
        ["finetune", "--data", "x", "--out", "y", "--bn", "maybe"],
        ["eval"],  # no checkpoint
        ["bench", "--keep", "1.5"],
        ["demo", "--threads", "-4"],
    ],
)
def test_bad_arguments_exit_nonzero_with_usage(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path: Path, capsys, tiny) -> None:
    missing = tmp_path / "no" / "cifar10-jpeg-train.tar.gz"
    assert (
        main(["train", "--data", str(missing), "--weights", str(tiny["weights"]), "--out", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_missing_weights_and_arch_is_an_error(tmp_path: Path, capsys, tiny) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(tiny["data"]), "--out", str(tmp_path)])
    assert e.value.code == 2 and "--weights" in capsys.readouterr().err


def test_train_finetune_eval_bench_on_tiny_data(tmp_path: Path, tiny, capsys) -> None:
    common = [
        "--data",
        str(tiny["data"]),
        "--val-data",
        str(tiny["data"]),
        "--batch-size",
        "6",
        "--steps-per-epoch",
        "2",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert (
        main(
            [
                "train",
                *common,
                "--weights",
                str(tiny["weights"]),
                "--out",
                str(tmp_path / "cl"),
                "--epochs",
                "2",
                "--cl-step",
                "2",
            ]
        )
        == 0
    )
    ck = tmp_path / "cl" / "last.safetensors"
    meta = json.loads((tmp_path / "cl" / "last.json").read_text())
    assert meta["stage"] == "curriculum" and meta["backbone_spec"]["depth"] == 8
    assert meta["progress"]["done"] and meta["classes"] == ["blue", "green", "red"]
    # resume of a finished run is a no-op that still succeeds
    assert (
        main(
            [
                "train",
                *common,
                "--weights",
                str(tiny["weights"]),
                "--out",
                str(tmp_path / "cl"),
                "--epochs",
                "2",
                "--cl-step",
                "2",
                "--resume",
            ]
        )
        == 0
    )
    # a curriculum checkpoint cannot resume a finetune
    assert main(["finetune", *common, "--init", str(ck), "--out", str(tmp_path / "cl"), "--resume"]) == 2
    assert (
        main(
            [
                "finetune",
                *common,
                "--init",
                str(ck),
                "--out",
                str(tmp_path / "ft"),
                "--epochs",
                "1",
                "--gamma",
                "2",
                "--bn",
                "train",
            ]
        )
        == 0
    )
    ft = tmp_path / "ft" / "last.safetensors"
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(ck),
                str(ft),
                "--data",
                str(tiny["data"]),
                "--batch-size",
                "5",
                "--bench-batches",
                "1",
                "--repeats",
                "1",
                "--plots",
                str(tmp_path / "plots"),
                "--json",
                str(tmp_path / "res.json"),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "full network" in out and "BlockDrop" in out and "measured speedup" in out
    res = json.loads((tmp_path / "res.json").read_text())
    assert len(res) == 2 and res[1]["n"] == 12 and res[1]["num_blocks"] == 3
    assert res[1]["flops_mean"] > 0 and res[1]["full_flops"] > 0 and 0 <= res[1]["blocks_mean"] <= 3
    assert res[1]["throughput"]["full_ips"] > 0 and res[1]["num_policies"] >= 1
    for name in ("acc_vs_flops.png", "block_usage_0.png", "block_usage_1.png", "policy_grid.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    assert (
        main(
            [
                "bench",
                "--arch",
                "resnet8",
                "--batch-size",
                "4",
                "--image-size",
                "16",
                "--repeats",
                "1",
                "--strategies",
                "masked,gather",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "gather" in capsys.readouterr().out


def test_finetune_init_conflicts_with_weights(tmp_path: Path, tiny) -> None:
    with pytest.raises(SystemExit) as e:
        main(
            [
                "finetune",
                "--data",
                str(tiny["data"]),
                "--out",
                str(tmp_path),
                "--init",
                "a",
                "--weights",
                str(tiny["weights"]),
            ]
        )
    assert e.value.code == 2


def test_demo_quick_on_digits_is_deterministic(tmp_path: Path, capsys) -> None:
    runs = []
    for name in ("a", "b"):
        assert main(["demo", "--quick", "--out", str(tmp_path / name), "--no-progress"]) == 0
        runs.append(json.loads((tmp_path / name / "results.json").read_text()))
    a, b = runs
    for side in ("full", "blockdrop"):
        assert {"accuracy", "blocks_mean", "measured_speedup"} <= set(a[side])
        assert 0 <= a[side]["accuracy"] <= 1
    assert a["full"]["measured_speedup"] == 1.0 and a["blockdrop"]["measured_speedup"] > 0
    # the same seed: the same accuracy and the same policies
    assert a["blockdrop"]["accuracy"] == b["blockdrop"]["accuracy"]
    assert a["full"]["accuracy"] == b["full"]["accuracy"]
    assert a["policy_sha1"] == b["policy_sha1"]
    assert (tmp_path / "a" / "policy_grid.png").is_file() and (tmp_path / "a" / "report.md").is_file()
    assert "BlockDrop" in capsys.readouterr().out


def test_python_dash_m_help() -> None:
    env = subprocess_env()
    r = subprocess.run(
        [sys.executable, "-m", "blockdrop", "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and all(c in r.stdout for c in ("train", "finetune", "eval", "bench", "demo"))
    r = subprocess.run(
        [sys.executable, "-m", "blockdrop", "train", "--epochs", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "positive integer" in r.stderr


def test_parser_defaults_are_the_official_settings() -> None:
    from blockdrop.cli import train_config
    from blockdrop.training.config import resolve_schedule

    p = build_parser()
    a = train_config(p.parse_args(["train", "--data", "d", "--out", "o", "--arch", "resnet32"]), "curriculum")
    assert (a.batch_size, a.lr, a.beta, a.alpha, a.cl_step, a.gamma, a.lr_decay_at) == (
        2048,
        1e-3,
        0.1,
        0.8,
        1,
        1.0,
        None,
    )
    # the config's one rule (the trainer resolves it): one block freed per epoch, then 5 more
    assert resolve_schedule(a, 5, 10).epochs == 5 + 5
    e = train_config(
        p.parse_args(
            [
                "train",
                "--data",
                "d",
                "--out",
                "o",
                "--arch",
                "resnet32",
                "--extra-epochs",
                "2",
                "--cl-step",
                "2",
            ]
        ),
        "curriculum",
    )
    assert resolve_schedule(e, 5, 10).epochs == 3 + 2
    f = train_config(p.parse_args(["finetune", "--data", "d", "--out", "o", "--init", "c"]), "finetune")
    assert (f.batch_size, f.lr, f.beta, f.bn, f.strategy, f.gamma, f.lr_decay_at, f.backbone_on) == (
        256,
        1e-4,
        0.0,
        "train",
        "gather",
        5.0,
        0.8,
        "sample",
    )
    assert resolve_schedule(f, 5, 10).epochs == 10
    g = train_config(
        p.parse_args(
            [
                "finetune",
                "--data",
                "d",
                "--out",
                "o",
                "--init",
                "c",
                "--gamma",
                "2",
                "--bn",
                "frozen",
                "--lr-decay-at",
                "0.5",
                "--backbone-on",
                "greedy",
            ]
        ),
        "finetune",
    )
    assert (g.gamma, g.bn, g.lr_decay_at, g.backbone_on) == (2.0, "frozen", 0.5, "greedy")


def test_eval_thresholds_give_a_budget_curve_from_one_checkpoint(tmp_path: Path, tiny, capsys) -> None:
    """`eval --thresholds`: each row equals the checkpoint evaluated with policy p >= t, computed
    here with the policy net and the masked (official) forward."""
    from blockdrop.checkpoint import load_blockdrop_net
    from blockdrop.data import load_dataset
    from blockdrop.engine import dynamic_forward
    from blockdrop.training.baselines import BaselinePolicy  # noqa: F401  (checkpoint kinds are known)

    assert (
        main(
            [
                "train",
                "--data",
                str(tiny["data"]),
                "--weights",
                str(tiny["weights"]),
                "--out",
                str(tmp_path / "cl"),
                "--epochs",
                "1",
                "--steps-per-epoch",
                "2",
                "--batch-size",
                "6",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    capsys.readouterr()
    ck = tmp_path / "cl" / "last.safetensors"
    ts = [0.3, 0.5, 0.7]
    assert (
        main(
            [
                "eval",
                str(ck),
                "--data",
                str(tiny["data"]),
                "--thresholds",
                "0.3,0.5,0.7",
                "--bench-batches",
                "1",
                "--repeats",
                "1",
                "--json",
                str(tmp_path / "t.json"),
                "--plots",
                str(tmp_path / "plots"),
                "--no-progress",
                "--device",
                "cpu",
                "--channels-last",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| threshold | accuracy | blocks |" in out and "| 0.7 |" in out
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["label"].rsplit("t=", 1)[1] for r in rows] == ["0.3", "0.5", "0.7"]
    net, _ = load_blockdrop_net(ck)
    ds = load_dataset(tiny["data"], "test").dataset
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    correct = []
    with torch.no_grad():
        probs = net.policy_net(x)
        for t, r in zip(ts, rows):
            pol = (probs >= t).float()
            correct.append(dynamic_forward(net.backbone, x, pol, strategy="masked").argmax(1) == y)
            assert r["accuracy"] == pytest.approx(float(correct[-1].float().mean()))
            assert r["blocks_mean"] == pytest.approx(float(pol.sum(1).mean()))
            assert r["throughput"]["speedup"] > 0
    # each threshold against the first, paired over the same images (counted here)
    assert "vs_first" not in rows[0] and out.count("paired: ") == 2
    for c, r in zip(correct[1:], rows[1:]):
        vs = r["vs_first"]
        assert (vs["a_only"], vs["b_only"]) == (int((c & ~correct[0]).sum()), int((correct[0] & ~c).sum()))
    assert (tmp_path / "plots" / "acc_vs_flops.png").is_file()
    # the same checkpoint twice: distinct labels, and a paired difference of exactly nothing
    assert (
        main(
            [
                "eval",
                str(ck),
                str(ck),
                "--data",
                str(tiny["data"]),
                "--bench-batches",
                "0",
                "--json",
                str(tmp_path / "twice.json"),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "twice.json").read_text())
    assert [r["label"][-2:] for r in rows] == ["#1", "#2"] and rows[0]["label"][:-2] == rows[1]["label"][:-2]
    assert f"paired: {rows[1]['label']} - {rows[0]['label']}" in out
    assert (rows[1]["vs_first"]["a_only"], rows[1]["vs_first"]["b_only"]) == (0, 0)
    with pytest.raises(SystemExit):  # a threshold outside (0, 1) is an argument error
        main(["eval", str(ck), "--data", str(tiny["data"]), "--thresholds", "0.5,1.5"])


def test_bench_dtype_and_channels_last(capsys) -> None:
    assert (
        main(
            [
                "bench",
                "--arch",
                "resnet8",
                "--batch-size",
                "4",
                "--image-size",
                "16",
                "--repeats",
                "1",
                "--strategies",
                "gather",
                "--device",
                "cpu",
                "--dtype",
                "bfloat16",
                "--channels-last",
            ]
        )
        == 0
    )
    assert "bfloat16 channels_last" in capsys.readouterr().out


def test_the_version_has_one_source() -> None:
    """setup.py reads blockdrop.__version__ (the installed metadata says the same)."""
    import importlib.metadata

    import blockdrop

    root = Path(__file__).resolve().parents[1]
    assert "version=VERSION" in (root / "setup.py").read_text()
    assert importlib.metadata.version("blockdrop") == blockdrop.__version__
