"""Shared fixtures: devices (CUDA cases carry the `gpu` marker; the repository's conftest.py skips
them with a reason when no GPU is visible) and the location of ../shared/data (or $BLOCKDROP_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # cuda skips: ../conftest.py


@pytest.fixture(autouse=True, scope="session")
def _own_test_ledger(tmp_path_factory):
    """The tests' reproduce runs count their test-set uses in a ledger of their own (subprocesses
    inherit it), never in the user's (blockdrop.recipes.ledger)."""
    before = os.environ.get("BLOCKDROP_TEST_LEDGER")
    os.environ["BLOCKDROP_TEST_LEDGER"] = str(tmp_path_factory.mktemp("ledger") / "test_ledger.json")
    yield
    if before is None:
        os.environ.pop("BLOCKDROP_TEST_LEDGER", None)
    else:
        os.environ["BLOCKDROP_TEST_LEDGER"] = before


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for the tests: their tensors are small, and on a shared 2-core machine two
    threads made small convolutions many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def data_root() -> Path | None:
    """../shared/data next to the project, or $BLOCKDROP_DATA; None when absent."""
    env = os.environ.get("BLOCKDROP_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("shared data not found: set BLOCKDROP_DATA or place it at ../shared/data")
    return root


@pytest.fixture(scope="module")
def tiny_recipe_data(tmp_path_factory) -> dict[str, Path]:
    """A 3-class 16x16 ImageFolder (train 48 / val 9 / test 12 images), a ResNet-8 ``.th`` and a
    second one (another member of the family, ``family``): the data the recipe tests run
    ``blockdrop reproduce`` on."""
    from _helpers import tiny_image_folder, write_cifar_weights

    root = tmp_path_factory.mktemp("tiny")
    return {
        "train": tiny_image_folder(root / "train", n_per_class=16),
        "val": tiny_image_folder(root / "val", n_per_class=3, seed=1),
        "test": tiny_image_folder(root / "test", n_per_class=4, seed=2),
        "weights": write_cifar_weights(root / "r8.th"),
        "family": write_cifar_weights(root / "r8b.th", seed=1),
    }
