"""CUDA checks of the blockdrop ops that need a GPU: a workload for compute-sanitizer (`--sanitize`:
every op on odd sizes, both memory formats, empty/partial/full rows, K up to 256) and the achieved
bandwidth of gather_rows / merge_block next to a device-to-device copy of the same bytes and the
plain-PyTorch composition (`--bandwidth`). Run on the GPU machine (see scripts/gpu_run.sh)."""
from __future__ import annotations

import argparse
import statistics

import torch

import blockdrop_ext as bx
from blockdrop_ext import reference as ref


def sanitize() -> None:
    dev = "cuda"
    torch.manual_seed(0)
    for n, k in [(1, 1), (7, 54), (300, 256), (513, 65), (0, 4)]:
        policy = torch.rand(n, k, device=dev) < 0.4
        p = bx.plan(policy)
        want = ref.plan(policy.cpu())
        got = torch.ops.blockdrop.plan(policy.to(torch.uint8))
        assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want)), (n, k)
        assert sum(p.group_counts) == n
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for fmt in (torch.contiguous_format, torch.channels_last):
            for n, c, h in [(5, 4, 7), (64, 16, 8), (33, 32, 5)]:
                x = torch.randn(n, c, h, h, device=dev, dtype=dtype).contiguous(memory_format=fmt)
                for rows in (torch.arange(0, n, 2, device=dev), torch.arange(n, device=dev), torch.empty(0, dtype=torch.long, device=dev)):
                    m = rows.numel()
                    assert torch.equal(bx.gather_rows(x, rows), x[rows])
                    y = torch.randn(m, c, h, h, device=dev, dtype=dtype).contiguous(memory_format=fmt)
                    assert torch.equal(bx.merge_block(x, y, rows), ref.merge_block(x, y, rows))
                    yd = torch.randn(m, 2 * c, (h + 1) // 2, (h + 1) // 2, device=dev, dtype=dtype).contiguous(memory_format=fmt)
                    torch.testing.assert_close(bx.merge_block(x, yd, rows, downsample=True), ref.merge_block(x, yd, rows, downsample=True))
                    s = bx.scatter_add_rows(y, rows, n)
                    assert s.shape[0] == n
                    x2 = x.clone()
                    bx.merge_block_(x2, y, rows)
                    assert torch.equal(x2, ref.merge_block(x, y, rows))
    x = torch.randn(4, 3, 5, 5, device=dev)
    out = torch.ops.blockdrop.gather_rows(x, torch.tensor([1, 99, -5], device=dev))  # no OOB access
    torch.ops.blockdrop.merge_block_(x, out, torch.tensor([1, 99, -5], device=dev), True)
    torch.cuda.synchronize()
    print("sanitize workload: all checks passed")


def _time(fn, reps: int = 30) -> float:
    """Median milliseconds of fn() with CUDA events, after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def bandwidth() -> None:
    dev = "cuda"
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    big = torch.empty(2 * 2**30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(big)
    ms = _time(lambda: dst.copy_(big))
    print(f"device-to-device copy 2 GiB: {2 * big.numel() / ms / 1e6:.0f} GB/s (read+write)")
    del big, dst
    print("| op | shape | dtype | format | rows | ms | GB/s | torch ms | torch GB/s | copy GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in [(256, 256, 56, 56), (256, 64, 32, 32), (256, 1024, 14, 14)]:
        for dtype in (torch.bfloat16, torch.float32):
            for fmt in (torch.channels_last, torch.contiguous_format):
                x = torch.randn(shape, device=dev, dtype=dtype).contiguous(memory_format=fmt)
                n = shape[0]
                rows = torch.randperm(n, device=dev)[: n * 3 // 4].sort().values
                m = rows.numel()
                row_bytes = x[0].numel() * x.element_size()
                tag = "cl" if fmt == torch.channels_last else "nchw"
                # gather: read m rows, write m rows
                gb = 2 * m * row_bytes
                ms = _time(lambda: bx.gather_rows(x, rows, check=False))
                tms = _time(lambda: x.index_select(0, rows))
                sub = x[:m]
                cms = _time(lambda: sub.clone(memory_format=fmt))
                print(f"| gather_rows | {tuple(shape)} | {str(dtype)[6:]} | {tag} | {m} | {ms:.3f} | {gb / ms / 1e6:.0f} | {tms:.3f} | {gb / tms / 1e6:.0f} | {gb / cms / 1e6:.0f} |")
                # merge: read n shortcut rows + m y rows, write n rows
                y = torch.randn((m, *shape[1:]), device=dev, dtype=dtype).contiguous(memory_format=fmt)
                gb = (2 * n + m) * row_bytes

                def torch_merge():
                    out = x.clone(memory_format=fmt)
                    out.index_copy_(0, rows, torch.relu(x.index_select(0, rows) + y))
                    return out

                ms = _time(lambda: bx.merge_block(x, y, rows, check=False))
                tms = _time(torch_merge)
                cms = _time(lambda: x.clone(memory_format=fmt))  # 2n rows of traffic
                print(f"| merge_block | {tuple(shape)} | {str(dtype)[6:]} | {tag} | {m} | {ms:.3f} | {gb / ms / 1e6:.0f} | {tms:.3f} | {gb / tms / 1e6:.0f} | {2 * n * row_bytes / cms / 1e6:.0f} |")
                if shape[1] <= 64:
                    yd = torch.randn(m, 2 * shape[1], shape[2] // 2, shape[3] // 2, device=dev, dtype=dtype).contiguous(memory_format=fmt)
                    ms = _time(lambda: bx.merge_block(x, yd, rows, downsample=True, check=False))
                    tms = _time(lambda: ref.merge_block(x, yd, rows, downsample=True))
                    gbd = (n * row_bytes / 4 + 2 * m * row_bytes / 2 + n * row_bytes / 2)
                    print(f"| merge_block(downsample) | {tuple(shape)} | {str(dtype)[6:]} | {tag} | {m} | {ms:.3f} | {gbd / ms / 1e6:.0f} | {tms:.3f} | {gbd / tms / 1e6:.0f} | - |")
    pol = torch.rand(256, 54, device=dev) < 0.31
    ms = _time(lambda: bx.plan(pol))
    print(f"plan(256x54) incl. its one host copy: {ms * 1e3:.0f} us")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sanitize", action="store_true")
    ap.add_argument("--bandwidth", action="store_true")
    a = ap.parse_args()
    if a.sanitize:
        sanitize()
    if a.bandwidth:
        bandwidth()
