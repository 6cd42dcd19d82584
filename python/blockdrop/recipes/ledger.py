"""How often a test set has been evaluated: a ledger on this machine, so that every report can
say how many times its test set was used before (a test set evaluated many times while a recipe
was developed is no longer a clean test).

The ledger is a JSON file (``$BLOCKDROP_TEST_LEDGER``, default
``~/.cache/blockdrop/test_ledger.json``) mapping a test set's key to its uses. The key of a file
is its SHA-256 (the same data under another name counts as the same test set); of a folder, its
resolved path; of data given in memory, its ``source`` description.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from blockdrop.checkpoint import atomic_write_text

__all__ = ["ledger_path", "test_set_key", "record_test_use"]


def ledger_path() -> Path:
    """Where the ledger lives (see the module docstring)."""
    env = os.environ.get("BLOCKDROP_TEST_LEDGER")
    return Path(env) if env else Path.home() / ".cache" / "blockdrop" / "test_ledger.json"


def test_set_key(source: Any) -> str:
    """The ledger key of a test set given as a path (file: ``sha256:<hex>``; folder:
    ``path:<resolved>``) or as loaded data (``source:<its description>``)."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source).expanduser()
        if p.is_file():
            h = hashlib.sha256()
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return f"sha256:{h.hexdigest()}"
        return f"path:{p.resolve()}"
    return f"source:{getattr(source, 'source', source)}"


def record_test_use(source: Any) -> dict[str, Any]:
    """Count one more evaluation of the test set ``source``; returns ``{"key", "uses"}`` (uses
    including this one). An unreadable ledger starts afresh (its count is then a lower bound)."""
    key, path = test_set_key(source), ledger_path()
    try:
        book = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(book, dict):
            book = {}
    except (OSError, json.JSONDecodeError):
        book = {}
    book[key] = int(book.get(key, 0)) + 1
    atomic_write_text(path, json.dumps(book, indent=1, sort_keys=True) + "\n")
    return {"key": key, "uses": book[key], "ledger": str(path)}
