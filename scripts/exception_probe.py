"""Does a C++ exception thrown inside an extension op reach Python as an exception?

    python scripts/exception_probe.py            # prints one line per probe and the toolchain facts

On the lent H200 machine (torch 2.11.0+cu130) an exception thrown from blockdrop's C++ code ended
the process instead of raising; with torch 2.14.1 on the CPU machine it raises. This script
isolates the cause: it builds a minimal extension (``load_inline``, the same compiler and flags as
setup.py) whose ops throw in different ways, calls each -- and blockdrop's own ops with bad
arguments -- in a child process, and reports "raised <type>: <message>" or "DIED (signal N)".
Read together with the toolchain lines (torch's compiler and C++ ABI, the system compiler, the
libstdc++ and libgcc_s each process maps) it tells which of these holds:

* every probe dies -> the unwinder or libstdc++ the process maps cannot unwind through extension
  frames (compare the libgcc_s/libstdc++ paths with torch's own: a mismatch points at the build);
* only ``TORCH_LIBRARY`` probes die, ``pybind`` ones raise -> the dispatcher boundary (torch);
* only blockdrop's ops die -> our build flags (setup.py) or a ``noexcept`` path in csrc/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

CPP = r"""
#include <torch/library.h>
#include <ATen/ATen.h>
#include <stdexcept>

at::Tensor probe_torch_check(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 99, "probe: TORCH_CHECK failed as intended");
  return x;
}
at::Tensor probe_std_throw(const at::Tensor& x) {
  throw std::runtime_error("probe: std::runtime_error as intended");
  return x;
}
at::Tensor probe_value_error(const at::Tensor& x) {
  TORCH_CHECK_VALUE(false, "probe: TORCH_CHECK_VALUE failed as intended");
  return x;
}
TORCH_LIBRARY(exprobe, m) {
  m.def("torch_check(Tensor x) -> Tensor");
  m.def("std_throw(Tensor x) -> Tensor");
  m.def("value_error(Tensor x) -> Tensor");
}
TORCH_LIBRARY_IMPL(exprobe, CPU, m) {
  m.impl("torch_check", &probe_torch_check);
  m.impl("std_throw", &probe_std_throw);
  m.impl("value_error", &probe_value_error);
}
at::Tensor pybind_check(const at::Tensor& x) { return probe_torch_check(x); }
"""

#: name -> Python statement run in a child process (``ext`` is the probe module when built).
PROBES = {
    "TORCH_LIBRARY + TORCH_CHECK": "torch.ops.exprobe.torch_check(torch.ones(2))",
    "TORCH_LIBRARY + std::runtime_error": "torch.ops.exprobe.std_throw(torch.ones(2))",
    "TORCH_LIBRARY + TORCH_CHECK_VALUE": "torch.ops.exprobe.value_error(torch.ones(2))",
    "pybind + TORCH_CHECK": "ext.pybind_check(torch.ones(2))",
    "torch's own op (control)": "torch.ones(2).view(3)",
    "blockdrop plan (bad dtype)": "import blockdrop_ext; torch.ops.blockdrop.plan(torch.ones(3, 2))",
    "blockdrop gather_rows (row out of range)": "import blockdrop_ext; "
    "torch.ops.blockdrop.gather_rows(torch.ones(2, 3, 4, 4), torch.tensor([0, 7]))",
    "blockdrop gather_rows CUDA (row out of range)": "import blockdrop_ext; "
    "torch.ops.blockdrop.gather_rows(torch.ones(2, 3, 4, 4, device='cuda'), "
    "torch.tensor([0, 7], device='cuda'))",
}

CHILD = r"""
import sys, torch
ext = None
if {build_dir!r}:
    sys.path.insert(0, {build_dir!r})
    import importlib; ext = importlib.import_module("exprobe_ext")
if "cuda" in {stmt!r} and not torch.cuda.is_available():
    print("skipped: no GPU"); sys.exit(0)
try:
    {stmt}
    print("NO EXCEPTION")
except Exception as e:
    print("raised", type(e).__name__ + ":", str(e).splitlines()[0][:100])
"""


def _mapped_libs() -> list[str]:
    """libstdc++ / libgcc_s / libc10 paths mapped after importing torch and the extension."""
    code = (
        "import torch\ntry:\n    import blockdrop_ext\nexcept Exception:\n    pass\n"
        "print('\\n'.join(sorted({l.split()[-1] for l in open('/proc/self/maps') "
        "if any(s in l for s in ('libstdc++', 'libgcc_s', 'libc10.so', 'blockdrop_ext'))})))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return r.stdout.split()


def toolchain() -> dict[str, object]:
    import torch

    cfg = torch.__config__.show()
    cxx = os.environ.get("CXX", "c++")
    ver = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()
    return {
        "torch": torch.__version__,
        "torch_compiler": next(
            (ln.strip(" -") for ln in cfg.splitlines() if "GCC" in ln or "clang" in ln), "?"
        ),
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "system_cxx": ver[0] if ver else "?",
        "python": sys.version.split()[0],
        "mapped": _mapped_libs(),
    }


def build(workdir: str) -> str | None:
    """Build the probe extension into ``workdir``; its path, or None (the error is printed)."""
    from torch.utils import cpp_extension

    try:
        cpp_extension.load_inline(
            "exprobe_ext",
            cpp_sources=[CPP],
            functions=["pybind_check"],
            extra_cflags=["-O3"],
            build_directory=workdir,
            verbose=False,
        )
    except Exception as e:  # a failed build is a finding, not a crash of the probe
        print(f"probe extension: build failed: {str(e).splitlines()[-1][:200]}")
        return None
    return workdir


def run_probe(stmt: str, build_dir: str | None) -> str:
    if build_dir is None and ("exprobe" in stmt or "ext." in stmt):
        return "skipped: probe extension not built"
    code = CHILD.format(build_dir=build_dir or "", stmt=stmt)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if r.returncode < 0:
        return (
            f"DIED (signal {-r.returncode}): "
            f"{r.stderr.strip().splitlines()[-1][:100] if r.stderr.strip() else ''}"
        )
    if r.returncode != 0:
        return f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1][:120] if r.stderr.strip() else ''}"
    return r.stdout.strip().splitlines()[-1]


def main() -> int:
    facts = toolchain()
    print("toolchain:", json.dumps(facts))
    workdir = tempfile.mkdtemp(prefix="exprobe-")
    try:
        built = build(workdir)
        results = {name: run_probe(stmt, built) for name, stmt in PROBES.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, res in results.items():
        print(f"{name:48s} {res}")
    return 1 if any(r.startswith(("DIED", "NO EXCEPTION")) for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
