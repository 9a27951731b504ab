"""Per-epoch metrics: a CSV file that survives resumption, and an optional TensorBoard writer.

The CSV has one row per epoch with an ``epoch`` column first; the header comes from the first row's keys. Logging an
epoch that is already in the file (a run resumed from an earlier checkpoint) replaces that row and drops the rows
after it, which were produced by the lost part of the interrupted run, so the file never holds two rows for an epoch.
Rewrites go through a temporary file and ``os.replace``.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric tensors must hold one value, got shape {tuple(value.shape)}")
        return value.item()
    return value


class MetricsLogger:
    """Write per-epoch metrics to ``run_dir/metrics.csv`` and, optionally, TensorBoard.

    Args:
        run_dir: the run folder.
        tensorboard: also write TensorBoard events under ``run_dir/tensorboard`` if the package is installed (a
            warning says so when it is not).
        enabled: False on non-main DDP ranks: every call is then a no-op.
        filename: name of the CSV file.
    """

    def __init__(
        self, run_dir: str | os.PathLike, tensorboard: bool = False, enabled: bool = True, filename: str = "metrics.csv"
    ) -> None:
        self.path = Path(run_dir) / filename
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn(
                    "tensorboard logging was requested but the tensorboard package is not installed "
                    "(pip install tensorboard); writing the CSV only",
                    stacklevel=2,
                )
            else:
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def read(self) -> list[dict[str, str]]:
        """Rows already in the CSV (values as strings), oldest first."""
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def log(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Record the metrics of ``epoch`` (floats, ints, strings or one-element tensors)."""
        if not self.enabled:
            return
        row = {"epoch": epoch, **{k: _scalar(v) for k, v in metrics.items() if k != "epoch"}}
        rows = self.read()
        fields = list(rows[0].keys()) if rows else list(row)
        kept = [r for r in rows if int(r["epoch"]) < epoch]
        new_keys = [k for k in row if k not in fields]
        if len(kept) == len(rows) and not new_keys:
            # The common case: append one line.
            with self.path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                if not rows:
                    writer.writeheader()
                writer.writerow(row)
        else:
            self._rewrite(fields + new_keys, [*kept, row])
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, epoch)
            self.writer.flush()

    def _rewrite(self, fields: list[str], rows: list[Mapping[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
