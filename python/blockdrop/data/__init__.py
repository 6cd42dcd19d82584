"""Datasets, augmentation and deterministic, resumable data loading.

Supported sources (nothing is ever downloaded; :mod:`.sources`):

* torchvision's CIFAR-10/100 folder format (``cifar-10-batches-py`` / ``cifar-100-python``);
* ImageFolder trees ``<root>[/<split>]/<class>/<image>``;
* ``.tar.gz`` / ``.tgz`` / ``.tar`` archives of ImageFolder trees.  Archives of small images
  (<= 64 px, e.g. CIFAR) are streamed with :mod:`tarfile` straight into memory; larger ones are
  extracted once into a cache directory (``$BLOCKDROP_CACHE`` or ``~/.cache/blockdrop``);
* scikit-learn's handwritten digits (the demo's embedded dataset), upsampled to 32x32 RGB.

Augmentation is a function of ``(seed, epoch, index)`` only (:mod:`.transforms`); held-out splits,
subsets and other normalisations are in :mod:`.splits`; the sampler and loader in :mod:`.loading`.
"""

from blockdrop.data.datasets import DataInfo, DatasetNotFoundError, ImageArrayDataset, ImageFileDataset
from blockdrop.data.loading import EpochSampler, make_loader, set_loader_epoch
from blockdrop.data.sources import digits_dataset, load_dataset
from blockdrop.data.splits import split_train_val, take_subset, with_normalization
from blockdrop.data.transforms import MEAN, STD, SmallImageTransform, denormalize

__all__ = [
    "DataInfo",
    "DatasetNotFoundError",
    "ImageArrayDataset",
    "ImageFileDataset",
    "EpochSampler",
    "SmallImageTransform",
    "load_dataset",
    "digits_dataset",
    "make_loader",
    "set_loader_epoch",
    "split_train_val",
    "take_subset",
    "with_normalization",
    "denormalize",
    "MEAN",
    "STD",
]
