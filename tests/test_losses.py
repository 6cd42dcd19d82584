"""blockdrop.training.losses against float64 references written here from the definitions."""

from __future__ import annotations

import pytest
import torch

from blockdrop.training.losses import distillation_loss, soft_target_kl


def _reference(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, w: float, t: float) -> float:
    lg, tg = logits.double(), teacher.double()
    logp = lg - lg.logsumexp(1, keepdim=True)
    ce = -logp[torch.arange(len(y)), y].mean()
    q = torch.exp(tg / t - (tg / t).logsumexp(1, keepdim=True))
    logs = lg / t - (lg / t).logsumexp(1, keepdim=True)
    kl = (q * (q.log() - logs)).sum(1).mean() * t * t
    return float((1 - w) * ce + w * kl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_distillation_loss_matches_its_definition(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    for _ in range(5):
        n, c = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(2, 11, (1,), generator=g))
        logits = (3 * torch.randn(n, c, generator=g)).to(dtype)
        teacher = (3 * torch.randn(n, c, generator=g)).to(dtype)
        y = torch.randint(0, c, (n,), generator=g)
        w, t = float(torch.rand((), generator=g)), float(0.5 + 4 * torch.rand((), generator=g))
        got = distillation_loss(logits, y, teacher, w, t)
        assert got.dtype == torch.float32
        assert float(got) == pytest.approx(_reference(logits, y, teacher, w, t), rel=1e-5, abs=1e-6)
        assert float(soft_target_kl(logits, teacher, t)) == pytest.approx(
            _reference(logits, y, teacher, 1.0, t), rel=1e-5, abs=1e-6
        )
    # weight 0 is plain cross-entropy and needs no teacher
    assert float(distillation_loss(logits, y, None, 0.0, 4.0)) == pytest.approx(
        _reference(logits, y, teacher, 0.0, 1.0), rel=1e-5
    )


def test_distillation_loss_gradient_matches_float64_autograd() -> None:
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(6, 5, generator=g, requires_grad=True)
    teacher, y = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    distillation_loss(logits, y, teacher, 0.4, 2.0).backward()
    ref = logits.detach().double().requires_grad_()
    lp = torch.log_softmax(ref, 1)
    q = torch.softmax(teacher.double() / 2.0, 1)
    loss = (
        0.6 * -lp[torch.arange(6), y].mean()
        + 0.4 * 4.0 * (q * (q.log() - torch.log_softmax(ref / 2.0, 1))).sum(1).mean()
    )
    loss.backward()
    torch.testing.assert_close(logits.grad.double(), ref.grad, rtol=1e-5, atol=1e-7)


def test_distillation_loss_rejects_bad_arguments() -> None:
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="weight"):
        distillation_loss(x, y, x, 1.5, 4.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        distillation_loss(x, y, None, 0.5, 4.0)
