"""The README's quick start runs as printed, and its results match the per-image oracle."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from _helpers import oracle, tol

README = Path(__file__).resolve().parents[1] / "README.md"


def _quick_start() -> str:
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README: no python block under '## Quick start'"
    return m.group(1)


def test_quick_start_runs_and_matches_the_oracle():
    code = _quick_start()
    # the lines that need files the reader brings (a trained run, an official checkpoint) stop here
    runnable = code[: code.index("net = blockdrop.load(")]
    assert "dynamic_forward" in runnable
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(runnable, str(README), "exec"), ns)
    model, x, policy, logits = ns["model"], ns["x"], ns["policy"], ns["logits"]
    with torch.no_grad():
        ref = oracle(model.double(), x.double(), policy).float()
    assert logits.shape == (x.shape[0], 10)
    torch.testing.assert_close(logits, ref, atol=tol(ref), rtol=0)
    # capacity mode: block k on the 80 images with the highest scores[:, k]
    scores, fixed = ns["scores"], ns["fixed"]
    top = torch.zeros_like(policy)
    for k in range(model.num_blocks):
        top[scores[:, k].argsort(descending=True)[:80], k] = True
    with torch.no_grad():
        ref_fixed = oracle(model, x.double(), top).float()
    torch.testing.assert_close(fixed, ref_fixed, atol=tol(ref_fixed), rtol=0)
    # the lines that need files name real public functions
    import blockdrop

    assert callable(blockdrop.load) and callable(blockdrop.interop.load_official)
