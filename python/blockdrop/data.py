"""Datasets, augmentation and deterministic, resumable data loading.

Supported sources (nothing is ever downloaded):

* torchvision's CIFAR-10/100 folder format (``cifar-10-batches-py`` / ``cifar-100-python``);
* ImageFolder trees ``<root>[/<split>]/<class>/<image>``;
* ``.tar.gz`` / ``.tgz`` / ``.tar`` archives of ImageFolder trees.  Archives of small images
  (<= 64 px, e.g. CIFAR) are streamed with :mod:`tarfile` straight into memory; larger ones are
  extracted once into a cache directory (``$BLOCKDROP_CACHE`` or ``~/.cache/blockdrop``);
* scikit-learn's handwritten digits (the demo's embedded dataset), upsampled to 32x32 RGB.

Augmentation is a function of ``(seed, epoch, index)`` only, so a run that is resumed in the
middle of an epoch sees exactly the same images as an uninterrupted one, whatever the number of
loader workers.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from blockdrop.errors import FileFormatError

__all__ = ["DataInfo", "DatasetNotFoundError", "ImageArrayDataset", "ImageFileDataset",
           "EpochSampler", "SmallImageTransform", "load_dataset", "digits_dataset", "make_loader",
           "set_loader_epoch", "split_train_val", "take_subset", "with_normalization", "denormalize", "MEAN", "STD"]

#: Normalisation used by the pretrained CIFAR ResNets in ../shared/data (ImageNet statistics).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMG_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
SMALL_IMAGE = 64


class DatasetNotFoundError(FileNotFoundError):
    """The dataset path does not exist or holds no recognisable dataset."""


@dataclass
class DataInfo:
    """A dataset and what the trainer needs to know about it."""
    dataset: "ImageArrayDataset | ImageFileDataset"
    classes: list[str]
    image_size: int          # side of the network input (H == W)
    source: str              # what was loaded, for logs

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------- augmentation

def _sample_seed(seed: int, epoch: int, index: int) -> int:
    h = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def denormalize(x: Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> Tensor:
    """Undo the input normalisation: ``[N,3,H,W] -> [N,3,H,W]`` in [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)


class SmallImageTransform:
    """Tensor-native CIFAR-style transform on ``uint8 [H,W,3]`` -> ``float [3,H,W]`` normalised.

    train: random crop after zero-padding ``pad`` pixels (4 for CIFAR) and, if ``flip``, random
    horizontal flip, drawn from the per-sample generator.  eval: normalisation only.
    """

    def __init__(self, train: bool, pad: int = 4, flip: bool = True,
                 mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> None:
        self.train, self.pad, self.flip, self.mean, self.std = train, pad, flip, mean, std
        self._m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # built once, not per image
        self._s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: Tensor, gen: torch.Generator | None) -> Tensor:
        x = img.permute(2, 0, 1).float().div_(255.0)
        if self.train and gen is not None:
            h, w = x.shape[1:]
            if self.pad:
                x = F.pad(x, (self.pad,) * 4)
                i, j = torch.randint(0, 2 * self.pad + 1, (2,), generator=gen).tolist()
                x = x[:, i:i + h, j:j + w]
            if self.flip and torch.rand((), generator=gen).item() < 0.5:
                x = x.flip(2)
        return (x.contiguous() - self._m) / self._s


def _imagenet_transform(train: bool, size: int = 224, mean: Sequence[float] = MEAN,
                        std: Sequence[float] = STD) -> Callable[[Any], Tensor]:
    from torchvision.transforms import v2 as T
    ops: list[Any] = ([T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if train
                      else [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)])
    return T.Compose([T.ToImage(), *ops, T.ToDtype(torch.float32, scale=True),
                      T.Normalize(list(mean), list(std))])


# --------------------------------------------------------------------------- datasets

class _EpochDataset(Dataset):
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (call before building the iterator)."""
        self.epoch = int(epoch)


class ImageArrayDataset(_EpochDataset):
    """In-memory images ``uint8 [N,H,W,3]`` + labels ``int64 [N]``; item -> ``(float [3,H,W], int)``."""

    def __init__(self, images: Tensor, labels: Tensor, transform: SmallImageTransform,
                 seed: int = 0) -> None:
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[-1] == 3
        self.images, self.labels, self.transform, self.seed = images, labels.long(), transform, seed

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        gen = None
        if self.transform.train:
            gen = torch.Generator().manual_seed(_sample_seed(self.seed, self.epoch, i))
        return self.transform(self.images[i], gen), int(self.labels[i])

    def with_transform(self, transform: SmallImageTransform) -> "ImageArrayDataset":
        """Same images, another transform (e.g. train vs eval)."""
        return ImageArrayDataset(self.images, self.labels, transform, self.seed)


class ImageFileDataset(_EpochDataset):
    """Images on disk (large ones); item -> ``(float [3,S,S], int)`` through torchvision transforms
    run under a per-sample seed."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Any], Tensor],
                 train: bool, seed: int = 0) -> None:
        self.samples, self.transform, self.train, self.seed = samples, transform, train, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image
        path, label = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        if not self.train:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, self.epoch, i))
            return self.transform(img), label


# --------------------------------------------------------------------------- sources

def _decode(data: bytes, name: str = "image") -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FileFormatError(name, "an image file", f"cannot decode it: {e}") from None


def _stack(entries: list[tuple[str, str, bytes]], what: str) -> tuple[Tensor, Tensor, list[str]]:
    """entries: (class, name, encoded bytes) -> images uint8 [N,H,W,3], labels, classes."""
    classes = sorted({c for c, _, _ in entries})
    idx = {c: i for i, c in enumerate(classes)}
    entries = sorted(entries, key=lambda e: (idx[e[0]], e[1]))
    arrays = [_decode(b, f"{what}: {c}/{n}") for c, n, b in entries]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{what}: images of different sizes {sorted(shapes)[:3]}; "
                         "small-image datasets must be uniform")
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([idx[c] for c, _, _ in entries], dtype=torch.long)
    return images, labels, classes


def _split_names(split: str) -> tuple[str, ...]:
    return ("train",) if split == "train" else ("test", "val", "valid", "validation", "test1000")


def _archive_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return [m for m in tf.getmembers()
                if m.isfile() and m.name.lower().endswith(IMG_EXTS)]


def _select_tree(names: list[str], split: str, what: str) -> tuple[int, str | None]:
    """Given relative file paths, return (#leading components to drop, split dir or None) so that
    what is left is ``<class>/<file>``."""
    parts = [Path(n).parts for n in names]
    depth = {len(p) for p in parts}
    if len(depth) != 1 or min(depth) < 2:
        raise DatasetNotFoundError(f"{what}: not an ImageFolder tree (<class>/<image>), "
                                   f"found paths like {names[:2]}")
    d = depth.pop()
    if d == 2:
        return 0, None
    prefix = 0
    while d - prefix > 3 and len({p[prefix] for p in parts}) == 1:
        prefix += 1
    tops = sorted({p[prefix] for p in parts})
    if d - prefix == 2:
        return prefix, None
    if len(tops) == 1:
        return prefix + 1, None
    for s in _split_names(split):
        if s in tops:
            return prefix, s
    raise DatasetNotFoundError(f"{what}: holds splits {tops}; none matches split {split!r}")


def _read_archive(path: Path, split: str, seed: int, cache_dir: Path | None) -> DataInfo:
    members = _archive_members(path)
    if not members:
        with tarfile.open(path) as tf:
            names = tf.getnames()
        for name in ("cifar-10-batches-py", "cifar-100-python"):
            if any(n.split("/")[0] == name for n in names):   # torchvision's own CIFAR archive
                return _load_cifar_pickle(_extract(path, cache_dir) / name, split, seed)
        raise DatasetNotFoundError(f"{path}: archive holds no images")
    drop, split_dir = _select_tree([m.name for m in members], split, str(path))
    keep = [m for m in members if split_dir is None or Path(m.name).parts[drop] == split_dir]
    off = drop + (1 if split_dir else 0)
    with tarfile.open(path) as tf:
        first = tf.extractfile(keep[0]).read()  # type: ignore[union-attr]
        small = max(_decode(first, f"{path}: {keep[0].name}").shape[:2]) <= SMALL_IMAGE
        if small:
            entries = []
            for m in keep:
                parts = Path(m.name).parts[off:]
                entries.append((parts[0], parts[1], tf.extractfile(m).read()))  # type: ignore
            images, labels, classes = _stack(entries, str(path))
            return _array_info(images, labels, classes, split, seed, f"{path} (in memory)")
    root = _extract(path, cache_dir)
    sub = root.joinpath(*Path(keep[0].name).parts[:off])
    return _load_folder(sub, split, seed, allow_split=False)


def _load_archive(path: Path, split: str, seed: int, cache_dir: Path | None) -> DataInfo:
    """An archive as a dataset; a truncated or corrupt archive is a FileFormatError naming it."""
    import zlib
    try:
        return _read_archive(path, split, seed, cache_dir)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise FileFormatError(path, "a readable .tar.gz / .tar archive of an ImageFolder tree",
                              f"truncated or corrupt: {type(e).__name__}: {e}") from None


def _extract(path: Path, cache_dir: Path | None) -> Path:
    """Extract once into ``cache_dir/<name>-<hash of size+mtime>``; atomic via a temp dir rename."""
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    base = cache_dir or Path(os.environ.get("BLOCKDROP_CACHE", Path.home() / ".cache" / "blockdrop"))
    target = base / f"{path.name.split('.')[0]}-{key}"
    if target.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
    with tarfile.open(path) as tf:
        tf.extractall(tmp, filter="data")
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_folder(root: Path, split: str, seed: int, allow_split: bool = True) -> DataInfo:
    if allow_split:
        for s in _split_names(split):
            if (root / s).is_dir() and any(p.is_dir() for p in (root / s).iterdir()):
                # root/<split>/<class>/... if the split dir's children hold images one level down
                sub = root / s
                if all(p.is_dir() for p in sub.iterdir() if not p.name.startswith(".")):
                    root = sub
                    break
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).rglob("*"))
               if f.suffix.lower() in IMG_EXTS]
    if not samples:
        raise DatasetNotFoundError(f"{root}: no images found in <class>/<image> folders")
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(samples[0][0]) as im:
            small = max(im.size) <= SMALL_IMAGE
    except (UnidentifiedImageError, OSError) as e:
        raise FileFormatError(samples[0][0], "an image file", f"cannot decode it: {e}") from None
    if small:
        entries = [(classes[lab], Path(p).name, Path(p).read_bytes()) for p, lab in samples]
        images, labels, cl = _stack(entries, str(root))
        return _array_info(images, labels, cl, split, seed, f"{root} (in memory)")
    train = split == "train"
    ds = ImageFileDataset(samples, _imagenet_transform(train), train, seed)
    return DataInfo(ds, classes, 224, str(root))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR batch file cannot run code."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only arrays and containers)")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise FileFormatError(path, "a CIFAR python batch file (a pickled dict of arrays)",
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(d, dict):
        raise FileFormatError(path, "a CIFAR python batch file (a pickled dict of arrays)",
                              f"holds a {type(d).__name__}")
    return d


def _load_cifar_pickle(root: Path, split: str, seed: int) -> DataInfo:
    """torchvision's CIFAR layout: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
    or ``cifar-100-python/{train,test,meta}``."""
    if (root / "batches.meta").exists():
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta, key, lkey = "batches.meta", "label_names", "labels"
    else:
        files = ["train"] if split == "train" else ["test"]
        meta, key, lkey = "meta", "fine_label_names", "fine_labels"
    missing = [f for f in files if not (root / f).exists()]
    if missing:
        raise DatasetNotFoundError(f"{root}: CIFAR files missing: {missing}")
    data, labels = [], []
    for f in files:
        d = _unpickle(root / f)
        data.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(d[lkey])
    images = torch.from_numpy(np.concatenate(data).transpose(0, 2, 3, 1).copy())
    classes = list(_unpickle(root / meta)[key])
    return _array_info(images, torch.tensor(labels), classes, split, seed, str(root))


def _array_info(images: Tensor, labels: Tensor, classes: list[str], split: str, seed: int,
                source: str, pad: int | None = None, flip: bool = True) -> DataInfo:
    side = int(images.shape[1])
    tf = SmallImageTransform(split == "train", pad=side // 8 if pad is None else pad, flip=flip)
    return DataInfo(ImageArrayDataset(images, labels, tf, seed), classes, side, source)


def load_dataset(path: str | os.PathLike[str], split: str = "train", seed: int = 0,
                 cache_dir: str | os.PathLike[str] | None = None) -> DataInfo:
    """Load a dataset from ``path`` (archive, ImageFolder root, or CIFAR folder).

    ``split`` is "train" (augmented) or "test" (no augmentation).  A missing or unrecognisable
    path raises :class:`DatasetNotFoundError` naming the path tried.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetNotFoundError(f"dataset not found: {p} does not exist (nothing is downloaded; "
                                   "pass --data with a folder, CIFAR directory or .tar.gz archive)")
    if p.is_file():
        if p.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _load_archive(p, split, seed, Path(cache_dir) if cache_dir else None)
        raise DatasetNotFoundError(f"{p}: not a dataset (expected a directory or a .tar.gz archive)")
    for name in ("cifar-10-batches-py", "cifar-100-python"):
        if (p / name).is_dir():
            return _load_cifar_pickle(p / name, split, seed)
    if (p / "batches.meta").exists() or (p / "meta").exists() and (p / "train").is_file():
        return _load_cifar_pickle(p, split, seed)
    return _load_folder(p, split, seed)


def digits_dataset(split: str = "train", seed: int = 0, size: int = 32,
                   test_fraction: float = 0.2) -> DataInfo:
    """scikit-learn's 8x8 handwritten digits (1,797 real images), bilinearly upsampled to
    ``size`` x ``size`` grey-as-RGB uint8; a fixed stratified train/test split (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = torch.from_numpy(d.images).float().div(16.0).unsqueeze(1)          # [N,1,8,8]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1)
    y = torch.from_numpy(d.target).long()
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                      random_state=0, stratify=d.target)
    idx = torch.from_numpy(idx_tr if split == "train" else idx_te)
    return _array_info(x[idx].contiguous(), y[idx], [str(i) for i in range(10)], split, seed,
                       "sklearn digits", pad=2, flip=False)


# --------------------------------------------------------------------------- held-out splits

def _stratified_pick(labels: Tensor, n: int, seed: int) -> Tensor:
    """Sorted indices of ``n`` items, as equal a share of every class as possible, drawn with
    ``seed``."""
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = [(labels == c).nonzero().flatten() for c in classes.tolist()]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    quota = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    if any(q > len(idx) for q, idx in zip(quota, per_class)):
        raise ValueError(f"n_val: {n} held-out images do not fit the classes' sizes "
                         f"{[len(i) for i in per_class]}")
    return torch.cat([idx[:q] for q, idx in zip(quota, per_class)]).sort().values


def split_train_val(info: DataInfo, n_val: int, seed: int = 0) -> tuple[DataInfo, DataInfo]:
    """Hold ``n_val`` images out of a training set: ``(train, val)``, disjoint, stratified by
    class, drawn with ``seed``; ``val`` is not augmented. Settings are chosen on ``val``; the test
    set stays untouched until the end."""
    ds = info.dataset
    n = len(ds)
    if not 0 < n_val < n:
        raise ValueError(f"n_val: expected 0 < n_val < {n} (the training set's size), got {n_val}")
    if isinstance(ds, ImageArrayDataset):
        labels = ds.labels
    elif isinstance(ds, ImageFileDataset):
        labels = torch.tensor([lab for _, lab in ds.samples])
    else:
        raise TypeError(f"split_train_val: unsupported dataset {type(ds).__name__}")
    val_idx = _stratified_pick(labels, n_val, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    train_idx = keep.nonzero().flatten()
    if isinstance(ds, ImageArrayDataset):
        t = ds.transform
        train_ds: Any = ImageArrayDataset(ds.images[train_idx], ds.labels[train_idx], t, ds.seed)
        val_tf = SmallImageTransform(False, t.pad, t.flip, t.mean, t.std)
        val_ds: Any = ImageArrayDataset(ds.images[val_idx], ds.labels[val_idx], val_tf, ds.seed)
    else:
        train_ds = ImageFileDataset([ds.samples[i] for i in train_idx.tolist()], ds.transform,
                                    ds.train, ds.seed)
        val_ds = ImageFileDataset([ds.samples[i] for i in val_idx.tolist()],
                                  _imagenet_transform(False, info.image_size), False, ds.seed)
    tag = f"held out {n_val}, seed {seed}"
    return (DataInfo(train_ds, info.classes, info.image_size, f"{info.source} (minus {tag})"),
            DataInfo(val_ds, info.classes, info.image_size, f"{info.source} ({tag})"))


def with_normalization(info: DataInfo, mean: Sequence[float], std: Sequence[float]) -> DataInfo:
    """``info`` with its images normalised by ``mean``/``std`` instead (e.g. a converted official
    checkpoint's: CIFAR statistics, or mean 0 / std 1 for models that take [0, 1] images)."""
    ds = info.dataset
    if isinstance(ds, ImageArrayDataset):
        t = ds.transform
        new: Any = ImageArrayDataset(ds.images, ds.labels,
                                     SmallImageTransform(t.train, t.pad, t.flip, mean, std), ds.seed)
    elif isinstance(ds, ImageFileDataset):
        new = ImageFileDataset(ds.samples, _imagenet_transform(ds.train, info.image_size, mean, std),
                               ds.train, ds.seed)
    else:
        raise TypeError(f"with_normalization: unsupported dataset {type(ds).__name__}")
    return DataInfo(new, info.classes, info.image_size, info.source)


def take_subset(info: DataInfo, n: int | None, seed: int = 0) -> DataInfo:
    """``info`` limited to ``n`` images (all when ``n`` is None or larger): a seeded random
    subset of in-memory images, the first ``n`` files otherwise; the source says which."""
    ds = info.dataset
    if n is None or n >= len(ds):
        return info
    if isinstance(ds, ImageArrayDataset):
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        sub: Any = ImageArrayDataset(ds.images[idx], ds.labels[idx], ds.transform, ds.seed)
        label = f"random {n}"
    else:
        sub = ImageFileDataset(ds.samples[:n], ds.transform, ds.train, ds.seed)
        label = f"first {n}"
    return DataInfo(sub, info.classes, info.image_size, f"{info.source} ({label})")


# --------------------------------------------------------------------------- loading

class EpochSampler(Sampler[int]):
    """Deterministic, shardable, resumable sampler.

    Epoch ``e``: a permutation drawn from ``seed + e`` (or ``arange`` if not shuffling), padded
    to a multiple of ``world_size`` by repeating its head, then every ``world_size``-th index
    from ``rank``; the first ``start`` indices of this rank are skipped (resume mid-epoch).
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, before skipping."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        total = -(-self.n // self.world) * self.world
        if self.n:  # repeat the head cyclically (more than once when n < world_size - 1)
            idx = (idx * -(-total // self.n))[:total]
        return idx[self.rank:total:self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return max(0, -(-self.n // self.world) - self.start)


def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over an :class:`EpochSampler` (``loader.sampler``); training drops the last
    partial batch.  Call ``loader.sampler.set_epoch(e, start)`` and ``dataset.set_epoch(e)``
    (or :func:`set_loader_epoch`) before each epoch."""
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank,  # type: ignore
                           world_size=world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
                      num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False)


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Point ``loader`` at ``epoch``, skipping its first ``start_batch`` batches."""
    loader.sampler.set_epoch(epoch, start_batch * int(loader.batch_size or 1))  # type: ignore
    ds = loader.dataset
    if not hasattr(ds, "set_epoch"):  # a torch.utils.data.Subset: its underlying dataset's epoch
        ds = getattr(ds, "dataset", ds)
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)  # type: ignore[attr-defined]

