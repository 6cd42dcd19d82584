"""Achieved bandwidth of gather_rows / merge_block on a GPU, next to a device-to-device copy of the
same bytes and the plain-PyTorch composition (the numbers in benchmarks/results/nvidia-h200-ops-check.md):
    python3 scripts/gpu_ops_check.py --bandwidth
The compute-sanitizer workload is scripts/sanitize_ops.py; the whole GPU pass is scripts/gpu_run.sh."""
from __future__ import annotations

import argparse
import statistics

import torch

import blockdrop_ext as bx
from blockdrop_ext import reference as ref  # the plain-PyTorch composition timed beside the kernels


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
    ap.add_argument("--bandwidth", action="store_true")
    a = ap.parse_args()
    if a.bandwidth:
        bandwidth()
