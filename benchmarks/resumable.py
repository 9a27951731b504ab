"""The resumable, time-budgeted unit machinery shared by ``pareto.py`` and ``detection_results.py`` (a helper module,
no ``main``).

A run is a list of units of work (a training, an evaluation, a timing); each unit writes its own result file and is
skipped when that file exists, so a rerun of the same command continues where the last one stopped. What this module
provides:

* ``write_json`` / ``read_json``: JSON written atomically (a ``.tmp`` sibling, then a rename: a crash or a full disk
  never leaves a partial file for the next call to trust) and read back (None when absent);
* ``InputError`` (bad input, exit status 2, through the script's ``fail``), ``BudgetReached`` (the next unit does not
  fit ``--budget-minutes``, exit status 3), ``fail``, ``check_budget_minutes``, ``check_data_root`` (Fashion-MNIST's
  IDX files);
* ``UnitContext``: the ledger ``units.json`` (each unit's seconds against its estimate, and the device), the deadline,
  and the budget check that scales a unit's estimate by the measured/estimated ratio of the units of its kind already
  done (at least 0.75); ``guard`` records a failing unit's error (exit status 1) and lets the other units go on;
* ``start`` (the device, the deadline, the output folder and the context) and ``run_units`` (the units in order, the
  report, the exit status: 0 complete, 1 a unit failed, 3 stopped by the budget or incomplete).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPORT_RESERVE_S = 20  # the deadline leaves this much of --budget-minutes for the report


class InputError(Exception):
    """Bad input: reported as one line, exit status 2."""


class BudgetReached(Exception):
    """The next unit does not fit --budget-minutes (or a training run was stopped at the deadline)."""


def fail(script: str, message: str) -> None:
    """One line on stderr (``<script>: error: <message>``, as argparse's), exit status 2."""
    print(f"{script}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_budget_minutes(budget_minutes: float | None) -> None:
    if budget_minutes is not None and budget_minutes <= 0:
        raise InputError(f"--budget-minutes must be > 0, got {budget_minutes}")


def check_data_root(data_root: str | Path) -> None:
    """A folder with Fashion-MNIST's four IDX files (each plain or .gz)."""
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"data root {root} does not exist (or is not a folder)")
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        if not any((root / f"{stem}{ext}").is_file() for ext in ("", ".gz")):
            raise InputError(f"data root {root} has no {stem}[.gz] (Fashion-MNIST's IDX files)")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def write_json(path: Path, data: Any, default: Callable[[Any], Any] | None = None) -> None:
    """`data` as indented JSON at `path`, atomically: written to ``<path>.tmp`` and renamed over `path`, so `path` is
    either its old content or the whole new one (a failed write removes its ``.tmp``). `default`: json.dumps's, for
    values JSON has no type for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=default))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def trained_and_timed(out: Path, names: list[str]) -> tuple[list[tuple[str, dict, dict | None]], bool]:
    """Each unit's training result (``runs/<name>/result.json``) and timing (``time/<name>.json``, None if not timed
    yet), for the units that have a result; and whether every unit has both."""
    found, complete = [], True
    for name in names:
        unit, timing = read_json(out / "runs" / name / "result.json"), read_json(out / "time" / f"{name}.json")
        complete = complete and unit is not None and timing is not None
        if unit is not None:
            found.append((name, unit, timing))
    return found, complete


@dataclass
class UnitContext:
    """A run's state: its arguments, output folder, device and deadline (None: no budget), the ledger of units done
    (``units.json``: name -> kind, seconds, estimate_s, device) and the errors of units that failed."""

    args: argparse.Namespace
    out: Path
    device: torch.device
    deadline: float | None
    units: dict[str, dict] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def guard(self, name: str, fn: Callable[[], Any]) -> Any:
        """fn(); an error is printed and recorded (the JSON's ``errors``, exit status 1) and the other units go on:
        the machine and its files stay only while it is held, so one failing unit must not cost the others."""
        try:
            return fn()
        except (BudgetReached, KeyboardInterrupt):
            raise
        except Exception as e:
            traceback.print_exc()
            self.errors[name] = f"{type(e).__name__}: {str(e)[:600]}"
            print(f"error in {name}: {self.errors[name]}; going on with the other units", flush=True)
            self.after_error()
            return None

    def after_error(self) -> None:
        """Called after a unit failed (a script frees what the unit held)."""

    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name

    def correction(self, kind: str) -> float:
        """Measured over estimated seconds of the units of `kind` in the ledger (1 without any; at least 0.75)."""
        done = [u for u in self.units.values() if u.get("kind") == kind and u.get("estimate_s")]
        if not done:
            return 1.0
        return max(0.75, sum(u["seconds"] for u in done) / sum(u["estimate_s"] for u in done))

    def check_budget(self, name: str, kind: str, estimate_s: float) -> float:
        """Raises BudgetReached when `estimate_s` (corrected by the measurements so far) would pass the deadline."""
        if self.deadline is None:
            return estimate_s
        need = estimate_s * self.correction(kind)
        left = self.deadline - time.time()
        if need > left:
            raise BudgetReached(f"{name} needs ~{need:.0f} s, {max(left, 0):.0f} s left")
        return estimate_s

    def record(self, name: str, kind: str, seconds: float, estimate_s: float) -> None:
        """A unit done: into the ledger, written at once (the next call's estimates use it)."""
        self.units[name] = dict(kind=kind, seconds=round(seconds, 1), estimate_s=round(estimate_s, 1),
                                device=device_name(self.device))
        write_json(self.out / "units.json", self.units)


def start(args: argparse.Namespace, context: Callable[..., UnitContext],
          fail: Callable[[str], None]) -> tuple[UnitContext, float]:
    """The context of a call (its ledger read back from ``<out>/units.json``) and the time it started. The device:
    the CPU for ``--smoke``, else CUDA (``--stage report`` runs anywhere; otherwise no CUDA is `fail`)."""
    t_start = time.time()
    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif args.stage == "report":
        device = torch.device("cpu")
    else:
        fail("needs a CUDA device (or --smoke; --stage report runs anywhere)")
    deadline = t_start + 60 * args.budget_minutes - REPORT_RESERVE_S if args.budget_minutes else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return context(args, out, device, deadline, units=read_json(out / "units.json") or {}), t_start


def run_units(ctx: UnitContext, steps: list[tuple[str, Callable[[], Any]]], report: Callable[[Any], dict],
              t_start: float, show_times: bool = False) -> int:
    """Each step under ``ctx.guard`` until the budget stops them, then ``report(ctx)`` (a dict with ``complete``);
    the exit status: 1 a unit failed, 3 the budget stopped the steps (or the run is incomplete), else 0."""
    stopped = None
    try:
        for name, step in steps:
            t0 = time.time()
            ctx.guard(name, step)
            if show_times:
                print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    except BudgetReached as e:
        stopped = str(e)
        print(f"budget: stopping before {stopped}; rerun the same command to continue", flush=True)
    data = report(ctx)
    print(f"total {time.time() - t_start:.0f} s", flush=True)
    if ctx.errors:
        print(f"errors: {json.dumps(ctx.errors, indent=1)}", flush=True)
        return 1
    if stopped is not None:
        return 3
    return 0 if data["complete"] or ctx.args.stage != "all" else 3
