"""Build of blockdrop: the compiled ops (blockdrop_ext._C) and the library (blockdrop).

A CUDA extension is built when torch has CUDA and nvcc is found, otherwise a CPU-only one.
Environment switches:
  BLOCKDROP_FORCE_CPU=1    build the CPU kernels only, even where CUDA is available
  BLOCKDROP_FORCE_CUDA=1   fail unless the CUDA kernels can be built
  CUDA_HOME                the CUDA toolkit (default: /usr/local/cuda when it holds bin/nvcc)
  TORCH_CUDA_ARCH_LIST     GPU architectures (default with no visible GPU: "8.0;9.0", A100 and H100/H200)
  MAX_JOBS                 parallel compile jobs (ninja)
"""

from __future__ import annotations

import os
import re
import sys
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# the one version source: blockdrop/__init__.py (read, not imported: importing needs the extension)
VERSION = re.search(
    r'^__version__ = "([^"]+)"$', (ROOT / "python" / "blockdrop" / "__init__.py").read_text(), re.M
).group(1)  # type: ignore[union-attr]  # __init__.py has the line
DEFAULT_ARCH_LIST = "8.0;9.0"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: set the default first. (On some
# machines a /usr/local/bin/nvcc wrapper makes torch guess /usr/local, and the link then fails.)
if (
    not os.environ.get("CUDA_HOME")
    and not os.environ.get("CUDA_PATH")
    and Path("/usr/local/cuda/bin/nvcc").exists()
):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _cuda_plan() -> tuple[bool, str]:
    """Whether to build the CUDA kernels, and why (one line for the build log)."""
    if _flag("BLOCKDROP_FORCE_CPU"):
        return False, "BLOCKDROP_FORCE_CPU is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} has no CUDA"
    home = cpp_extension.CUDA_HOME
    if not home or not Path(home, "bin", "nvcc").exists():
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"CUDA {torch.version.cuda}, nvcc in {home}"


def _extension():
    with_cuda, why = _cuda_plan()
    if _flag("BLOCKDROP_FORCE_CUDA") and not with_cuda:
        sys.exit(f"blockdrop: BLOCKDROP_FORCE_CUDA=1 but the CUDA kernels cannot be built: {why}")
    sources = ["csrc/ops.cpp"] + sorted(glob("csrc/cpu/*.cpp"))
    cxx = ["-O3"]
    if not with_cuda:
        print(f"blockdrop: building the CPU-only extension (no CUDA kernels: {why})", flush=True)
        return cpp_extension.CppExtension("blockdrop_ext._C", sources, extra_compile_args={"cxx": cxx})
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPUs'")
    print(f"blockdrop: building the CUDA extension ({why}; TORCH_CUDA_ARCH_LIST={arch})", flush=True)
    include_dirs = []
    # CUDA 13 wheels keep some toolkit headers (cuBLAS, ...) under site-packages/nvidia/cu13/include.
    nvidia = Path(torch.__file__).resolve().parent.parent / "nvidia" / "cu13" / "include"
    if nvidia.is_dir():
        include_dirs.append(str(nvidia))
    return cpp_extension.CUDAExtension(
        "blockdrop_ext._C",
        sources + sorted(glob("csrc/cuda/*.cpp")) + sorted(glob("csrc/cuda/*.cu")),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
    )


setup(
    name="blockdrop",
    version=VERSION,
    description="BlockDrop (dynamic inference paths in ResNets) with real batched speedup",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["blockdrop_ext"] + find_packages("python"),
    package_dir={"blockdrop_ext": "blockdrop_ext", "": "python"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "numpy",
        "tqdm",
        "safetensors",
        "matplotlib",
        "scikit-learn",
        "pyyaml",
    ],
    extras_require={
        "timm": ["timm"],
        "test": ["pytest", "pytest-benchmark", "expecttest", "hypothesis", "timm"],
    },
    package_data={"blockdrop": ["py.typed"]},
    license="BSD-3-Clause",
    entry_points={"console_scripts": ["blockdrop = blockdrop.cli:main"]},
    zip_safe=False,
)
