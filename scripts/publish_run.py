"""Publish a finished ``blockdrop reproduce`` run as committed results: its ``report.json`` (with
how the run was made) and ``report.md`` and ``tradeoff.png`` under ``benchmarks/results/fidelity/``.

    python scripts/publish_run.py runs/quick cpu-2core-quick-resnet56 \\
        --command "blockdrop reproduce --preset quick ..." --machine "2-core CPU VM, nothing else running"

Paths inside the report that point into the run folder are written relative to it (``runs/quick/...``)
and the data files by their names, so that the committed file names no machine's folders.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


Subs = list[tuple[re.Pattern[str], str]]


def _relative(obj: Any, subs: Subs) -> Any:
    """``obj`` with every machine path in its strings rewritten by ``subs``."""
    if isinstance(obj, str):
        for pattern, replacement in subs:
            obj = pattern.sub(replacement, obj)
        return obj
    if isinstance(obj, dict):
        return {k: _relative(v, subs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, subs) for v in obj]
    return obj


def _path(prefix: str) -> re.Pattern[str]:
    """``prefix`` where it starts a path (not inside a longer one) and ends at a separator."""
    return re.compile(r"(?<![\w./-])" + re.escape(prefix.rstrip("/")) + r"(?=/|[^\w./-]|$)")


def _substitutions(report: dict[str, Any], run: Path) -> Subs:
    """The run folder -> ``runs/NAME``; the folders of its data and weight files -> nothing (file
    names only); the home folder -> ``~``."""
    sources = [str(report.get(k, "")) for k in ("train_data", "val_data", "test_data", "weights")]
    sources += [str(a.get("data", "")) for a in report.get("also_test", [])]
    dirs = {str(Path(s.split(" (")[0]).parent) for s in sources if s.startswith("/")}
    subs: Subs = [(_path(str(run)), "runs/" + run.name)]
    subs += [(re.compile(_path(d).pattern + "/"), "") for d in sorted(dirs, key=len, reverse=True)]
    return subs + [(_path(str(Path.home())), "~")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="the run's --out folder")
    ap.add_argument("name", help="results file name (no suffix)")
    ap.add_argument("--command", required=True, help="the command line that made the run")
    ap.add_argument("--machine", required=True, help="the machine and what else ran on it")
    ap.add_argument("--note", default="", help="anything a reader must know (e.g. a rerun)")
    a = ap.parse_args()
    run = a.run.resolve()
    report = json.loads((run / "report.json").read_text())
    subs = _substitutions(report, run)
    report = _relative(report, subs)
    report["run"] = {"command": a.command, "machine": a.machine, "note": a.note}
    out = ROOT / "benchmarks" / "results" / "fidelity" / a.name
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    md = _relative((run / "report.md").read_text(), subs)
    head = f"Command: `{a.command}`; {a.machine}.{(' ' + a.note) if a.note else ''}\n\n"
    title, _, rest = md.partition("\n\n")
    out.with_suffix(".md").write_text(f"{title}\n\n{head}{rest}")
    shutil.copyfile(run / "tradeoff.png", out.with_suffix(".png"))
    print(f"wrote {out}.{{json,md,png}}")


if __name__ == "__main__":
    main()
