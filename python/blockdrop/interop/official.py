"""The authors' BlockDrop checkpoints (Tushar-N/blockdrop), loaded as a :class:`BlockDropNet`.

    net = blockdrop.interop.load_official("R110_C10_gamma_10.t7", "R110_C10")
    logits, policy = net(x)          # x: exactly the tensor the official model takes

The official ``.t7`` files are ``torch.save`` pickles (torch 0.3, Python 2) of ``{"agent":
state_dict, "resnet": state_dict, ...}`` (finetuned checkpoints; curriculum ones hold only
``agent``). The state dicts load into :mod:`.official_models`, whose modules carry the official
names; the policy is ``p >= 0.5`` of the agent's sigmoid output (the official ``test.py``).

**Loading a pickle can run code.** By default the file is read with torch's allow-list unpickler
(``weights_only=True``: tensors, containers and numbers only) and anything else is refused with a
message; ``trust_pickle=True`` lifts that for a file you trust (full unpickling).

**Inputs** (official ``utils.get_transforms``): ``R32_C10`` expects CIFAR mean/std normalisation,
``(125.3, 123.0, 113.9)/255`` and ``(63.0, 62.1, 66.7)/255``; ``R110_C10``, ``R32_C100`` and
``R110_C100`` take the image in [0, 1] without normalisation; ``R101_ImgNet`` the ImageNet
mean/std at 224x224. :func:`input_normalization` returns them; a converted checkpoint records
them and ``blockdrop eval`` applies them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.errors import FileFormatError
from blockdrop.interop.official_models import OFFICIAL_MODELS

__all__ = ["OFFICIAL_NAMES", "CIFAR10_CLASSES", "load_official", "input_normalization", "official_meta"]

OFFICIAL_NAMES = tuple(OFFICIAL_MODELS)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def input_normalization(model: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` the official ``model`` normalises its input with, or None ([0, 1] input)."""
    return _entry(model)[2]


def _entry(model: str) -> tuple[Any, Any, Any]:
    if model not in OFFICIAL_MODELS:
        raise ValueError(f"model: expected one of {', '.join(OFFICIAL_NAMES)}, got {model!r}")
    return OFFICIAL_MODELS[model]


def _read(path: Path, trust_pickle: bool) -> dict[str, Any]:
    what = "an official BlockDrop checkpoint (.t7: a torch.save of {'agent', 'resnet'} state dicts)"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise FileFormatError(path, what, "the file is empty")
    try:
        # Python 2 strings: ASCII in the allow-list unpickler, latin-1 when fully unpickling
        extra: dict[str, Any] = {"encoding": "latin1"} if trust_pickle else {}
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle, **extra)
    except Exception as e:
        hint = (
            ""
            if trust_pickle
            else (
                "; if it holds more than tensors and you trust the file, "
                "pass trust_pickle=True (--trust-pickle)"
            )
        )
        raise FileFormatError(path, what, f"torch.load failed with {type(e).__name__}{hint}") from None
    if not isinstance(obj, dict) or "agent" not in obj:
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise FileFormatError(path, what, f"no 'agent' entry (found {keys})")
    return obj


def _clean(state: Any, path: Path, part: str) -> dict[str, torch.Tensor]:
    """``module.`` prefixes (DataParallel) and the legacy ``features.fc.*`` keys removed."""
    if not isinstance(state, dict):
        raise FileFormatError(path, f"a state dict under {part!r}", f"found {type(state).__name__}")
    out = {}
    for k, v in state.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        if not k.startswith("features.fc"):
            out[k] = v
    return out


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, part: str) -> None:
    try:
        module.load_state_dict(state)  # BN without num_batches_tracked: filled in (version-less)
    except RuntimeError as e:
        raise FileFormatError(
            path,
            f"a {part} state dict of this official model",
            str(e).splitlines()[1 if len(str(e).splitlines()) > 1 else 0][:200].strip(),
        ) from None


def load_official(
    path: str | os.PathLike[str], model: str, trust_pickle: bool = False, device: str | torch.device = "cpu"
) -> BlockDropNet:
    """The official checkpoint at ``path`` as a :class:`BlockDropNet` (eval mode, threshold 0.5,
    ``strategy="auto"``); ``model`` is one of :data:`OFFICIAL_NAMES`. A checkpoint without a
    ``resnet`` entry (curriculum stage) gets a randomly initialised backbone and a warning."""
    p = Path(path)
    make_backbone, make_policy, _ = _entry(model)
    obj = _read(p, trust_pickle)
    agent, backbone = make_policy(), make_backbone()
    _load_into(agent, _clean(obj["agent"], p, "agent"), p, "agent")
    if "resnet" in obj:
        _load_into(backbone, _clean(obj["resnet"], p, "resnet"), p, "resnet")
    else:
        import warnings

        warnings.warn(
            f"{p}: no 'resnet' entry (a curriculum checkpoint); the backbone is randomly "
            "initialised -- load the pretrained one into net.backbone",
            stacklevel=2,
        )
    return BlockDropNet(agent, backbone, strategy="auto").to(device).eval()


def official_meta(model: str) -> dict[str, Any]:
    """What a converted checkpoint records: the official name, input normalisation, classes."""
    norm = input_normalization(model)
    meta: dict[str, Any] = {
        "official": model,
        "image_size": 224 if "ImgNet" in model else 32,
        "input_normalization": None if norm is None else {"mean": list(norm[0]), "std": list(norm[1])},
    }
    if model.endswith("_C10"):
        meta["classes"] = CIFAR10_CLASSES
    return meta
