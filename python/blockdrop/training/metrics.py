"""Training metrics: ``metrics.csv`` (and TensorBoard when installed), appended by rank 0 and cut
back to the resumed step on ``--resume``, so that a resumed run's log equals an uninterrupted one."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from blockdrop.checkpoint import atomic_write_text

__all__ = ["MetricsLog", "FIELDS"]

FIELDS = ("step", "epoch", "split", "loss", "reward", "acc", "blocks", "learned_blocks", "lr", "time")


class MetricsLog:
    """Rows of :data:`FIELDS` in ``out_dir/metrics.csv``; a no-op when ``enabled`` is False."""

    def __init__(self, out_dir: str | Path, enabled: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.csv"
        self.enabled = enabled
        self._tb: Any = None

    def truncate(self, step: int) -> None:
        """Drop the rows after ``step`` (resume)."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            keys = list(rows[0].keys())
            keep = [r for r in rows if int(r["step"]) <= step]
            atomic_write_text(
                self.path,
                ",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in keep),
            )

    def append(self, row: dict[str, Any]) -> None:
        """One row (floats with 6 significant digits); also to TensorBoard if installed."""
        if not self.enabled:
            return
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path.parent / "tb"))
            except Exception:  # tensorboard not installed
                self._tb = False
        if self._tb:
            for k in ("loss", "reward", "acc", "blocks"):
                if isinstance(row.get(k), float):
                    self._tb.add_scalar(f"{row['split']}/{k}", row[k], row["step"])
