# The README's two commands: `make demo` (the main job) and `make test` (`make lint`, then the tests).
# Both set everything up from nothing: a virtual environment in .venv with torch 2.14.1 (the CUDA 13.0
# build, whose headers let the .cu kernels compile even without a GPU) and blockdrop built from source.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch's extension build needs the real toolkit path (a /usr/local/bin/nvcc wrapper misleads it).
CUDA_HOME ?= $(shell test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda)
MAX_JOBS ?= 2
export CUDA_HOME MAX_JOBS

DEPS    := torch==2.14.1 torchvision==0.29.1 ninja pybind11 numpy tqdm safetensors matplotlib scikit-learn \
           pyyaml timm pytest pytest-benchmark expecttest hypothesis setuptools wheel ruff==0.17.6 mypy==2.4.1
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cpp csrc/cuda/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)

.PHONY: all install demo lint test test-gpu bench clean
all: test

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(DEPS)
	touch $@

# Rebuilt only when a C++/CUDA source or setup.py changes. --no-build-isolation: build against the
# torch installed above, never a second one.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import blockdrop_ext, json; print('blockdrop build:', json.dumps(blockdrop_ext.build_info()))"
	touch $@

install: $(VENV)/.built

demo: install
	$(VENV)/bin/blockdrop demo --out runs/demo

# ruff (lint rules and formatting) and mypy, configured in pyproject.toml; no build needed.
lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint install
	$(PY) -m pytest tests -q

test-gpu: install
	$(PY) -m pytest tests -q -m gpu

bench: install
	$(PY) -m pytest benchmarks -q

clean:
	rm -rf build *.egg-info blockdrop_ext/_C*.so $(VENV)/.built
