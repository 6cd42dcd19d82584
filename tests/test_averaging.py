"""blockdrop.training.averaging against a float64 average computed here, tensor by tensor, and the
averaged network's eval-mode outputs against a network built from that average by hand."""

from __future__ import annotations

import copy

import pytest
import torch

from blockdrop.models import cifar_resnet
from blockdrop.training.averaging import average_weights


def _trained_like(seed: int) -> torch.nn.Module:
    """A ResNet-8 with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = cifar_resnet(8, num_classes=3)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 3, 16, 16) * 2 + 0.5)
    return net.eval()


def test_every_float_tensor_is_the_weighted_mean_and_integers_come_from_the_first() -> None:
    a, b = _trained_like(1), _trained_like(2)
    sa0 = {k: v.clone() for k, v in a.state_dict().items()}
    sb0 = {k: v.clone() for k, v in b.state_dict().items()}
    w = float(torch.rand(()).item()) * 0.3 + 0.1  # away from 0.5: a swapped weight must fail
    out = average_weights(a, b, w)
    so = out.state_dict()
    floats = 0
    for k, t in sa0.items():
        if t.is_floating_point():
            ref = (1 - w) * t.double() + w * sb0[k].double()
            torch.testing.assert_close(so[k].double(), ref, rtol=1e-6, atol=1e-7)
            floats += 1
        else:
            assert torch.equal(so[k], t), k
    assert floats > 10 and any("running_var" in k for k in so)
    # the inputs are untouched, and the result is a separate module
    assert all(torch.equal(a.state_dict()[k], v) for k, v in sa0.items())
    assert all(torch.equal(b.state_dict()[k], v) for k, v in sb0.items())
    assert out is not a and not out.training


def test_outputs_equal_a_network_loaded_with_the_average_by_hand() -> None:
    a, b = _trained_like(3), _trained_like(4)
    w = 0.25
    ref = copy.deepcopy(a)
    sa, sb = a.state_dict(), b.state_dict()
    ref.load_state_dict(
        {
            k: (sa[k].double() * (1 - w) + sb[k].double() * w).float() if sa[k].is_floating_point() else sa[k]
            for k in sa
        }
    )
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(average_weights(a, b, w)(x), ref(x), rtol=1e-5, atol=1e-5)
        # the end points are the networks themselves
        torch.testing.assert_close(average_weights(a, b, 0.0)(x), a(x), rtol=0, atol=0)
        torch.testing.assert_close(average_weights(a, b, 1.0)(x), b(x), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(average_weights(a, b, w)(x), a(x), atol=1e-3)


def test_bad_arguments_name_what_was_expected() -> None:
    a = _trained_like(5)
    with pytest.raises(ValueError, match=r"weight: expected .* \[0, 1\]"):
        average_weights(a, a, 1.5)
    with pytest.raises(ValueError, match="b: expected the same parameters"):
        average_weights(a, cifar_resnet(20, num_classes=3), 0.5)
    with pytest.raises(ValueError, match=r"b: 'linear.weight' is \(4, 64\)"):
        average_weights(a, cifar_resnet(8, num_classes=4), 0.5)
