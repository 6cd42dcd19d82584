"""A small CUDA workload for compute-sanitizer (memcheck): every blockdrop op forward and backward
(plan, gather_rows, scatter_add_rows, merge_block with/without option-A downsample, merge_block_,
downsample_a) in float32/bfloat16, NCHW/channels_last, with empty, partial and full row sets, each
compared with the plain-PyTorch reference; then dynamic_forward end to end on a tiny CIFAR ResNet
(gather/group/auto vs masked, inference and backward). Sizes are tiny: memcheck makes every
kernel slow. Exit status 0 when every check passed.

    compute-sanitizer --tool memcheck --error-exitcode 3 python3 scripts/sanitize_ops.py
"""

from __future__ import annotations

import sys

import torch

import blockdrop_ext as bx
from blockdrop_ext import reference as ref


def close(a: torch.Tensor | None, b: torch.Tensor | None, what: str) -> None:
    assert a is not None and b is not None, what  # a gradient that was never written
    tol = 1e-5 if a.dtype in (torch.float32, torch.float64) else 2e-2
    torch.testing.assert_close(a.float().cpu(), b.float().cpu(), rtol=tol, atol=tol, msg=what)


def ops(dev: str = "cuda") -> int:
    checks = 0
    torch.manual_seed(0)
    assert bx.build_info()["cuda"], f"no CUDA kernels in this build: {bx.build_info()}"
    for n, k in [(1, 1), (9, 54), (130, 33), (0, 3)]:
        pol = torch.rand(n, k, device=dev) < 0.4
        p = bx.plan(pol)
        assert sum(p.counts) == int(pol.sum()) and sum(p.group_counts) == n
        for kk in range(k):
            assert torch.equal(p.block_rows(kk).cpu(), pol[:, kk].nonzero().flatten().cpu())
        checks += 1
    for dtype in (torch.float32, torch.bfloat16):
        for fmt in (torch.contiguous_format, torch.channels_last):
            for n, c, h in [(6, 4, 7), (33, 16, 8)]:
                x = torch.randn(n, c, h, h, device=dev, dtype=dtype).contiguous(memory_format=fmt)
                for rows in (
                    torch.arange(1, n, 2, device=dev),
                    torch.arange(n, device=dev),
                    torch.empty(0, dtype=torch.long, device=dev),
                ):
                    m = rows.numel()
                    what = f"{dtype} {fmt} n={n} c={c} h={h} m={m}"
                    close(bx.gather_rows(x, rows), ref.gather_rows(x, rows), "gather " + what)
                    y = torch.randn(m, c, h, h, device=dev, dtype=dtype).contiguous(memory_format=fmt)
                    close(
                        bx.scatter_add_rows(y, rows, n), ref.scatter_add_rows(y, rows, n), "scatter " + what
                    )
                    close(bx.merge_block(x, y, rows), ref.merge_block(x, y, rows), "merge " + what)
                    close(
                        bx.merge_block(x, y, rows, relu=False),
                        ref.merge_block(x, y, rows, relu=False),
                        "merge norelu " + what,
                    )
                    yd = torch.randn(
                        m, 2 * c, (h + 1) // 2, (h + 1) // 2, device=dev, dtype=dtype
                    ).contiguous(memory_format=fmt)
                    close(
                        bx.merge_block(x, yd, rows, downsample=True),
                        ref.merge_block(x, yd, rows, downsample=True),
                        "merge ds " + what,
                    )
                    close(bx.downsample_a(x, 2 * c), ref.downsample_a(x, 2 * c), "downsample_a " + what)
                    x2, x3 = x.clone(), x.clone()
                    bx.merge_block_(x2, y, rows)
                    ref.merge_block_(x3, y, rows)
                    close(x2, x3, "merge_ " + what)
                    # backward: merge_block (identity and option A), gather_rows, scatter_add_rows
                    for ds, yy in ((False, y), (True, yd)):
                        xa = x.detach().clone().requires_grad_()
                        ya = yy.detach().clone().requires_grad_()
                        xb = x.detach().clone().requires_grad_()
                        yb = yy.detach().clone().requires_grad_()
                        g = torch.randn_like(ref.merge_block(xb, yb, rows, downsample=ds))
                        bx.merge_block(xa, ya, rows, downsample=ds).backward(g)
                        ref.merge_block(xb, yb, rows, downsample=ds).backward(g)
                        close(xa.grad, xb.grad, f"merge ds={ds} grad x " + what)
                        zero = torch.zeros_like(yy)  # m = 0: the reference never touches y
                        close(
                            zero if ya.grad is None else ya.grad,
                            zero if yb.grad is None else yb.grad,
                            f"merge ds={ds} grad y " + what,
                        )
                    xa = x.detach().clone().requires_grad_()
                    (bx.gather_rows(xa, rows).float() * 2).sum().backward()
                    close(
                        xa.grad,
                        ref.scatter_add_rows(torch.full_like(x[rows], 2.0), rows, n),
                        "gather grad " + what,
                    )
                    ya = y.detach().clone().requires_grad_()
                    (bx.scatter_add_rows(ya, rows, n).float() * 3).sum().backward()
                    close(ya.grad, torch.full_like(y, 3.0), "scatter grad " + what)
                    checks += 12
    torch.cuda.synchronize()
    return checks


def engine(dev: str = "cuda") -> int:
    from blockdrop import dynamic_forward, models

    checks = 0
    torch.manual_seed(1)
    model = models.cifar_resnet(20).to(dev).eval()
    for dtype, fmt in ((torch.float32, torch.contiguous_format), (torch.bfloat16, torch.channels_last)):
        m = model.to(dtype=dtype, memory_format=fmt)  # type: ignore[call-overload]  # torch stubs
        x = torch.randn(12, 3, 16, 16, device=dev, dtype=dtype).contiguous(memory_format=fmt)
        pol = torch.rand(12, m.num_blocks, device=dev) < 0.4
        pol[:4] = pol[0]  # a repeated policy, so group has a multi-image group
        with torch.inference_mode():
            want = dynamic_forward(m, x, pol, "masked")
            for s in ("gather", "group", "auto", "loop"):
                close(dynamic_forward(m, x, pol, s), want, f"engine {s} {dtype}")
                checks += 1
        xg = x.detach().clone().requires_grad_()
        dynamic_forward(m, xg, pol, "gather").float().sum().backward()
        assert xg.grad is not None and torch.isfinite(xg.grad).all()
        checks += 1
    torch.cuda.synchronize()
    return checks


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("sanitize_ops: no CUDA GPU visible", file=sys.stderr)
        sys.exit(2)
    n = ops() + engine()
    print(f"sanitize_ops: {n} checks passed on {torch.cuda.get_device_name()}")
