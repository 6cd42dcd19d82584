"""A run's settings: a :class:`Preset` is one config per stage, and each of them *is* the config
its trainer takes (or a subclass with the few recipe-only extras):

=============  ==========================================================================
``pretrain``   :class:`AdaptConfig` -- from scratch, only without pretrained weights
``adapt``      :class:`AdaptConfig` -- the backbone learns to tolerate dropped blocks
``curriculum`` :class:`CurriculumConfig` -- the policy network's curriculum (a ``TrainConfig``)
``finetune``   ``TrainConfig(stage="finetune")`` -- policy and backbone jointly
``selection``  :class:`SelectionConfig` -- the operating point, chosen on validation
``baselines``  :class:`BaselinesConfig` -- what a user would pick instead, trained alike
``evaluation`` :class:`EvalConfig` -- evaluation and timing
=============  ==========================================================================

A stage set to ``None`` does not run. Run-wide settings (``seed``, ``progress``, ``device``)
belong to the run, not to a preset: the recipe writes them into each stage's config.

Files: :func:`preset_to_dict` / :func:`preset_from_dict` (nested plain data), :func:`dump_config`
(YAML), :func:`load_config` (a YAML file, or a ``report.json``, whose ``config`` is the resolved
preset of its run), :func:`apply_overrides` (``section.field=value``, the value in YAML syntax).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockdrop.errors import FileFormatError
from blockdrop.training.config import SupervisedConfig, TrainConfig

__all__ = [
    "AdaptConfig",
    "CurriculumConfig",
    "SelectionConfig",
    "BaselinesConfig",
    "EvalConfig",
    "Preset",
    "SELECT_RULES",
    "RUN_FIELDS",
    "preset_to_dict",
    "preset_from_dict",
    "dump_config",
    "load_config",
    "apply_overrides",
]

#: How the reported operating point is chosen on validation (:mod:`blockdrop.recipes.selection`).
SELECT_RULES = ("tolerance", "budget")
#: Fields of the trainers' configs that belong to the run (set by the recipe, never stored in a
#: preset).
RUN_FIELDS = ("seed", "progress", "device")


@dataclass(kw_only=True)
class AdaptConfig(SupervisedConfig):
    """Supervised training under stochastic depth (each block of each image kept with
    probability ``keep``), SGD with a cosine decay; with ``soup`` > 0 the backbone BlockDrop
    starts from is the adapted one averaged, weight by weight, with the full network trained
    alike (share ``soup`` of the latter; :mod:`blockdrop.training.averaging`)."""

    keep: float = 0.7
    soup: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep: expected a keep-probability in (0, 1], got {self.keep}")
        if not 0.0 <= self.soup <= 1.0:
            raise ValueError(f"soup: expected a share in [0, 1], got {self.soup}")


@dataclass(kw_only=True)
class CurriculumConfig(TrainConfig):
    """The curriculum (``stage`` is always "curriculum") and the policy network it trains: a
    ResNet-8 of ``width`` channels on the image average-pooled by ``pool``
    (:func:`blockdrop.models.policy.make_policy_net`). With ``prior`` the policy starts as the
    static policy that drops the blocks whose single drop costs least first
    (:mod:`blockdrop.training.drop_costs`, measured on ``prior_images`` training images;
    keep-probabilities ``prior_keep``, cheapest .. dearest). ``draws`` policies are trained from
    seeds ``seed .. seed + draws - 1``, each a candidate for the validation choice."""

    width: int = 16
    pool: int = 1
    prior: bool = False
    prior_keep: tuple[float, float] = (0.3, 0.9)
    prior_images: int = 2000
    draws: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage != "curriculum":
            raise ValueError(f"stage: a CurriculumConfig is the curriculum, got {self.stage!r}")
        lo, hi = self.prior_keep
        if not 0 < lo <= hi < 1:
            raise ValueError(f"prior_keep: expected 0 < lo <= hi < 1, got {self.prior_keep}")
        if self.draws < 1 or self.prior_images < 1 or self.width < 1 or self.pool < 1:
            raise ValueError(
                f"draws, prior_images, width and pool: expected >= 1, got "
                f"{self.draws}, {self.prior_images}, {self.width}, {self.pool}"
            )


@dataclass(kw_only=True)
class SelectionConfig:
    """How the reported operating point is chosen on validation: every trained model at every
    ``thresholds`` (keep a block if p >= t) plus ``refine`` bisections; rule "tolerance" takes
    the fewest blocks within ``tolerance`` of the full network, rule "budget" each model at the
    most blocks inside ``max_blocks`` (a share of the K blocks), then the most accurate. With
    ``include_curriculum`` the curriculum's policy (draw 0) is a candidate too."""

    rule: str = "tolerance"
    tolerance: float = 0.01
    max_blocks: float | None = None
    thresholds: tuple[float, ...] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
    refine: int = 2
    include_curriculum: bool = True

    def __post_init__(self) -> None:
        if self.rule not in SELECT_RULES:
            raise ValueError(f"rule: expected one of {', '.join(SELECT_RULES)}, got {self.rule!r}")
        if self.rule == "budget" and self.max_blocks is None:
            raise ValueError("rule 'budget': expected a block budget max_blocks, got None")
        if self.max_blocks is not None and not 0 < self.max_blocks <= 1:
            raise ValueError(f"max_blocks: expected a share of the blocks in (0, 1], got {self.max_blocks}")
        if not 0 <= self.tolerance <= 1:
            raise ValueError(f"tolerance: expected an accuracy in [0, 1], got {self.tolerance}")
        if not self.thresholds or not all(0 < t < 1 for t in self.thresholds):
            raise ValueError(f"thresholds: expected values in (0, 1), got {self.thresholds}")
        if self.refine < 0:
            raise ValueError(f"refine: expected >= 0, got {self.refine}")


@dataclass(kw_only=True)
class BaselinesConfig:
    """What a user would pick instead of BlockDrop, each trained with the same budget and data
    (the full network always runs; the smaller networks of the family run when their weights are
    given). FirstK and RandomK at each shown point's validation block count; StaticK (static
    layer pruning: the same blocks dropped for every image, greedily by their measured drop cost
    on ``static_images`` training images) at BlockDrop's chosen validation block count, rounded,
    plus each of ``static_k`` (offsets in blocks; empty: none)."""

    first_random_k: bool = True
    static_k: tuple[int, ...] = (0, -3)
    static_images: int = 1000

    def __post_init__(self) -> None:
        if self.static_images < 1:
            raise ValueError(f"static_images: expected >= 1, got {self.static_images}")


@dataclass(kw_only=True)
class EvalConfig:
    """Evaluation batch size; the measured speed: ``speed_batch`` test images, ``speed_repeats``
    interleaved rounds, the plain network (and BlockDrop) also in chunks of ``chunks`` images."""

    batch_size: int = 500
    speed_batch: int = 256
    speed_repeats: int = 5
    chunks: tuple[int, ...] = (128, 64, 32)

    def __post_init__(self) -> None:
        if min(self.batch_size, self.speed_batch, self.speed_repeats, *self.chunks) < 1:
            raise ValueError("batch_size, speed_batch, speed_repeats and chunks: expected >= 1")


@dataclass(kw_only=True)
class Preset:
    """One budget's settings: a config per stage (see the module docstring). ``gammas`` are the
    penalties swept: the finetune's, or the curriculum's when there is no finetune (with a
    finetune, the curriculum uses its own ``gamma``). ``n_val`` images are held out of the
    training data for every choice when the run has no validation set of its own."""

    name: str
    summary: str = ""
    n_val: int = 5000
    gammas: tuple[float, ...] = (5.0,)
    pretrain: AdaptConfig | None = None
    adapt: AdaptConfig | None = None
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    finetune: TrainConfig | None = None
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.finetune is not None and self.finetune.stage != "finetune":
            raise ValueError(
                f"finetune: expected a TrainConfig of stage 'finetune', got {self.finetune.stage!r}"
            )
        if not self.gammas or min(self.gammas) < 0:
            raise ValueError(f"gammas: expected penalties >= 0, got {self.gammas}")
        if self.n_val < 1:
            raise ValueError(f"n_val: expected >= 1, got {self.n_val}")

    def replace(self, **changes: Any) -> Preset:
        """A copy with some fields (top-level, or whole stage configs) replaced."""
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------ files

_SECTIONS: dict[str, Any] = {
    "pretrain": AdaptConfig,
    "adapt": AdaptConfig,
    "curriculum": CurriculumConfig,
    "finetune": TrainConfig,
    "selection": SelectionConfig,
    "baselines": BaselinesConfig,
    "evaluation": EvalConfig,
}


def _section_dict(cfg: Any) -> dict[str, Any] | None:
    if cfg is None:
        return None
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in RUN_FIELDS}


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def preset_to_dict(p: Preset) -> dict[str, Any]:
    """Nested plain data (JSON/YAML-able): top-level fields, then one mapping per stage (None
    for a stage that does not run)."""
    out: dict[str, Any] = {"name": p.name, "summary": p.summary, "n_val": p.n_val, "gammas": list(p.gammas)}
    for name in _SECTIONS:
        out[name] = _section_dict(getattr(p, name))
    return out


def _coerce(cls: Any, name: str, value: Any, where: str) -> Any:
    """``value`` as field ``name`` of ``cls`` expects it (its type hint: int, float, bool, str,
    tuples of them, optionally None); ValueError naming ``where.name`` otherwise. YAML lists
    become tuples, ints become floats where a float is expected, and strings that YAML 1.1 leaves
    unparsed (``1e-3``) become numbers."""
    hint = typing.get_type_hints(cls)[name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if union else (hint,)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"{where}.{name}: expected a value, got null")
    kind = next(a for a in args if a is not type(None))
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}.{name}: expected a list, got {value!r}")
        elem = typing.get_args(kind)[0]
        return tuple(_scalar(elem, v, f"{where}.{name}") for v in value)
    return _scalar(kind, value, f"{where}.{name}")


def _scalar(kind: Any, value: Any, what: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - every config field is one of the above
        return value
    raise ValueError(f"{what}: expected {kind.__name__}, got {value!r}")


def _build(cls: Any, data: Any, where: str) -> Any:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init} - set(RUN_FIELDS)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{where}: unknown setting {unknown[0]!r} (expected one of {', '.join(sorted(names))})"
        )
    kw = {k: _coerce(cls, k, v, where) for k, v in data.items()}
    try:
        return cls(**kw)
    except TypeError as e:  # a missing required field
        raise ValueError(f"{where}: {e}") from None


def preset_from_dict(data: dict[str, Any], base: Preset | None = None) -> Preset:
    """A :class:`Preset` from :func:`preset_to_dict`'s form. With ``base``, ``data`` may be
    partial: its top-level fields replace the base's, and each stage mapping updates the base's
    stage field by field (``None`` turns a stage off). ValueError naming the setting otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"config: expected a mapping, got {type(data).__name__}")
    top = {"name", "summary", "n_val", "gammas", *_SECTIONS}
    unknown = sorted(set(data) - top - {"preset"})
    if unknown:
        raise ValueError(f"config: unknown section {unknown[0]!r} (expected one of {', '.join(sorted(top))})")
    merged = preset_to_dict(base) if base is not None else {}
    for k, v in data.items():
        if k in _SECTIONS and isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        elif k != "preset":
            merged[k] = v
    if "name" not in merged:
        raise ValueError("config: expected a name (or a base preset)")
    stages = {k: _build(cls, merged.get(k), k) for k, cls in _SECTIONS.items() if k in merged}
    top_kw: dict[str, Any] = {k: merged[k] for k in ("name", "summary", "n_val") if k in merged}
    if "gammas" in merged:
        top_kw["gammas"] = tuple(float(g) for g in merged["gammas"])
    return Preset(**top_kw, **stages)


def dump_config(p: Preset) -> str:
    """The preset as YAML (the form ``--config`` reads): a block per stage, lists inline."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(
        list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
    )
    return yaml.dump(preset_to_dict(p), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def load_config(path: str | os.PathLike[str], base: Preset | None = None) -> Preset:
    """A preset from a YAML file (``--print-config``'s form, whole or partial over ``base`` or
    over the preset its ``preset:`` key names) or from a ``report.json`` (its ``config``)."""
    from blockdrop.recipes.presets import get_preset

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: {path} does not exist")
    import yaml

    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            data = data.get("config", data) if isinstance(data, dict) else data
        else:
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise FileFormatError(path, f"a {kind} config", str(e).splitlines()[0]) from None
    if isinstance(data, dict) and "preset" in data:
        base = get_preset(str(data["preset"]))
    return preset_from_dict(data, base)


def apply_overrides(p: Preset, overrides: list[str]) -> Preset:
    """``p`` with ``section.field=value`` (or ``field=value`` for a top-level field) applied in
    order; ``value`` in YAML syntax (``0.4``, ``true``, ``[2, 5]``, ``null``)."""
    import yaml

    data: dict[str, Any] = {}
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise ValueError(f"set: expected SECTION.FIELD=VALUE, got {text!r}")
        value = yaml.safe_load(raw) if raw.strip() else None
        section, dot, name = key.partition(".")
        if dot:
            if section not in _SECTIONS:
                raise ValueError(
                    f"set: unknown section {section!r} in {text!r} (expected one of {', '.join(_SECTIONS)})"
                )
            if getattr(p, section) is None and section not in data:
                raise ValueError(
                    f"set: {section} does not run in preset {p.name!r}; "
                    f"give the whole stage in a --config file"
                )
            data.setdefault(section, {})[name] = value
        else:
            data[section] = value
    return preset_from_dict(data, p) if data else p
