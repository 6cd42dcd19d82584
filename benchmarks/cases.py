"""What the benchmarks measure: models, policy mixes, the strategies compared (``full`` = the
plain network, the engine's ``masked/loop/gather/group/auto``, ``torch_gather`` = the plain-PyTorch
peer written here), a prepared case with its correctness check against ``masked``, and the case
lists -- one place, fed to both ``run.py`` and the pytest-benchmark suites.

Nothing here edits the library; it only calls its public API (``blockdrop.dynamic_forward``,
``blockdrop.evaluation.accounting.ideal_speedup``, ``blockdrop_ext.*``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

import blockdrop_ext
from blockdrop import dynamic_forward, models
from blockdrop.evaluation.accounting import ideal_speedup
from blockdrop.models import ResNetBackbone
from opbench import OP_SIZES_CPU, OP_SIZES_GPU, OPS

#: Strategies compared, in the order they are reported. ``full`` is the plain network (every block).
STRATEGIES = ("full", "masked", "loop", "gather", "group", "auto", "torch_gather")
MIXES_ALL = ("iid:0.31", "iid:0.75", "proto10", "proto469", "ones", "zeros")


# ----------------------------------------------------------------------------------------- models

# name -> (builder, input size, family). Weights random (He init); BatchNorm statistics are
# calibrated on random data so activations stay O(1) through 54 blocks.
MODEL_SPECS: dict[str, tuple[Callable[[], ResNetBackbone], tuple[int, int, int], str]] = {}


def _register() -> None:
    import torchvision

    MODEL_SPECS["R56"] = (lambda: models.cifar_resnet(56), (3, 32, 32), "cifar")
    MODEL_SPECS["R110"] = (lambda: models.cifar_resnet(110), (3, 32, 32), "cifar")
    MODEL_SPECS["R50"] = (
        lambda: models.from_torchvision(torchvision.models.resnet50()),
        (3, 224, 224),
        "imagenet",
    )
    MODEL_SPECS["R101"] = (
        lambda: models.from_torchvision(torchvision.models.resnet101()),
        (3, 224, 224),
        "imagenet",
    )


_register()
_MODEL_CACHE: dict[tuple, ResNetBackbone] = {}


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


def build_model(
    name: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    seed: int = 0,
) -> ResNetBackbone:
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


def make_input(
    name: str, batch: int, device: str, dtype: torch.dtype, channels_last: bool, seed: int = 1
) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *input_size(name)), generator=g).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ------------------------------------------------------------------------------------ policy mixes

#: Mixes: "iid:<keep>" (every entry Bernoulli(keep)), "proto<P>:<keep>" (P prototype policies,
#: each Bernoulli(keep) per block, every image draws one uniformly), "ones", "zeros".
#: "proto10" (no keep) means the paper's keep for the family: 0.31 on CIFAR (R110, gamma 10),
#: 0.75 on ImageNet (R101, gamma 5), the paper's reported block fractions.
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
            "model": c.model,
            "device": c.device,
            "dtype": c.dtype_name,
            "layout": c.layout,
            "batch": c.batch,
            "mix": c.resolved_mix,
            "mix_label": mix_label(c.resolved_mix),
            "ideal_speedup": round(self.ideal, 4),
            "kept_fraction": round(self.kept, 4),
            "distinct_policies": self.groups,
            "auto_choice": self.auto_choice,
        }


# ------------------------------------------------------------------------------------- case lists


def model_cases(subset: str, device: str, reps: int | None = None) -> list[Case]:
    """The model cases of a subset: ``default`` (per device), ``targets`` (the issue's CPU target
    cases, more rounds), ``quick`` (a smoke run), ``memory``, ``pytest`` (the CPU suite's few
    minutes), ``full`` (every model x batch x mix). ``loop`` runs only at batch <= 16 (at 64+ it is
    N batch-1 forwards)."""

    def C(model, batch, mix, r, **kw):
        if device == "cuda":
            kw.setdefault("dtype", torch.bfloat16)
            kw.setdefault("channels_last", True)
            r = max(r, 10)
        strategies = tuple(s for s in STRATEGIES if s != "loop" or batch <= 16)
        return Case(model, batch, mix, device=device, strategies=strategies, reps=reps or r, **kw)

    mixes = MIXES_ALL
    if subset == "pytest" and device == "cpu":
        out = []
        for m in ("R110", "R56"):
            out += [C(m, 1, mix, 2) for mix in ("iid:0.31", "ones")]
            out += [C(m, b, "iid:0.31", 2) for b in (16, 64, 256)]
            out += [C(m, b, "proto10", 2) for b in (16, 256)]
            out.append(C(m, 16, "ones", 2))
        return out + [C("R110", 256, "ones", 2)]
    if subset == "pytest":
        subset = "default"
    if subset == "targets":  # the CPU target cases again, with more rounds (use with --merge)
        return [
            C(m, b, mix, r)
            for m in ("R110", "R56")
            for b, mix, r in (
                (16, "iid:0.31", 15),
                (64, "iid:0.31", 11),
                (256, "iid:0.31", 9),
                (256, "proto10", 9),
                (16, "ones", 11),
            )
        ]
    if subset == "quick":
        return [C("R56", 16, "iid:0.31", 3), C("R56", 64, "proto10", 3), C("R56", 1, "iid:0.31", 3)]
    if subset == "memory":  # peak memory where gather's copies matter most (bottleneck nets), few rounds
        return [
            C(m, b, mix, 3)
            for m, b, mix in (
                ("R50", 16, "proto10"),
                ("R101", 16, "proto10"),
                ("R101", 16, "iid:0.75"),
                ("R101", 16, "ones"),
            )
        ]
    if subset == "full":
        out = []
        for m in ("R110", "R56", "R50", "R101"):
            batches = (1, 16, 64, 256) if m in ("R110", "R56") else (1, 16, 256)
            out += [C(m, b, mix, 3) for b in batches for mix in mixes]
        return out
    if device == "cuda":
        return [
            C("R101", 256, "proto10", 10),
            C("R110", 256, "iid:0.31", 10),
            C("R101", 256, "ones", 10),
            C("R110", 256, "ones", 10),
            C("R101", 1, "proto10", 10),
            C("R110", 1, "iid:0.31", 10),
            C("R50", 256, "proto10", 10),
            C("R56", 256, "iid:0.31", 10),
            C("R110", 256, "proto10", 10),
            C("R110", 256, "proto469", 10),
            C("R101", 256, "iid:0.75", 10),
            C("R101", 16, "proto10", 10),
            C("R110", 16, "iid:0.31", 10),
            C("R110", 256, "iid:0.31", 10, dtype=torch.float32, channels_last=False),
        ]
    out = []
    for m in ("R110", "R56"):  # the CPU targets first (a run cut short keeps them)
        out += [
            C(m, 16, "iid:0.31", 7),
            C(m, 64, "iid:0.31", 7),
            C(m, 256, "iid:0.31", 5),
            C(m, 256, "proto10", 5),
            C(m, 1, "iid:0.31", 9),
            C(m, 16, "ones", 5),
        ]
    out += [
        C("R110", 256, "ones", 3),
        C("R110", 1, "ones", 9),
        C("R56", 1, "ones", 9),
        C("R110", 16, "proto10", 5),
        C("R110", 64, "proto10", 5),
        C("R110", 256, "iid:0.75", 3),
        C("R110", 256, "proto469", 3),
        C("R110", 256, "zeros", 3),
        C("R50", 1, "proto10", 5),
        C("R101", 1, "proto10", 5),
    ]
    return out


def op_cases(subset: str, device: str) -> list[tuple]:
    """Op cases ``(op, size name, shape, fraction of rows, dtype, channels_last)`` of a subset:
    ``quick``, ``full`` (both row fractions on CPU too) or the device's default."""
    if subset == "quick":
        return [
            (op, "cifar-l1", OP_SIZES_CPU["cifar-l1"], 0.31, torch.float32, cl)
            for op in OPS
            for cl in (False, True)
        ]
    if device == "cuda":
        return [
            (op, name, shape, frac, dt, cl)
            for op in OPS
            for name, shape in OP_SIZES_GPU.items()
            for frac in (0.31, 0.75)
            for dt in (torch.bfloat16, torch.float32)
            for cl in (False, True)
        ]
    fracs = (0.31, 0.75) if subset == "full" else (0.31,)
    return [
        (op, name, shape, frac, dt, cl)
        for op in OPS
        for name, shape in OP_SIZES_CPU.items()
        for dt in (torch.float32, torch.bfloat16)
        for cl in (False, True)
        for frac in fracs
    ]
