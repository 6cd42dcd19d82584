"""Data loading: ImageFolder trees, .tar.gz archives, CIFAR folders, digits, sampling."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from blockdrop.data import (
    MEAN,
    STD,
    DatasetNotFoundError,
    EpochSampler,
    ImageArrayDataset,
    ImageFileDataset,
    denormalize,
    digits_dataset,
    load_dataset,
    make_loader,
    set_loader_epoch,
)


def make_image_folder(
    root: Path,
    classes=("cat", "dog", "emu"),
    per_class: int = 4,
    size: int = 16,
    seed: int = 0,
    ext: str = "png",
) -> Path:
    """Write a tiny ImageFolder tree ``root/<class>/<i>.<ext>`` of random RGB images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:04d}.{ext}")
    return root


def test_image_folder_in_memory(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    info = load_dataset(root, "test")
    assert info.classes == ["cat", "dog", "emu"] and info.num_classes == 3
    assert isinstance(info.dataset, ImageArrayDataset) and len(info.dataset) == 12
    assert info.image_size == 16
    x, y = info.dataset[5]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    # eval transform = normalisation only: denormalising gives back the stored pixels
    from PIL import Image

    ref = torch.from_numpy(np.array(Image.open(root / "dog" / "0001.png"))).permute(2, 0, 1) / 255
    torch.testing.assert_close(denormalize(x[None])[0], ref, atol=1e-6, rtol=0)


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path: Path) -> None:
    info = load_dataset(make_image_folder(tmp_path / "imgs", size=32), "train", seed=3)
    ds = info.dataset
    a = ds[2][0]
    b = ds[2][0]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    outs = [ds[2][0] for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    diffs = 0
    for i in range(len(ds)):
        ds.set_epoch(0)
        u = ds[i][0]
        ds.set_epoch(1)
        diffs += int(not torch.equal(u, ds[i][0]))
    assert diffs >= len(ds) // 2  # crops/flips change between epochs


def test_targz_archive_with_splits_streams_like_the_folder(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "tree" / "data" / "train", per_class=3, seed=1)
    make_image_folder(tmp_path / "tree" / "data" / "test", per_class=2, seed=2)
    arc = tmp_path / "ds.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(tmp_path / "tree" / "data", arcname="data")
    tr, te = load_dataset(arc, "train"), load_dataset(arc, "test")
    assert len(tr.dataset) == 9 and len(te.dataset) == 6
    ref = load_dataset(tmp_path / "tree" / "data", "test")  # folder with split subdirs
    assert torch.equal(te.dataset.images, ref.dataset.images)
    assert torch.equal(te.dataset.labels, ref.dataset.labels)


def test_large_image_archive_is_extracted_to_cache(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "big" / "val", classes=("a", "b"), per_class=1, size=80, ext="jpg")
    arc = tmp_path / "big.tgz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(tmp_path / "big" / "val", arcname="val")
    info = load_dataset(arc, "test", cache_dir=tmp_path / "cache")
    assert isinstance(info.dataset, ImageFileDataset) and info.image_size == 224
    assert any((tmp_path / "cache").iterdir())
    x, y = info.dataset[1]
    assert x.shape == (3, 224, 224) and y == 1
    again = load_dataset(arc, "test", cache_dir=tmp_path / "cache")  # reuses the extraction
    assert again.dataset.samples == info.dataset.samples


def test_cifar_python_folder(tmp_path: Path) -> None:
    root = tmp_path / "cifar" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    tr = load_dataset(tmp_path / "cifar", "train")
    te = load_dataset(root, "test")
    assert len(tr.dataset) == 20 and len(te.dataset) == 4 and tr.num_classes == 10
    with open(root / "test_batch", "rb") as f:
        raw = pickle.load(f)["data"][1].reshape(3, 32, 32)
    assert torch.equal(te.dataset.images[1], torch.from_numpy(raw).permute(1, 2, 0))
    # torchvision's own archive layout (cifar-10-python.tar.gz): extracted to the cache once
    arc = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(root, arcname="cifar-10-batches-py")
    te2 = load_dataset(arc, "test", cache_dir=tmp_path / "cache")
    assert torch.equal(te2.dataset.images, te.dataset.images)


def test_missing_dataset_says_which_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "cifar10.tar.gz"
    with pytest.raises(DatasetNotFoundError, match=str(missing)):
        load_dataset(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(ValueError):
        load_dataset(tmp_path, "validation")


def test_digits_dataset() -> None:
    tr, te = digits_dataset("train"), digits_dataset("test")
    assert tr.image_size == 32 and tr.num_classes == 10
    assert len(tr.dataset) + len(te.dataset) == 1797
    x, y = te.dataset[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    rgb = denormalize(x[None])[0]
    torch.testing.assert_close(rgb[0], rgb[1])  # grey replicated to 3 channels
    assert tr.dataset.images.dtype == torch.uint8 and tr.dataset.images.shape[1:] == (32, 32, 3)


def test_epoch_sampler_shards_and_resumes() -> None:
    shards = [EpochSampler(10, shuffle=True, seed=1, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    idx = [s.indices() for s in shards]
    assert all(len(i) == 4 for i in idx)
    assert set(sum(idx, [])) == set(range(10))
    s = EpochSampler(10, seed=1)
    s.set_epoch(2, start=3)
    assert list(s) == s.indices()[3:] and len(s) == 7
    s.set_epoch(3, start=0)
    assert s.indices() != EpochSampler(10, seed=1).indices()  # epoch 3 vs epoch 0


def test_epoch_sampler_fewer_images_than_ranks() -> None:
    """Every rank gets len() indices even when n < world_size - 1 (the head repeats cyclically)."""
    shards = [EpochSampler(2, shuffle=False, rank=r, world_size=5) for r in range(5)]
    assert [s.indices() for s in shards] == [[0], [1], [0], [1], [0]]
    assert all(len(list(s)) == len(s) == 1 for s in shards)


def test_loader_skips_batches_on_resume(tmp_path: Path) -> None:
    info = load_dataset(make_image_folder(tmp_path / "imgs", size=8), "train", seed=0)
    loader = make_loader(info.dataset, 3, train=True, seed=0)
    set_loader_epoch(loader, 1)
    full = [x for x, _ in loader]
    set_loader_epoch(loader, 1, start_batch=2)
    rest = [x for x, _ in loader]
    assert len(full) == 4 and len(rest) == 2
    assert all(torch.equal(a, b) for a, b in zip(full[2:], rest))


@pytest.mark.data
def test_shared_cifar10_lossless_archive(shared_data: Path) -> None:
    arc = shared_data / "cifar10" / "cifar10-test1000-lossless.tar.gz"
    if not arc.is_file():
        pytest.skip(f"shared data not found at {arc} (set BLOCKDROP_DATA)")
    info = load_dataset(arc, "test")
    assert len(info.dataset) == 1000 and info.image_size == 32
    assert info.classes[:3] == ["airplane", "automobile", "bird"] and info.num_classes == 10


def test_split_train_val_is_stratified_disjoint_and_unaugmented() -> None:
    from blockdrop.data import DataInfo, ImageArrayDataset, SmallImageTransform, split_train_val

    g = torch.Generator().manual_seed(0)
    n = 90
    images = torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 3
    info = DataInfo(
        ImageArrayDataset(images, labels, SmallImageTransform(True, pad=1), 0), ["a", "b", "c"], 8, "toy"
    )
    tr, va = split_train_val(info, 12, seed=5)
    assert len(tr.dataset) == 78 and len(va.dataset) == 12
    assert torch.bincount(va.dataset.labels).tolist() == [4, 4, 4]
    # disjoint and complete: every original image is in exactly one split
    key = lambda ims: {bytes(im.flatten().tolist()) for im in ims}  # noqa: E731
    assert key(tr.dataset.images) | key(va.dataset.images) == key(images)
    assert not key(tr.dataset.images) & key(va.dataset.images)
    # train keeps its augmentation; val is the plain normalised image
    assert tr.dataset.transform.train and not va.dataset.transform.train
    x, y = va.dataset[0]
    ref = (
        va.dataset.images[0].permute(2, 0, 1).float() / 255 - torch.tensor(MEAN).view(3, 1, 1)
    ) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(x, ref)
    # another seed, another draw; the same seed, the same draw
    assert not torch.equal(split_train_val(info, 12, seed=6)[1].dataset.images, va.dataset.images)
    assert torch.equal(split_train_val(info, 12, seed=5)[1].dataset.images, va.dataset.images)
    with pytest.raises(ValueError, match="n_val"):
        split_train_val(info, 90)
