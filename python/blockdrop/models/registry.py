"""Backbones by name, and the JSON *specs* a checkpoint stores, each kind registered by the module
that defines it (this module imports nothing from the rest of the package).

Names (:func:`get_model`, :func:`list_models`, :func:`resolve_model`):

* a registered name means itself, whatever else has it: ``cifar_resnet56`` (CIFAR, depth 6n+2),
  ``resnet50`` (torchvision's, although timm and the CIFAR family have a ResNet-50 too);
* a family prefix names an open set: ``cifar_resnet<6n+2>`` any depth, ``timm/<name>`` any timm
  ResNet (timm's own name check; timm is optional);
* old prefixes map onto the new: ``cifar-X -> cifar_X``, ``tv-X -> X``, ``timm-X -> timm/X``;
* any other bare name is tried in every family (``resnet56 -> cifar_resnet56``): one match is
  used, several are an error listing them (``resnet26``: ``cifar_resnet26``, ``timm/resnet26``).
  A family whose library is missing (timm) takes no part.

Names are case-insensitive; :data:`ARCH_HELP` says this in one line.

Specs (:func:`backbone_spec`, :func:`build_backbone`, :func:`build_policy`): a JSON object
``{"kind": ..., ...}``; a backbone kind maps a class to its spec and back
(:func:`register_backbone_kind`), a policy kind maps a spec to a module (the module's own
``spec()`` writes it; :func:`register_policy_kind`).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from .base import ResNetBackbone

__all__ = [
    "ARCH_HELP",
    "ModelRef",
    "register_model",
    "register_family",
    "register_old_prefix",
    "get_model",
    "list_models",
    "resolve_model",
    "register_backbone_kind",
    "register_policy_kind",
    "backbone_kinds",
    "policy_kinds",
    "backbone_spec",
    "build_backbone",
    "build_policy",
]

#: The grammar in one line (CLI help, errors).
ARCH_HELP = (
    "cifar_resnet<6n+2> (CIFAR), resnet18..152 / resnext* / wide_resnet* (torchvision), "
    "timm/<name> (timm); a bare name such as resnet56 works when one family has it"
)

#: ``builder(num_classes=..., **kwargs) -> ResNetBackbone``
Builder = Callable[..., "ResNetBackbone"]


@dataclass(frozen=True)
class ModelRef:
    """What a name resolves to: the canonical ``name``, its ``family`` and its ``builder``."""

    name: str
    family: str
    builder: Builder


@dataclass(frozen=True)
class _Family:
    name: str
    prefix: str  # non-empty; every name of the family has it
    resolve: Callable[[str], Builder | None]  # local name -> builder, None when not a name
    suggest: Callable[[], Iterable[str]]  # local names offered as close matches


_MODELS: dict[str, ModelRef] = {}
_FAMILIES: dict[str, _Family] = {}
_OLD_PREFIXES: dict[str, tuple[str, str]] = {}  # old prefix -> (new prefix, family)


def _natural(name: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def register_model(fn: Builder | None = None, *, name: str | None = None, family: str = "custom") -> Any:
    """Register ``fn`` under ``name`` (default ``fn.__name__``): ``@register_model``,
    ``@register_model(name=..., family=...)`` or ``register_model(fn, name=...)``. Returns ``fn``.
    ``fn(num_classes=..., **kwargs)`` returns a ``ResNetBackbone``; a name is registered once."""

    def add(f: Builder) -> Builder:
        key = name or f.__name__
        if key != key.lower() or "/" in key:
            raise ValueError(f"name: expected a lower-case name without '/', got {key!r}")
        if key in _MODELS:
            raise ValueError(f"name: {key!r} is already registered")
        _MODELS[key] = ModelRef(key, family, f)
        return f

    return add if fn is None else add(fn)


def register_family(
    name: str,
    prefix: str,
    resolve: Callable[[str], Builder | None],
    suggest: Callable[[], Iterable[str]] = tuple,
) -> None:
    """Register the open set of names ``prefix + local``: ``resolve(local)`` returns a builder,
    None when ``local`` is not a name of the family, or raises ImportError when the family's
    library is missing. Bare names are also tried as ``prefix + name``."""
    if not prefix or prefix != prefix.lower():
        raise ValueError(f"prefix: expected a non-empty lower-case prefix, got {prefix!r}")
    _FAMILIES[name] = _Family(name, prefix, resolve, suggest)


def register_old_prefix(old: str, new: str, family: str) -> None:
    """Accept ``old + X`` as ``new + X``, provided that names a model of ``family``."""
    _OLD_PREFIXES[old] = (new, family)


def _family_ref(name: str) -> ModelRef | None:
    """``name`` through the family whose prefix it carries; None when none resolves it."""
    for fam in _FAMILIES.values():
        if name.startswith(fam.prefix):
            try:
                builder = fam.resolve(name[len(fam.prefix) :])
            except ImportError as e:
                raise ValueError(f"arch: {name!r} needs a missing library ({e})") from None
            if builder is not None:
                return ModelRef(name, fam.name, builder)
    return None


def _bare_refs(name: str) -> list[ModelRef]:
    """Every family that has ``name`` (a name without a prefix); a missing library has none."""
    refs = []
    for fam in _FAMILIES.values():
        try:
            builder = fam.resolve(name)
        except ImportError:
            continue
        if builder is not None:
            refs.append(ModelRef(fam.prefix + name, fam.name, builder))
    return refs


def _close_matches(name: str) -> list[str]:
    """Up to 4 known names like ``name``, compared with and without their family prefix."""
    known = list(_MODELS)
    for fam in _FAMILIES.values():
        try:
            known += [fam.prefix + n for n in fam.suggest()]
        except ImportError:
            pass
    by_key: dict[str, str] = {}
    for full in known:
        by_key.setdefault(full, full)
        for fam in _FAMILIES.values():
            if full.startswith(fam.prefix):
                by_key.setdefault(full[len(fam.prefix) :], full)
    keys = difflib.get_close_matches(name, list(by_key), n=8, cutoff=0.6)
    return list(dict.fromkeys(by_key[k] for k in keys))[:4]


def resolve_model(arch: str) -> ModelRef:
    """The model ``arch`` names (grammar in the module docstring); ValueError naming ``arch`` when
    it names none (with close matches) or several (with the choices)."""
    if not isinstance(arch, str) or not arch.strip():
        raise ValueError(f"arch: expected a model name such as 'cifar_resnet56', got {arch!r}")
    name = arch.strip().lower()
    if name in _MODELS:
        return _MODELS[name]
    ref = _family_ref(name)
    if ref is not None:
        return ref
    for old, (new, family) in _OLD_PREFIXES.items():
        if name.startswith(old):
            target = new + name[len(old) :]
            ref = _MODELS.get(target) or _family_ref(target)
            if ref is not None and ref.family == family:
                return ref
            break
    else:
        refs = _bare_refs(name)
        if len(refs) == 1:
            return refs[0]
        if refs:
            choices = ", ".join(f"{r.name} ({r.family})" for r in refs)
            raise ValueError(f"arch: {arch!r} is ambiguous; name one of {choices}")
    close = _close_matches(name)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(f"arch: unknown model {arch!r}{hint} (names: {ARCH_HELP})")


def get_model(arch: str, num_classes: int | None = None, **kwargs: Any) -> ResNetBackbone:
    """A freshly initialised backbone named ``arch`` (see :func:`resolve_model`).

    Args:
        arch: a model name, e.g. ``"cifar_resnet56"``, ``"resnet50"``, ``"timm/resnet50d"``.
        num_classes: classifier outputs; None keeps the builder's default (10 for CIFAR nets,
            1000 for torchvision and timm).
        kwargs: passed on to the builder (e.g. torchvision's ``zero_init_residual``).

    Returns:
        a ``ResNetBackbone``: ``model(x [N, 3, H, W]) -> logits [N, num_classes]``.
    """
    if num_classes is not None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        kwargs["num_classes"] = num_classes
    return resolve_model(arch).builder(**kwargs)


def list_models(pattern: str | None = None, family: str | None = None) -> list[str]:
    """The registered names (natural order), optionally those matching the ``fnmatch``
    ``pattern`` and of one ``family`` (``"cifar"``, ``"torchvision"``). Open families (any CIFAR
    depth, ``timm/<name>``) are not enumerated."""
    names = [n for n, ref in _MODELS.items() if family is None or ref.family == family]
    if pattern is not None:
        names = fnmatch.filter(names, pattern.lower())
    return sorted(names, key=_natural)


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class _BackboneKind:
    cls: type
    to_spec: Callable[[Any], dict[str, Any]]
    from_spec: Callable[[dict[str, Any]], ResNetBackbone]


_BACKBONE_KINDS: dict[str, _BackboneKind] = {}
_POLICY_KINDS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}


def register_backbone_kind(
    kind: str,
    cls: type,
    to_spec: Callable[[Any], dict[str, Any]],
    from_spec: Callable[[dict[str, Any]], ResNetBackbone],
) -> None:
    """Backbones of class ``cls`` are stored as ``{"kind": kind, **to_spec(model)}`` and rebuilt
    (freshly initialised) by ``from_spec(spec)``."""
    if kind in _BACKBONE_KINDS:
        raise ValueError(f"kind: backbone kind {kind!r} is already registered")
    _BACKBONE_KINDS[kind] = _BackboneKind(cls, to_spec, from_spec)


def register_policy_kind(kind: str, from_spec: Callable[[dict[str, Any]], nn.Module]) -> None:
    """Policy specs ``{"kind": kind, ...}`` (a policy module's own ``spec()``) are rebuilt by
    ``from_spec(spec)``."""
    if kind in _POLICY_KINDS:
        raise ValueError(f"kind: policy kind {kind!r} is already registered")
    _POLICY_KINDS[kind] = from_spec


def backbone_kinds() -> tuple[str, ...]:
    """The registered backbone spec kinds."""
    return tuple(_BACKBONE_KINDS)


def policy_kinds() -> tuple[str, ...]:
    """The registered policy spec kinds."""
    return tuple(_POLICY_KINDS)


def backbone_spec(model: nn.Module) -> dict[str, Any]:
    """JSON description from which :func:`build_backbone` rebuilds ``model``'s architecture
    (the kind registered for the nearest class in ``type(model).__mro__``)."""
    for cls in type(model).__mro__:
        for kind, entry in _BACKBONE_KINDS.items():
            if entry.cls is cls:
                return {"kind": kind, **entry.to_spec(model)}
    raise ValueError(
        f"model: no backbone kind is registered for {type(model).__name__} "
        f"(registered: {', '.join(_BACKBONE_KINDS)})"
    )


def _kind(spec: Any, what: str, registered: dict[str, Any]) -> str:
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise ValueError(f"{what}: expected a dict with a 'kind', got {spec!r}")
    kind = spec["kind"]
    if kind not in registered:
        raise ValueError(
            f"{what}: kind {kind!r} is not registered (registered: "
            f"{', '.join(registered)}; is the module defining it imported?)"
        )
    return kind


def build_backbone(spec: dict[str, Any]) -> ResNetBackbone:
    """A freshly initialised backbone from :func:`backbone_spec`'s output."""
    return _BACKBONE_KINDS[_kind(spec, "spec", _BACKBONE_KINDS)].from_spec(spec)


def build_policy(spec: dict[str, Any]) -> nn.Module:
    """A freshly initialised policy module from its ``spec()``: ``module(x [N, 3, H, W]) ->
    [N, K]`` keep probabilities (or 0/1 for the fixed baselines)."""
    return _POLICY_KINDS[_kind(spec, "spec", _POLICY_KINDS)](spec)
