"""Checkpoints: tensors in safetensors, config and progress as JSON, written atomically.

A checkpoint ``<name>.safetensors`` holds every tensor (model weights, optimizer moments, RNG
states) and carries the JSON document in its safetensors metadata (key ``"blockdrop"``), so the
one file is always self-consistent.  A human-readable copy of the JSON goes beside it as
``<name>.json``.  Both are written to a temporary file in the same directory and moved into place
with :func:`os.replace`, so a kill at any moment leaves either the old or the new checkpoint.

Also here: models from checkpoints (:func:`load_backbone`, :func:`load_blockdrop_net`,
``blockdrop.load``); the name <-> module registry itself is :mod:`blockdrop.models.registry`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize
from torch import Tensor, nn

from blockdrop.errors import FileFormatError
from blockdrop.models.base import ResNetBackbone
from blockdrop.models.cifar import CifarResNet, load_cifar_resnet
from blockdrop.models.registry import backbone_spec, build_backbone, build_policy, get_model

if TYPE_CHECKING:  # blockdrop_net imports this module
    from blockdrop.blockdrop_net import BlockDropNet

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write_bytes",
    "atomic_write_text",
    "backbone_spec",
    "build_backbone",
    "load_backbone",
    "load_blockdrop_net",
    "save_blockdrop_net",
    "load",
    "read_meta",
    "optimizer_to_tensors",
    "optimizer_from_tensors",
    "prefixed",
    "unprefixed",
]

FORMAT = "blockdrop-checkpoint/1"


def _remove_stale_temps(path: Path) -> None:
    """Temporary files of earlier writes of ``path`` that a kill left behind (one writer per
    path is assumed)."""
    for q in path.parent.glob(f".{path.name}.*.tmp"):
        q.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, flushed and fsynced,
    then :func:`os.replace` (a kill leaves the old file or the new one, never a torn one; its
    temporary file is removed by the next write of ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: str | os.PathLike[str], tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Atomically write ``tensors`` (any devices; copied to contiguous CPU) and the JSON ``meta``.

    Returns the ``.safetensors`` path.  ``path`` may be given with or without the suffix.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, **meta}
    doc = json.dumps(meta, indent=1, sort_keys=True, default=_json_default)
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}  # one copy
    # Serialized in memory and written through our own temp file: safetensors' save_file makes
    # its own ``.tmpXXXXXX`` beside the target, which a kill would leave behind unrecognised.
    blob = serialize(cpu, metadata={"blockdrop": doc})
    del cpu
    atomic_write_bytes(path, blob)
    atomic_write_text(path.with_suffix(".json"), doc + "\n")
    return path


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` -> ``(tensors, meta)``."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    what = "a blockdrop checkpoint (.safetensors)"
    if path.stat().st_size == 0:
        raise FileFormatError(path, what, "the file is empty")
    tensors: dict[str, Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            md = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises its own error types for garbage and truncation
        raise FileFormatError(path, what, f"unreadable: {str(e).splitlines()[0][:120]}") from None
    if "blockdrop" not in md:
        raise FileFormatError(path, what, "a safetensors file without blockdrop metadata")
    try:
        meta = json.loads(md["blockdrop"])
    except json.JSONDecodeError as e:
        raise FileFormatError(path, what, f"corrupt metadata: {e}") from None
    if not isinstance(meta, dict):
        raise FileFormatError(path, what, "corrupt metadata")
    return tensors, meta


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Only the JSON metadata of a checkpoint (no tensors are read); errors as
    :func:`load_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    what = "a blockdrop checkpoint (.safetensors)"
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        return json.loads(md["blockdrop"])
    except Exception as e:
        raise FileFormatError(
            path, what, f"unreadable metadata: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
        ) from None


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (torch.dtype, torch.device)):
        return str(o)
    if isinstance(o, Tensor):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``{k: v} -> {prefix + k: v}``."""
    return {prefix + k: v for k, v in state.items()}


def unprefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``tensors`` under ``prefix``, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------- optimizer


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into tensors ``optim.<param>.<key>`` and a JSON part."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_to_tensors` (loads into ``opt``)."""
    state: dict[int, dict[str, Any]] = {}
    for k, v in unprefixed(tensors, "optim.").items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    for pid, d in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------- models


def load_backbone(
    weights: str | os.PathLike[str] | None, arch: str | None, num_classes: int
) -> tuple[ResNetBackbone, dict[str, Any]]:
    """A backbone and its spec: ``weights`` (a blockdrop checkpoint; a CIFAR ResNet
    ``.th``/``.pt``, its depth checked against a CIFAR ``arch``; a torchvision or timm state dict
    with ``arch``) or, without weights, a fresh ``get_model(arch, num_classes)``.

    The model maps ``[N, 3, H, W] -> [N, num_classes]`` (a CIFAR file's own class count).
    """
    if weights is None:
        if arch is None:
            raise ValueError("give --weights or --arch")
        model = get_model(arch, num_classes=num_classes)
        return model, backbone_spec(model)
    w = Path(weights)
    if not w.is_file():
        raise FileNotFoundError(f"weights not found: {w}")
    if w.suffix == ".safetensors":
        tensors, meta = load_checkpoint(w)
        return _backbone_from(tensors, meta, w), meta["backbone_spec"]
    with torch.device("meta"):  # the family and depth only: no memory, no draw from the RNG
        probe = get_model(arch, num_classes=num_classes) if arch is not None else None
    if probe is None or isinstance(probe, CifarResNet):
        model = load_cifar_resnet(w, probe.depth if probe is not None else None)
        return model, backbone_spec(model)
    assert arch is not None  # else probe is None: a CIFAR file, returned above
    model = get_model(arch, num_classes=num_classes)
    what = f"a state dict of {arch}"
    try:
        sd = torch.load(w, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        resnet = cast(nn.Module, model.resnet)  # the torchvision or timm module its wrapper holds
        resnet.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()})
    except Exception as e:
        raise FileFormatError(
            w, what, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        ) from None
    return model, backbone_spec(model)


def _backbone_from(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | os.PathLike[str] = "checkpoint"
) -> ResNetBackbone:
    """The backbone stored in a blockdrop checkpoint (its spec and ``backbone.*`` tensors)."""
    what = "a blockdrop checkpoint holding a backbone"
    if not isinstance(meta.get("backbone_spec"), dict):
        raise FileFormatError(path, what, "no 'backbone_spec' in its metadata")
    try:
        model = build_backbone(meta["backbone_spec"])
        model.load_state_dict(unprefixed(tensors, "backbone."))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise FileFormatError(
            path, what, f"its tensors do not fit {meta['backbone_spec']}: {str(e).splitlines()[0][:160]}"
        ) from None
    return model


def save_blockdrop_net(
    path: str | os.PathLike[str], net: BlockDropNet, meta: dict[str, Any] | None = None
) -> Path:
    """Write a :class:`~blockdrop.blockdrop_net.BlockDropNet` (policy network or fixed baseline
    policy + backbone) as a checkpoint that :func:`load_blockdrop_net` reads back; ``meta`` (JSON)
    is stored beside the specs. Returns the ``.safetensors`` path."""
    tensors = {
        **prefixed(net.policy_net.state_dict(), "policy."),
        **prefixed(net.backbone.state_dict(), "backbone."),
    }
    doc = {
        **(meta or {}),
        "stage": (meta or {}).get("stage", "model"),
        "backbone_spec": backbone_spec(net.backbone),
        "policy_spec": net.policy_net.spec(),  # type: ignore[operator]  # policy modules define spec()
        "threshold": float(net.threshold),
        "mode": getattr(net, "mode", "threshold"),
        "capacity": net.capacity.to_json() if net.capacity else None,
    }
    return save_checkpoint(path, tensors, doc)


def load_blockdrop_net(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", strategy: str | None = None
) -> tuple[BlockDropNet, dict[str, Any]]:
    """A :class:`~blockdrop.blockdrop_net.BlockDropNet` (eval mode) from any checkpoint the
    library writes (training stages, :func:`save_blockdrop_net`, the reproduce pipeline's
    models and baselines), plus the checkpoint's JSON."""
    from blockdrop.blockdrop_net import BlockDropNet
    from blockdrop.calibration import CapacitySpec

    tensors, meta = load_checkpoint(path)
    what = "a blockdrop model checkpoint (policy network + backbone)"
    for key in ("backbone_spec", "policy_spec"):
        if not isinstance(meta.get(key), dict):
            raise FileFormatError(path, what, f"no {key!r} in its metadata")
    backbone = _backbone_from(tensors, meta, path)
    try:
        pnet = build_policy(meta["policy_spec"])
        pnet.load_state_dict(unprefixed(tensors, "policy."))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise FileFormatError(
            path, what, f"its policy tensors do not fit {meta['policy_spec']}: {str(e).splitlines()[0][:160]}"
        ) from None
    try:  # capacity mode (blockdrop.calibration): absent from older checkpoints
        capacity = CapacitySpec.from_json(meta["capacity"]) if meta.get("capacity") else None
        net = BlockDropNet(
            pnet,
            backbone,
            strategy=strategy or "auto",
            threshold=float(meta.get("threshold", 0.5)),
            mode=meta.get("mode", "threshold"),
            capacity=capacity,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise FileFormatError(path, what, f"its capacity metadata is invalid: {e}") from None
    return net.to(device).eval(), meta


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> BlockDropNet:
    """``blockdrop.load``: the :class:`~blockdrop.blockdrop_net.BlockDropNet` (``.policy_net``,
    ``.backbone``; eval mode, ``strategy="auto"``, in the mode it was saved in, with its capacity)
    of a checkpoint file, or of a run directory's ``last.safetensors``."""
    return load_blockdrop_net(path, device)[0]
