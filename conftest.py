"""Repository-wide pytest hook, shared by both suites (``pytest tests``, ``pytest benchmarks``):
items marked ``gpu`` are skipped with a reason when no CUDA GPU is visible."""

from __future__ import annotations

import pytest
import torch

NO_GPU = "no CUDA GPU visible (run on a GPU machine, e.g. bash scripts/gpu_run.sh, for the CUDA cases)"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU)
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a test id naming "gpu"
            item.add_marker(skip)
