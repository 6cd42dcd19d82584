"""Where datasets come from: ImageFolder trees, ``.tar.gz`` archives of them, torchvision's CIFAR
folders, scikit-learn's digits. Nothing is downloaded; a missing, unreadable or truncated source
is an error naming it."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from blockdrop.data.datasets import DataInfo, DatasetNotFoundError, ImageArrayDataset, ImageFileDataset
from blockdrop.data.transforms import SmallImageTransform, imagenet_transform
from blockdrop.errors import FileFormatError

__all__ = ["load_dataset", "digits_dataset", "IMG_EXTS"]

IMG_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
SMALL_IMAGE = 64  # images up to this side are decoded into memory


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
        raise ValueError(
            f"{what}: images of different sizes {sorted(shapes)[:3]}; small-image datasets must be uniform"
        )
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([idx[c] for c, _, _ in entries], dtype=torch.long)
    return images, labels, classes


def _split_names(split: str) -> tuple[str, ...]:
    return ("train",) if split == "train" else ("test", "val", "valid", "validation", "test1000")


def _archive_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return [m for m in tf.getmembers() if m.isfile() and m.name.lower().endswith(IMG_EXTS)]


def _select_tree(names: list[str], split: str, what: str) -> tuple[int, str | None]:
    """Given relative file paths, return (#leading components to drop, split dir or None) so that
    what is left is ``<class>/<file>``."""
    parts = [Path(n).parts for n in names]
    depth = {len(p) for p in parts}
    if len(depth) != 1 or min(depth) < 2:
        raise DatasetNotFoundError(
            f"{what}: not an ImageFolder tree (<class>/<image>), found paths like {names[:2]}"
        )
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
            if any(n.split("/")[0] == name for n in names):  # torchvision's own CIFAR archive
                return _load_cifar_pickle(_extract(path, cache_dir) / name, split, seed)
        raise DatasetNotFoundError(f"{path}: archive holds no images")
    drop, split_dir = _select_tree([m.name for m in members], split, str(path))
    keep = [m for m in members if split_dir is None or Path(m.name).parts[drop] == split_dir]
    off = drop + (1 if split_dir else 0)
    with tarfile.open(path) as tf:
        first = tf.extractfile(keep[0]).read()  # type: ignore[union-attr]  # a regular file: not None
        small = max(_decode(first, f"{path}: {keep[0].name}").shape[:2]) <= SMALL_IMAGE
        if small:
            entries = []
            for m in keep:
                parts = Path(m.name).parts[off:]
                data = tf.extractfile(m).read()  # type: ignore[union-attr]  # a regular file: not None
                entries.append((parts[0], parts[1], data))
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
        raise FileFormatError(
            path,
            "a readable .tar.gz / .tar archive of an ImageFolder tree",
            f"truncated or corrupt: {type(e).__name__}: {e}",
        ) from None


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
    samples = [
        (str(f), i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).rglob("*"))
        if f.suffix.lower() in IMG_EXTS
    ]
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
    ds = ImageFileDataset(samples, imagenet_transform(train), train, seed)
    return DataInfo(ds, classes, 224, str(root))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR batch file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only arrays and containers)")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise FileFormatError(
            path, "a CIFAR python batch file (a pickled dict of arrays)", f"{type(e).__name__}: {e}"
        ) from None
    if not isinstance(d, dict):
        raise FileFormatError(
            path, "a CIFAR python batch file (a pickled dict of arrays)", f"holds a {type(d).__name__}"
        )
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


def _array_info(
    images: Tensor,
    labels: Tensor,
    classes: list[str],
    split: str,
    seed: int,
    source: str,
    pad: int | None = None,
    flip: bool = True,
) -> DataInfo:
    side = int(images.shape[1])
    tf = SmallImageTransform(split == "train", pad=side // 8 if pad is None else pad, flip=flip)
    return DataInfo(ImageArrayDataset(images, labels, tf, seed), classes, side, source)


def load_dataset(
    path: str | os.PathLike[str],
    split: str = "train",
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DataInfo:
    """Load a dataset from ``path`` (archive, ImageFolder root, or CIFAR folder).

    ``split`` is "train" (augmented) or "test" (no augmentation).  A missing or unrecognisable
    path raises :class:`DatasetNotFoundError` naming the path tried.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetNotFoundError(
            f"dataset not found: {p} does not exist (nothing is downloaded; "
            "pass --data with a folder, CIFAR directory or .tar.gz archive)"
        )
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


def digits_dataset(
    split: str = "train", seed: int = 0, size: int = 32, test_fraction: float = 0.2
) -> DataInfo:
    """scikit-learn's 8x8 handwritten digits (1,797 real images), bilinearly upsampled to
    ``size`` x ``size`` grey-as-RGB uint8; a fixed stratified train/test split (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images).float().div(16.0).unsqueeze(1)  # [N,1,8,8]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1)
    y = torch.from_numpy(d.target).long()
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=0, stratify=d.target
    )
    idx = torch.from_numpy(idx_tr if split == "train" else idx_te)
    return _array_info(
        x[idx].contiguous(),
        y[idx],
        [str(i) for i in range(10)],
        split,
        seed,
        "sklearn digits",
        pad=2,
        flip=False,
    )
