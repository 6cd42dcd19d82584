"""A run's clock (recipes/run.py): the time of the work a run keeps, across resumed sessions.

A fake ``time.time`` makes every duration exact. A stage's time counts once its checkpoint is
written (``Run.checkpointed``, also called from inside a stage by a trainer's own checkpoints);
work after the last checkpoint of a killed session is not counted, and a resumed session adds
its own time to what the clock file holds."""

from __future__ import annotations

import json

import pytest
import torch

from blockdrop.errors import IncompatibleError
from blockdrop.recipes import run as run_mod
from blockdrop.recipes.run import Run, RunPaths


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(run_mod.time, "time", c)
    return c


def _run(out, resume: bool = False) -> Run:
    r = Run(None, RunPaths(out), torch.device("cpu"), 0, False, resume, None, None, {}, print)
    if resume:
        r.resume_clock()
    return r


def _file(out) -> dict:
    return json.loads((out / "clock.json").read_text())


def test_a_killed_session_keeps_the_time_up_to_its_last_checkpoint(tmp_path, clock):
    r = _run(tmp_path)

    def stage_a() -> None:  # 30 s, a trainer checkpoint at 20 s
        clock.now += 20
        r.checkpointed()
        clock.now += 10

    r.timed("a", stage_a)
    c = _file(tmp_path)
    assert c["seconds"] == 20 and c["stage_seconds"] == {"a": 20} and c["sessions"] == 1
    assert r.seconds == {"a": 30}  # in memory the whole stage; on file only what a resume keeps
    clock.now += 5
    r.checkpointed()  # stage a's model written: all of it kept
    assert _file(tmp_path)["stage_seconds"] == {"a": 30} and _file(tmp_path)["seconds"] == 35
    r.timed("b", lambda: setattr(clock, "now", clock.now + 40))  # killed before b's checkpoint
    assert _file(tmp_path)["seconds"] == 35

    clock.now += 1000  # the machine is off between sessions: not counted
    r2 = _run(tmp_path, resume=True)
    assert (r2.elapsed(), r2.seconds, r2.sessions) == (35, {"a": 30}, 2)
    r2.timed("b", lambda: setattr(clock, "now", clock.now + 40))  # b again, whole this time
    r2.checkpointed()
    c = _file(tmp_path)
    assert c["seconds"] == 75 and c["stage_seconds"] == {"a": 30, "b": 40} and c["sessions"] == 2


def test_a_stage_resumed_from_its_own_checkpoint_adds_both_sessions(tmp_path, clock):
    r = _run(tmp_path)

    def killed() -> None:
        clock.now += 15
        r.checkpointed()
        clock.now += 7
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        r.timed("cl", killed)
    assert r._open == []  # the stage is closed even when it raises
    r2 = _run(tmp_path, resume=True)
    r2.timed("cl", lambda: setattr(clock, "now", clock.now + 9))
    r2.checkpointed()
    assert _file(tmp_path)["stage_seconds"] == {"cl": 24}


def test_a_milestone_is_fixed_when_first_reached(tmp_path, clock):
    r = _run(tmp_path)
    clock.now += 12
    assert r.mark("blockdrop") == 12
    clock.now += 30
    assert r.mark("blockdrop") == 12
    r2 = _run(tmp_path, resume=True)
    clock.now += 30
    assert r2.mark("blockdrop") == 12 and r2.elapsed() == 42


@pytest.mark.parametrize("text", ['{"seconds": "soon"}', "not json", '{"seconds": 1}', "[1, 2]"])
def test_a_damaged_clock_is_an_error_naming_the_file(tmp_path, clock, text):
    (tmp_path / "clock.json").write_text(text)
    with pytest.raises(IncompatibleError, match=r"clock\.json is not a run's clock"):
        _run(tmp_path, resume=True)
