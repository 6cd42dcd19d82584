"""The docs cannot drift from what they describe.

1. **docs/API.md is generated** from the docstrings (``scripts/gen_api.py``) and equals what the
   script writes now.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ API.md

def test_api_md_is_generated_from_the_docstrings():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "scripts" / "gen_api.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    committed = (ROOT / "docs" / "API.md").read_text()
    assert committed == gen.generate(), "docs/API.md is out of date: run python scripts/gen_api.py"
