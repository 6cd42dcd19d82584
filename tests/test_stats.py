"""Accuracy standard errors and the paired comparison of two models against independent
references: numpy in float64 for the standard errors, scipy's binomial test for McNemar."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blockdrop.evaluation.stats import accuracy_se, mcnemar_p, paired_difference


def _pair(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g) < 0.9
    flip = torch.rand(n, generator=g) < 0.08  # b disagrees with a on about 8% of images
    return a, a ^ flip


@pytest.mark.parametrize("n,seed", [(2, 0), (50, 1), (1000, 2), (10000, 3)])
def test_paired_difference_matches_numpy(n: int, seed: int) -> None:
    a, b = _pair(n, seed)
    d = a.numpy().astype(np.float64) - b.numpy().astype(np.float64)
    res = paired_difference(a, b)
    assert res.n == n
    assert res.diff == pytest.approx(d.mean(), abs=1e-15)
    assert res.se == pytest.approx(d.std(ddof=1) / math.sqrt(n), rel=1e-12, abs=1e-15)
    assert res.a_only == int((d > 0).sum()) and res.b_only == int((d < 0).sum())
    lo, hi = res.ci95
    assert lo == pytest.approx(d.mean() - 1.959964 * res.se, abs=1e-6)
    assert hi == pytest.approx(d.mean() + 1.959964 * res.se, abs=1e-6)
    # swapping the models flips the sign and nothing else
    rev = paired_difference(b, a)
    assert rev.diff == -res.diff and rev.se == res.se and rev.p_value == res.p_value


def test_accuracy_se_matches_numpy() -> None:
    c = torch.rand(777, generator=torch.Generator().manual_seed(4)) < 0.6
    x = c.numpy().astype(np.float64)
    acc, se = accuracy_se(c)
    assert acc == pytest.approx(x.mean()) and se == pytest.approx(math.sqrt(x.mean() * (1 - x.mean()) / 777))
    assert accuracy_se(c.to(torch.uint8)) == (acc, se)  # 0/1 integers are accepted


def test_mcnemar_matches_scipy_binomtest() -> None:
    stats = pytest.importorskip("scipy.stats", reason="scipy is the reference for the exact test")
    rng = np.random.default_rng(5)
    cases = [(0, 0), (0, 1), (3, 3), (10, 2), (2, 10), (0, 25), (40, 61), (300, 350), (700, 900), (0, 2000)]
    cases += [tuple(int(v) for v in rng.integers(0, 200, 2)) for _ in range(20)]
    for a_only, b_only in cases:
        n = a_only + b_only
        ref = 1.0 if n == 0 else stats.binomtest(min(a_only, b_only), n, 0.5).pvalue
        assert mcnemar_p(a_only, b_only) == pytest.approx(ref, rel=1e-9, abs=1e-300), (a_only, b_only)


def test_one_image_has_no_standard_error_and_large_counts_are_fast() -> None:
    import time

    res = paired_difference(torch.tensor([True]), torch.tensor([False]))
    assert res.diff == 1.0 and math.isnan(res.se) and res.p_value == 1.0
    t0 = time.perf_counter()
    p = mcnemar_p(25000, 25200)  # 50,200 discordant images
    assert time.perf_counter() - t0 < 5.0
    stats = pytest.importorskip("scipy.stats", reason="scipy is the reference for the exact test")
    assert p == pytest.approx(stats.binomtest(25000, 50200, 0.5).pvalue, rel=1e-6)


def test_identical_models_differ_by_nothing() -> None:
    a, _ = _pair(100, 6)
    res = paired_difference(a, a.clone())
    assert (res.diff, res.se, res.a_only, res.b_only, res.p_value) == (0.0, 0.0, 0, 0, 1.0)
    assert "+0.00 +- 0.00 points" in res.describe()


def test_bad_inputs_name_the_argument() -> None:
    a, b = _pair(10, 7)
    with pytest.raises(ValueError, match="correct_b: expected the same images"):
        paired_difference(a, b[:9])
    with pytest.raises(ValueError, match="correct_a: expected bool"):
        paired_difference(a.float(), b)
    with pytest.raises(ValueError, match="correct_a: expected a 1-D tensor"):
        paired_difference(a.view(2, 5), b)
    with pytest.raises(ValueError, match="correct: expected at least one image"):
        accuracy_se(torch.zeros(0, dtype=torch.bool))
    with pytest.raises(ValueError, match="correct: expected bool"):
        accuracy_se(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_p(-1, 3)
