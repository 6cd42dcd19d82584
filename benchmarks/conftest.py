"""pytest-benchmark suites of blockdrop (``pytest benchmarks -q``; see benchmarks/README.md).

Measurement setup for the whole session (why: benchmarks/README.md): one CPU thread, glibc's trim/mmap
thresholds raised (mallopt; for the same effect from the start, export MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_), denormals flushed. CUDA cases carry the ``gpu`` marker and are skipped
with a reason when no GPU is visible (the repository's conftest.py). Knobs:
BLOCKDROP_BENCH_FULL=1 (the full model matrix), BLOCKDROP_BENCH_ROUNDS (timed rounds per model
case; default 2 on CPU, 10 on GPU), BLOCKDROP_BENCH_THREADS (default 1 without a GPU, torch's
default with one). Without a GPU the timer is time.process_time (this process's CPU time;
BLOCKDROP_BENCH_CLOCK=wall or --benchmark-timer time.perf_counter for wall time).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import env  # noqa: E402

SETUP: dict = {}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # CPU: time with this process's CPU time (one thread; other processes' load on the shared VM
    # does not count), unless --benchmark-timer was given. GPU runs keep the wall clock (the model
    # suite synchronizes inside the timed call).
    if not torch.cuda.is_available() and env.CPU_CLOCK == "process":
        opt = getattr(config.option, "benchmark_timer", None)
        if opt is not None and "perf_counter" in str(opt):
            config.option.benchmark_timer = "time.process_time"
    threads = os.environ.get("BLOCKDROP_BENCH_THREADS", "0" if torch.cuda.is_available() else "1")
    SETUP.update(env.setup_measurement(int(threads)))  # 0: torch's default (GPU machines)


def pytest_benchmark_update_machine_info(config, machine_info):
    dev = env.default_device()
    machine_info["blockdrop"] = {
        "machine": env.default_machine(dev),
        "threads": torch.get_num_threads(),
        "malloc": SETUP.get("malloc"),
        "gpu": torch.cuda.get_device_name() if dev == "cuda" else None,
        "git": env.git_commit(),
    }
