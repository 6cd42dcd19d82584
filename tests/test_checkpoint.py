"""Checkpoints survive a kill: a child process saving in a loop is SIGKILLed at random moments,
many times; after each kill the checkpoint on disk must load and be one complete save (its
tensors agree with its metadata), never a torn one."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from _helpers import subprocess_env
from blockdrop.checkpoint import load_checkpoint, read_meta

ROOT = Path(__file__).resolve().parents[1]

_SAVER = r"""
import sys, torch
from blockdrop.checkpoint import save_checkpoint
path, start = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
for i in range(start, start + 10 ** 6):
    # payload and metadata both carry i: a torn write would show a mismatch
    t = {"w": torch.full((256, 1024), float(i)), "b": torch.arange(1000) + i}
    save_checkpoint(path, t, {"step": i})
"""


def test_sigkill_during_save_never_leaves_a_torn_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    env = subprocess_env()
    rng = random.Random(0)
    steps_seen: list[int] = []
    start = 0
    for _ in range(12):
        p = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(path), str(start)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))  # somewhere inside some save
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        if not path.exists():  # killed before the first save finished
            continue
        tensors, meta = load_checkpoint(path)
        i = meta["step"]
        assert read_meta(path)["step"] == i
        assert torch.equal(tensors["w"], torch.full((256, 1024), float(i)))
        assert torch.equal(tensors["b"], torch.arange(1000) + i)
        steps_seen.append(i)
        start = i + 1
        # at most the interrupted save's own temp file per target, nothing foreign
        leftovers = sorted(q.name for q in tmp_path.iterdir() if q.name.startswith("."))
        ours = [n for n in leftovers if re.fullmatch(r"\.last\.(safetensors|json)\.\w+\.tmp", n)]
        assert ours == leftovers, leftovers
        assert sum(n.startswith(".last.safetensors.") for n in ours) <= 1, leftovers
        assert sum(n.startswith(".last.json.") for n in ours) <= 1, leftovers
    assert len(steps_seen) >= 8 and steps_seen == sorted(steps_seen)
