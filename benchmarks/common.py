"""Shared pieces of the benchmark suites (pytest-benchmark files and ``benchmarks/run.py``).

Models, policy mixes, the strategies being compared (``full`` = the plain network, the engine's
``masked/loop/gather/group/auto``, and ``torch_gather`` = the plain-PyTorch per-block
``index_select -> block -> index_copy_`` peer written here), the correctness check against
``masked``, the measurement environment (one thread, glibc malloc thresholds) and timing helpers.

Nothing here edits the library; it only calls its public API (``blockdrop.dynamic_forward``,
``blockdrop.accounting.ideal_speedup``, ``blockdrop_ext.*``).
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

import blockdrop_ext
from blockdrop_ext.reference import downsample_a as downsample_a_reference
from blockdrop import dynamic_forward, models
from blockdrop.accounting import ideal_speedup

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: Strategies compared, in the order they are reported. ``full`` is the plain network (every block).
STRATEGIES = ("full", "masked", "loop", "gather", "group", "auto", "torch_gather")
ENGINE_STRATEGIES = ("masked", "loop", "gather", "group", "auto")

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


# ------------------------------------------------------------------------------------ environment


def tune_malloc() -> str:
    """Stop glibc from returning freed activation memory to the OS (page-fault storms, see
    ../shared/FACTS.md). The environment variables (MALLOC_ENV) work only when set before the
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
        out = subprocess.run(["git", "status", "--porcelain", "python", "blockdrop_ext", "csrc", "setup.py"],
                             cwd=ROOT, capture_output=True, text=True, timeout=5).stdout
        return [line[3:] for line in out.splitlines()]
    except (OSError, subprocess.SubprocessError):
        return []


def environment(device: str) -> dict:
    info = {
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


# ----------------------------------------------------------------------------------------- models

# name -> (builder, input size, family). Weights random (He init); BatchNorm statistics are
# calibrated on random data so activations stay O(1) through 54 blocks.
MODEL_SPECS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, int, int], str]] = {}


def _register() -> None:
    import torchvision

    MODEL_SPECS["R56"] = (lambda: models.cifar_resnet(56), (3, 32, 32), "cifar")
    MODEL_SPECS["R110"] = (lambda: models.cifar_resnet(110), (3, 32, 32), "cifar")
    MODEL_SPECS["R50"] = (lambda: models.from_torchvision(torchvision.models.resnet50()), (3, 224, 224), "imagenet")
    MODEL_SPECS["R101"] = (lambda: models.from_torchvision(torchvision.models.resnet101()), (3, 224, 224), "imagenet")


_register()
_MODEL_CACHE: dict[tuple, torch.nn.Module] = {}


def _calibrate_bn(model: torch.nn.Module, size: tuple[int, int, int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((8 if size[1] > 64 else 32, *size), generator=g)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass sets the batch statistics
    model.train()
    with torch.no_grad():
        model(x)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def build_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                channels_last: bool = False, seed: int = 0) -> torch.nn.Module:
    """The backbone ``name`` (R56/R110 CIFAR, R50/R101 torchvision at 224), eval mode, cached."""
    key = (name, device, dtype, channels_last, seed)
    if key not in _MODEL_CACHE:
        builder, size, _ = MODEL_SPECS[name]
        torch.manual_seed(seed)
        m = builder()
        _calibrate_bn(m, size, seed)
        m = m.to(device=device, dtype=dtype)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        _MODEL_CACHE[key] = m.eval()
    return _MODEL_CACHE[key]


def input_size(name: str) -> tuple[int, int, int]:
    return MODEL_SPECS[name][1]


def family(name: str) -> str:
    return MODEL_SPECS[name][2]


def make_input(name: str, batch: int, device: str, dtype: torch.dtype, channels_last: bool,
               seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *input_size(name)), generator=g).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ------------------------------------------------------------------------------------ policy mixes

#: Mixes: "iid:<keep>" (every entry Bernoulli(keep)), "proto<P>:<keep>" (P prototype policies,
#: each Bernoulli(keep) per block, every image draws one uniformly), "ones", "zeros".
#: "proto10" (no keep) means the paper's keep for the family: 0.31 on CIFAR (R110, gamma 10),
#: 0.75 on ImageNet (R101, gamma 5) -- see ../shared/FACTS.md.
PAPER_KEEP = {"cifar": 0.31, "imagenet": 0.75}


def resolve_mix(mix: str, model_name: str) -> str:
    m = re.fullmatch(r"proto(\d+)", mix)
    if m:
        return f"{mix}:{PAPER_KEEP[family(model_name)]}"
    return mix


def mix_label(mix: str) -> str:
    if mix in ("ones", "zeros"):
        return f"all {mix}"
    kind, keep = mix.split(":")
    if kind == "iid":
        return f"iid keep {keep}"
    return f"{kind[5:]} prototypes, keep {keep}"


def make_policy(mix: str, batch: int, k: int, seed: int = 2) -> Tensor:
    """bool [batch, k] policy for a resolved mix string (see PAPER_KEEP)."""
    g = torch.Generator().manual_seed(seed)
    if mix == "ones":
        return torch.ones(batch, k, dtype=torch.bool)
    if mix == "zeros":
        return torch.zeros(batch, k, dtype=torch.bool)
    kind, keep_s = mix.split(":")
    keep = float(keep_s)
    if kind == "iid":
        return torch.rand(batch, k, generator=g) < keep
    m = re.fullmatch(r"proto(\d+)", kind)
    if not m:
        raise ValueError(f"unknown policy mix {mix!r}")
    protos = torch.rand(int(m.group(1)), k, generator=g) < keep
    pick = torch.randint(0, protos.shape[0], (batch,), generator=g)
    return protos[pick]


# ------------------------------------------------------------------------------------- strategies


def torch_gather_forward(model, x: Tensor, policy: Tensor) -> Tensor:
    """What a user writes today in plain PyTorch (inference): per block, ``index_select`` the
    executing images, run the residual branch on them, then ``index_copy_`` ``relu(s + F)`` into
    the shortcut. Rows come from one ``nonzero`` over the transposed policy and one host copy of
    the per-block counts (two syncs on a GPU), with the same fast paths as the engine (a block
    nobody runs costs its shortcut, a block everybody runs is the plain block)."""
    keep = policy != 0
    n = x.shape[0]
    counts = keep.sum(0).tolist()
    rows_all = keep.t().nonzero()[:, 1]
    per_block = rows_all.split(counts)
    h = model.stem(x)
    for block, c, rows in zip(model.blocks, counts, per_block):
        if c == 0:
            h = block.shortcut(h)
        elif c == n:
            h = block.full(h)
        else:
            y = block.residual(h.index_select(0, rows))
            s = block.shortcut(h)  # h itself (identity) or a fresh tensor; ours to overwrite
            s.index_copy_(0, rows, torch.relu(s.index_select(0, rows) + y))
            h = s
    return model.head(h)


def runner(strategy: str, model, x: Tensor, policy: Tensor) -> Callable[[], Tensor]:
    """A zero-argument callable computing the logits with ``strategy`` (under inference_mode)."""
    if strategy == "full":
        def fn():
            with torch.inference_mode():
                return model(x)
    elif strategy == "torch_gather":
        def fn():
            with torch.inference_mode():
                return torch_gather_forward(model, x, policy)
    else:
        def fn():
            with torch.inference_mode():
                return dynamic_forward(model, x, policy, strategy)
    return fn


def rel_err(out: Tensor, ref: Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def tolerance(dtype: torch.dtype, device: str = "cpu") -> float:
    """Relative (Frobenius) tolerance vs masked: float32 sums differ only by the conv algorithm a
    sub-batch size picks (on CUDA cuDNN may run float32 convs in TF32: measured 1.5e-4 on the H200
    for R110 "group"); bf16/fp16 round every activation."""
    if dtype in (torch.float32, torch.float64):
        return 1e-3 if device == "cuda" and torch.backends.cudnn.allow_tf32 else 1e-4
    return 8e-2


# ------------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    model: str
    batch: int
    mix: str  # unresolved ("proto10") or resolved ("proto10:0.31")
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    strategies: tuple[str, ...] = STRATEGIES
    reps: int = 5
    extra: dict = field(default_factory=dict)

    @property
    def resolved_mix(self) -> str:
        return resolve_mix(self.mix, self.model)

    @property
    def layout(self) -> str:
        return "channels_last" if self.channels_last else "NCHW"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @property
    def key(self) -> str:
        return f"{self.model} {self.device} {self.dtype_name} {self.layout} b{self.batch} {self.resolved_mix}"


class Prepared:
    """A case's model, input, policy, ideal speedup, masked reference (built once)."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.model = build_model(case.model, case.device, case.dtype, case.channels_last)
        self.x = make_input(case.model, case.batch, case.device, case.dtype, case.channels_last)
        pol = make_policy(case.resolved_mix, case.batch, self.model.num_blocks)
        self.policy = pol.to(case.device)
        self.ideal = float(ideal_speedup(self.model, pol))
        self.kept = float(pol.float().mean())
        self.groups = int(torch.unique(pol, dim=0).shape[0])
        with torch.inference_mode():
            self.ref = dynamic_forward(self.model, self.x, self.policy, "masked")
            p = blockdrop_ext.plan(self.policy)
        from blockdrop.engine import choose_strategy

        self.auto_choice = choose_strategy(p, case.batch)
        self.tol = tolerance(case.dtype, str(case.device))

    def fn(self, strategy: str) -> Callable[[], Tensor]:
        return runner(strategy, self.model, self.x, self.policy)

    def check(self, strategy: str) -> float:
        """Run ``strategy`` once and assert its logits equal masked's (the plain network is checked
        only where it must agree: the all-ones policy). Returns the relative error (nan = n/a)."""
        out = self.fn(strategy)()
        if strategy == "full" and self.case.resolved_mix != "ones":
            return float("nan")
        err = rel_err(out, self.ref)
        assert err <= self.tol, (
            f"{self.case.key} {strategy}: logits differ from masked's by {err:.3g} (relative) > {self.tol}"
        )
        return err

    def info(self) -> dict:
        c = self.case
        return {
            "model": c.model, "device": c.device, "dtype": c.dtype_name, "layout": c.layout,
            "batch": c.batch, "mix": c.resolved_mix, "mix_label": mix_label(c.resolved_mix),
            "ideal_speedup": round(self.ideal, 4), "kept_fraction": round(self.kept, 4),
            "distinct_policies": self.groups, "auto_choice": self.auto_choice,
        }


# ----------------------------------------------------------------------------------------- timing


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


#: CPU clock: "process" = CPU time of this process (time.process_time), "wall" = perf_counter.
#: With one thread, process time is what the call takes on a core of its own: on the shared 2-core
#: VM other processes' load made wall time swing 1.5-3x while process time stayed within ~15%.
CPU_CLOCK = os.environ.get("BLOCKDROP_BENCH_CLOCK", "process")


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call: wall time with the GPU synchronized inside the timed region on CUDA;
    on the CPU the clock named by CPU_CLOCK (process CPU time by default)."""
    if device == "cuda":
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0
    clock = time.process_time if CPU_CLOCK == "process" else time.perf_counter
    t0 = clock()
    fn()
    return clock() - t0


def clock_name(device: str) -> str:
    if device == "cuda":
        return "wall (perf_counter, synchronized)"
    return "process CPU time (time.process_time)" if CPU_CLOCK == "process" else "wall (perf_counter)"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    """Interquartile range over the median (0 when fewer than 4 samples: max-min instead)."""
    if len(xs) < 4:
        return (max(xs) - min(xs)) / median(xs) if xs else 0.0
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / median(xs)


def peak_memory(fn: Callable[[], object], device: str) -> float:
    """Peak memory (MiB) the call allocates above what is already allocated (blockdrop.memory:
    the CUDA caching allocator's peak, or on CPU the profiler's allocation events)."""
    from blockdrop.memory import peak_memory as peak_bytes

    return peak_bytes(fn, device) / 2**20


# ------------------------------------------------------------------------------------ op payloads


def row_bytes(t: Tensor) -> int:
    return t[0].numel() * t.element_size() if t.shape[0] else 0


def make_rows(n: int, m: int, device: str, seed: int = 3) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:m].sort().values.to(device)


OPS = ("gather_rows", "merge_block", "merge_block_", "merge_block_ds", "scatter_add_rows")
OP_IMPLS = ("copy", "blockdrop", "torch")

#: Op sizes (N, C, H, W): CIFAR stage-1 activations and ImageNet ResNet layer1/layer3 ones.
OP_SIZES_CPU = {"cifar-l1": (256, 16, 32, 32), "imnet-l1": (16, 256, 56, 56)}
OP_SIZES_GPU = {"cifar-l1": (2048, 16, 32, 32), "imnet-l1": (256, 256, 56, 56), "imnet-l3": (256, 1024, 14, 14)}


@dataclass
class OpPayload:
    """Callables for one op case: ``fns[impl]`` with impl in OP_IMPLS, and the bytes each moves
    at the least (every input element read once, every output element written once)."""

    name: str
    fns: dict
    bytes: int
    info: dict
    targets: dict = field(default_factory=dict)  # in-place op: the tensor each impl updates


def op_payload(op: str, shape: tuple[int, int, int, int], m_frac: float, dtype: torch.dtype,
               channels_last: bool, device: str) -> OpPayload:

    n, c, h, w = shape
    m = max(1, round(m_frac * n))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator(device=device).manual_seed(5)  # drawn on the device: GPU sizes are GBs

    def rand(*s):
        return torch.randn(s, generator=g, device=device, dtype=dtype).contiguous(memory_format=fmt)

    rows = make_rows(n, m, device)
    el = torch.empty((), dtype=dtype).element_size()
    rb = c * h * w * el
    if op == "gather_rows":
        x = rand(n, c, h, w)
        fns = {"blockdrop": lambda: blockdrop_ext.gather_rows(x, rows, check=False),
               "torch": lambda: x.index_select(0, rows)}
        nbytes = 2 * m * rb
    elif op == "merge_block":
        s, y = rand(n, c, h, w), rand(m, c, h, w)
        fns = {"blockdrop": lambda: blockdrop_ext.merge_block(s, y, rows, relu=True, check=False),
               "torch": lambda: s.index_copy(0, rows, torch.relu(s.index_select(0, rows) + y))}
        nbytes = (2 * n + m) * rb
    elif op == "merge_block_":
        s1, y = rand(n, c, h, w), rand(m, c, h, w)
        s2 = s1.clone()
        y = y - 3.0  # relu(s + y) stays bounded over thousands of in-place repeats
        fns = {"blockdrop": lambda: blockdrop_ext.merge_block_(s1, y, rows, relu=True, check=False),
               "torch": lambda: s2.index_copy_(0, rows, torch.relu(s2.index_select(0, rows) + y))}
        nbytes = 3 * m * rb
    elif op == "merge_block_ds":  # CIFAR option-A downsampling block: C -> 2C, H -> H/2
        x = rand(n, c, h, w)
        y = rand(m, 2 * c, (h + 1) // 2, (w + 1) // 2)

        def torch_ds():
            s = downsample_a_reference(x, 2 * c)
            return s.index_copy(0, rows, torch.relu(s.index_select(0, rows) + y))

        fns = {"blockdrop": lambda: blockdrop_ext.merge_block(x, y, rows, relu=True, downsample=True, check=False),
               "torch": torch_ds}
        orb = 2 * c * ((h + 1) // 2) * ((w + 1) // 2) * el
        nbytes = n * rb // 4 + n * orb + m * orb  # read a quarter of x, write out, read y
    elif op == "scatter_add_rows":
        src = rand(m, c, h, w)
        fns = {"blockdrop": lambda: blockdrop_ext.scatter_add_rows(src, rows, n, check=False),
               "torch": lambda: src.new_zeros((n, c, h, w)).index_add_(0, rows, src)}
        nbytes = n * rb + m * rb
    else:
        raise ValueError(op)
    half = max(1, nbytes // 2 // el)
    a = torch.randn(half, generator=g, device=device, dtype=dtype)
    b = torch.empty_like(a)
    fns["copy"] = lambda: b.copy_(a)
    info = {"op": op, "shape": list(shape), "rows": m, "dtype": str(dtype).replace("torch.", ""),
            "layout": "channels_last" if channels_last else "NCHW", "device": device, "bytes": nbytes}
    targets = {"blockdrop": s1, "torch": s2} if op == "merge_block_" else {}
    return OpPayload(op, fns, nbytes, info, targets)


def inner_repeats(fn: Callable[[], object], device: str, target_s: float = 2e-3) -> int:
    """How many back-to-back calls make one GPU timing sample last ~target_s (1 on the CPU)."""
    if device != "cuda":
        return 1
    fn()
    t = timed(fn, device)
    return int(min(1000, max(1, target_s / max(t, 1e-6))))


def repeated(fn: Callable[[], object], inner: int, device: str) -> Callable[[], None]:
    """``inner`` calls then a device synchronisation: the unit a GPU timing sample measures."""
    def call():
        for _ in range(inner):
            fn()
        sync(device)
    return call



def check_op(op: str, shape, m_frac: float, dtype: torch.dtype, channels_last: bool, device: str) -> None:
    """Assert blockdrop's result equals the plain-PyTorch composition's (for the in-place op: the
    two targets start equal, each is updated once) and keeps channels_last."""
    p = op_payload(op, shape, m_frac, dtype, channels_last, device)
    got, want = p.fns["blockdrop"](), p.fns["torch"]()
    if op == "merge_block_":
        got, want = p.targets["blockdrop"], p.targets["torch"]
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    if channels_last and op != "scatter_add_rows":
        assert got.is_contiguous(memory_format=torch.channels_last), f"{op}: lost channels_last"
