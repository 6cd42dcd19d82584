"""Models from elsewhere: the authors' BlockDrop checkpoints (:func:`load_official`). timm and
torchvision ResNets are in :mod:`blockdrop.models` (``from_timm``, ``from_torchvision``)."""

from .official import OFFICIAL_NAMES, input_normalization, load_official

__all__ = ["OFFICIAL_NAMES", "input_normalization", "load_official"]
