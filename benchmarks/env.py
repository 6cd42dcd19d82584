"""The measurement environment of the benchmarks: one CPU thread, glibc's malloc thresholds, the
clock, and what machine, commit and load a result was measured on (why: benchmarks/README.md)."""

from __future__ import annotations

import ctypes
import os
import platform
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

import blockdrop_ext

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184"}

#: CPU clock: "process" = CPU time of this process (time.process_time), "wall" = perf_counter.
#: With one thread, process time is what the call takes on a core of its own: on the shared 2-core
#: VM other processes' load made wall time swing 1.5-3x while process time stayed within ~15%.
CPU_CLOCK = os.environ.get("BLOCKDROP_BENCH_CLOCK", "process")


def clock(device: str) -> str:
    """The :func:`blockdrop.evaluation.timing.interleaved` clock for ``device``."""
    return "wall" if device == "cuda" else ("process" if CPU_CLOCK == "process" else "wall")


def clock_name(device: str) -> str:
    if device == "cuda":
        return "wall (perf_counter, synchronized)"
    return "process CPU time (time.process_time)" if CPU_CLOCK == "process" else "wall (perf_counter)"


def tune_malloc() -> str:
    """Stop glibc from returning freed activation memory to the OS (page-fault storms, see
    benchmarks/README.md). The environment variables (MALLOC_ENV) work only when set before the
    process starts; this applies the same thresholds with mallopt at run time. Returns a note."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return "env"
    try:
        libc = ctypes.CDLL("libc.so.6")
        big = ctypes.c_int(2**31 - 1)
        ok = libc.mallopt(-1, big) == 1 and libc.mallopt(-3, big) == 1  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
        return "mallopt" if ok else "mallopt-failed"
    except OSError:  # not glibc
        return "unavailable"


def setup_measurement(threads: int | None = 1) -> dict:
    """One CPU thread (stable on the shared 2-core VM), malloc thresholds, denormals flushed (random
    weights must not fall into slow denormal arithmetic; the same for every strategy)."""
    if threads:
        torch.set_num_threads(threads)
    malloc = tune_malloc()
    torch.set_flush_denormal(True)
    return {"threads": torch.get_num_threads(), "malloc": malloc}


def full_matrix() -> bool:
    """BLOCKDROP_BENCH_FULL=1: the pytest suites run the whole matrix instead of the CPU subset."""
    return os.environ.get("BLOCKDROP_BENCH_FULL", "").strip().lower() in {"1", "true", "yes", "on"}


def bench_rounds(device: str) -> int:
    """Timed rounds per pytest model case: BLOCKDROP_BENCH_ROUNDS, default 2 on CPU, 10 on GPU."""
    env = os.environ.get("BLOCKDROP_BENCH_ROUNDS")
    return int(env) if env else (10 if device == "cuda" else 2)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_machine(device: str) -> str:
    """'cpu-2core' style for CPUs, the card's name for GPUs (e.g. 'nvidia-h100-80gb-hbm3')."""
    if device == "cuda":
        return slug(torch.cuda.get_device_name())
    return f"cpu-{os.cpu_count()}core"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def dirty_files() -> list[str]:
    """Uncommitted changes to the library/kernels the numbers were taken with."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "python", "blockdrop_ext", "csrc", "setup.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        return [line[3:] for line in out.splitlines()]
    except (OSError, subprocess.SubprocessError):
        return []


def environment(device: str) -> dict:
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "blockdrop_ext": blockdrop_ext.build_info(),
        "git": git_commit(),
        "uncommitted": dirty_files(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(),
            sms=p.multi_processor_count,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return info
