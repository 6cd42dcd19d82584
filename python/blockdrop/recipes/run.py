"""A run of the recipe: where each stage writes (:class:`RunPaths`: the run folder, its settings
and what resuming may reuse) and what the stages share (:class:`Run`: the preset, the data, the
device, and the run's clock, which a resumed run continues from ``OUT/clock.json``)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from blockdrop.checkpoint import atomic_write_text
from blockdrop.data import DataInfo
from blockdrop.errors import IncompatibleError
from blockdrop.recipes.config import Preset
from blockdrop.training.config import TrainConfig
from blockdrop.training.supervised import ReplayTeacher

__all__ = ["RunPaths", "Run"]


@dataclass
class RunPaths:
    """Where each stage's model goes under ``out``."""

    out: Path

    _OWN = (
        "pretrain",
        "adapt",
        "baselines",
        "report.json",
        "report.md",
        "blockdrop.safetensors",
        "blockdrop.json",
        "tradeoff.png",
        "block_usage.png",
        "policy_grid.png",
        "results.json",
        "results.txt",
        "config.yaml",
        "validation.json",
        "clock.json",
    )

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Refuse an ``out`` holding another run unless resuming or overwriting (which removes
        only what a run writes)."""
        if resume and overwrite:
            raise IncompatibleError("resume and overwrite exclude each other")
        if self.out.exists() and not self.out.is_dir():
            raise IncompatibleError(f"out: {self.out} exists and is not a directory")
        ours = [self.out / n for n in self._OWN] + sorted(self.out.glob("gamma*"))
        present = [q for q in ours if q.exists()]
        if present and not (resume or overwrite):
            raise IncompatibleError(
                f"out: {self.out} already holds a run ({present[0].name}); "
                f"resume it (--resume) or replace it (--overwrite)"
            )
        if overwrite:
            for q in present:
                shutil.rmtree(q) if q.is_dir() else q.unlink()
        self.out.mkdir(parents=True, exist_ok=True)

    def check_settings(self, config: str, resume: bool) -> None:
        """When resuming, refuse a run that was started with other settings than ``config`` (its
        finished stages would be reused as they are): IncompatibleError naming the first one."""
        path = self.out / "config.yaml"
        if resume and path.is_file() and path.read_text() != config:
            import yaml

            diff = _difference(yaml.safe_load(path.read_text()), yaml.safe_load(config))
            raise IncompatibleError(
                f"out: {self.out} holds a run made with other settings "
                f"({diff}); resume it with its own settings "
                f"(--config {path}) or start afresh (--overwrite)"
            )

    def stamp(self, config: str) -> None:
        """Write the run's settings to ``out/config.yaml`` (checked by :meth:`check_settings`)."""
        atomic_write_text(self.out / "config.yaml", config)

    def pretrained(self) -> Path:
        """The backbone trained from scratch (runs without pretrained weights)."""
        return self.out / "pretrain" / "backbone.safetensors"

    def adapted(self) -> Path:
        """The backbone after the adapt stage."""
        return self.out / "adapt" / "backbone.safetensors"

    def souped(self) -> Path:
        """The weight average BlockDrop executes."""
        return self.out / "adapt" / "souped.safetensors"

    def full(self) -> Path:
        """The full network finetuned alike."""
        return self.out / "baselines" / "full.safetensors"

    def full_adapt(self) -> Path:
        """The full network after the adapt stage's steps only."""
        return self.out / "baselines" / "full_adapt.safetensors"

    def baseline(self, kind: str, gamma: float, threshold: float, tag: str = "") -> Path:
        """FirstK / RandomK (``kind``) at a shown point's block count."""
        return self.out / "baselines" / f"{kind}_gamma{gamma:g}_t{threshold:g}{tag}.safetensors"

    def stage(self, gamma: float, stage: str) -> Path:
        """A policy stage's trainer folder (``curriculum``, ``finetune``, ``..._draw1``)."""
        return self.out / f"gamma{gamma:g}" / stage


def _difference(a: Any, b: Any, where: str = "") -> str:
    """The first setting in which two nested mappings differ: ``"name: old -> new"``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
    return f"{where or 'config'}: {a!r} -> {b!r}"


@dataclass
class Run:
    """Everything the stages share."""

    preset: Preset
    paths: RunPaths
    device: torch.device
    seed: int
    progress: bool
    resume: bool
    train: DataInfo
    val: DataInfo
    meta: dict[str, Any]
    log: Callable[[str], None]
    seconds: dict[str, float] = field(default_factory=dict)
    replay: ReplayTeacher | None = None  # the pretrained teacher's recording (adapt -> full)
    cache: dict[Any, Any] = field(default_factory=dict)  # measurements shared by stages (drop costs)
    started: float = field(default_factory=lambda: time.time())  # this session's start
    elapsed_before: float = 0.0  # seconds of earlier sessions, up to each one's last checkpoint
    sessions: int = 1
    marks: dict[str, float] = field(default_factory=dict)  # elapsed() when a milestone was first reached
    _open: list[tuple[str, float]] = field(default_factory=list, init=False, repr=False)  # stages in progress

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, its seconds added to ``seconds[name]``."""
        t = time.time()
        self._open.append((name, t))
        try:
            out = fn()
        finally:
            self._open.pop()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.time() - t
        return out

    def elapsed(self) -> float:
        """Wall seconds of the work this run kept: earlier sessions up to their last checkpoint
        (``OUT/clock.json``), plus this session so far."""
        return self.elapsed_before + time.time() - self.started

    def checkpointed(self) -> None:
        """Record that a checkpoint was written (a stage's model, or a trainer's own): the clock
        is saved with the time so far, that of the stages in progress included, so that a
        resumed run counts the work it keeps and none that it lost. What a resume must redo
        is counted again: the evaluations of the kept models (their results are not saved)."""
        now, secs = time.time(), dict(self.seconds)
        for name, t in self._open:
            secs[name] = secs.get(name, 0.0) + now - t
        c = {"seconds": self.elapsed(), "stage_seconds": secs, "sessions": self.sessions, "marks": self.marks}
        atomic_write_text(self.paths.out / "clock.json", json.dumps(c, indent=1))

    def mark(self, name: str) -> float:
        """The elapsed seconds at which the run first reached milestone ``name`` (now, unless an
        earlier session of a resumed run reached it), saved with the clock."""
        if name not in self.marks:
            self.marks[name] = self.elapsed()
            self.checkpointed()
        return self.marks[name]

    def resume_clock(self) -> None:
        """Continue the clock of the run in ``paths.out`` (a resumed run); no-op without one."""
        f = self.paths.out / "clock.json"
        if not f.exists():
            return
        try:
            c = json.loads(f.read_text())
            self.elapsed_before = float(c["seconds"])
            self.seconds = {str(k): float(v) for k, v in c["stage_seconds"].items()}
            self.sessions = int(c["sessions"]) + 1
            self.marks = {str(k): float(v) for k, v in c["marks"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IncompatibleError(
                f"out: {f} is not a run's clock ({e!r}); remove it to restart the clock"
            ) from e

    def stage_config(self, cfg: Any, seed_offset: int = 0) -> Any:
        """A stage's config with the run's settings written in (seed, progress; the device for
        the policy trainer)."""
        kw: dict[str, Any] = {"seed": self.seed + seed_offset, "progress": self.progress}
        if isinstance(cfg, TrainConfig):
            kw["device"] = str(self.device)
        return dataclasses.replace(cfg, **kw)
