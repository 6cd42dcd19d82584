"""Device resolution, mixed-precision modes and eval_mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blockdrop.runtime import amp_autocast, amp_dtype, eval_mode, resolve_device


def test_amp_modes_map_to_dtypes() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cuda, "auto") is torch.float16
    assert amp_dtype(cpu, "bf16") is torch.bfloat16 and amp_dtype(cpu, "off") is None
    assert amp_dtype(cuda, "fp16") is torch.float16
    assert amp_dtype(cpu, True) is None and amp_dtype(cuda, True) is torch.float16  # bool = auto/off
    with pytest.raises(ValueError, match="amp"):
        amp_dtype(cpu, "fp8")


def test_bf16_autocast_runs_convolutions_in_bfloat16_on_cpu() -> None:
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with amp_autocast(torch.device("cpu"), "bf16"):
        y = conv(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), conv(x), rtol=2e-2, atol=2e-2)
    with amp_autocast(torch.device("cpu"), "off"):
        assert conv(x).dtype == torch.float32


def test_trainer_bf16_on_cpu_has_no_grad_scaler(tmp_path) -> None:
    from blockdrop.data import DataInfo, ImageArrayDataset, SmallImageTransform
    from blockdrop.models import cifar_resnet
    from blockdrop.models.policy import CifarPolicyNet
    from blockdrop.training.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    bb = cifar_resnet(8, num_classes=3)
    imgs = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    data = DataInfo(
        ImageArrayDataset(imgs, torch.arange(8) % 3, SmallImageTransform(True, pad=2)),
        ["a", "b", "c"],
        16,
        "toy",
    )
    tr = Trainer(
        TrainConfig(
            stage="finetune",
            epochs=1,
            steps_per_epoch=2,
            batch_size=4,
            amp="bf16",
            progress=False,
            device="cpu",
        ),
        CifarPolicyNet(3, width=8),
        bb,
        data,
        tmp_path,
    )
    assert not tr.scaler.is_enabled()
    last = tr.fit()
    assert torch.isfinite(torch.tensor(last["loss"]))
    assert all(p.dtype == torch.float32 for p in bb.parameters())  # master weights stay float32
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="half")


def test_eval_mode_restores_each_flag_and_device_errors_name_the_option() -> None:
    m = nn.Sequential(nn.BatchNorm1d(2), nn.Dropout())
    m.train()
    m[1].eval()
    with eval_mode(m):
        assert not any(x.training for x in m.modules())
    assert m.training and m[0].training and not m[1].training
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            resolve_device("cuda")
