"""benchmarks/resumable.py, the unit machinery of pareto.py and detection_results.py: the atomic JSON writer, the
units.json ledger and the budget it corrects, the guard and the exit statuses of `run_units`."""

import argparse
import json
import time

import pytest
import torch
from helpers import ROOT, load_benchmark


@pytest.fixture
def resumable(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return load_benchmark("resumable")


def _ctx(resumable, tmp_path, deadline=None, **args):
    args = argparse.Namespace(**dict(dict(stage="all"), **args))
    return resumable.UnitContext(args, tmp_path, torch.device("cpu"), deadline)


def test_write_json_is_atomic(resumable, tmp_path):
    path = tmp_path / "sub" / "data.json"
    resumable.write_json(path, {"a": 1})
    assert resumable.read_json(path) == {"a": 1}
    with pytest.raises(TypeError):  # fails while serialising: the old file stays whole, no partial file
        resumable.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.json"]
    resumable.write_json(path, {"a": tmp_path / "x"}, default=str)  # `default` for values JSON has no type for
    assert resumable.read_json(path) == {"a": str(tmp_path / "x")}
    assert not list(path.parent.glob("*.tmp"))
    assert resumable.read_json(tmp_path / "missing.json") is None


def test_write_json_failing_write_leaves_no_partial_file(resumable, tmp_path, monkeypatch):
    path = tmp_path / "data.json"
    resumable.write_json(path, [1, 2, 3])

    def broken(self, text, *a, **k):  # the disk fills half-way through the write
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(type(path), "write_text", broken)
    with pytest.raises(OSError):
        resumable.write_json(path, list(range(100)))
    monkeypatch.undo()
    assert resumable.read_json(path) == [1, 2, 3]  # the old content, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]  # and no partial .tmp left behind


def test_ledger_scales_later_estimates(resumable, tmp_path):
    ctx = _ctx(resumable, tmp_path, deadline=time.time() + 100)
    assert ctx.correction("train") == 1.0
    ctx.record("a", "train", seconds=30.0, estimate_s=10.0)  # took 3x its estimate
    ledger = json.loads((tmp_path / "units.json").read_text())
    assert ledger == {"a": dict(kind="train", seconds=30.0, estimate_s=10.0, device="cpu")}
    assert ctx.correction("train") == pytest.approx(3.0)
    assert ctx.correction("time") == 1.0  # per kind
    assert ctx.check_budget("b", "time", 40.0) == 40.0  # 40 s of 100 left: fits
    with pytest.raises(resumable.BudgetReached, match="b needs ~120 s"):
        ctx.check_budget("b", "train", 40.0)  # 40 x 3 = 120 s > 100 s
    ctx.record("fast", "time", seconds=1.0, estimate_s=10.0)
    assert ctx.correction("time") == 0.75  # never below 0.75
    assert _ctx(resumable, tmp_path).check_budget("c", "train", 1e9) == 1e9  # no deadline: no budget


def test_run_units_exit_statuses(resumable, tmp_path, capsys):
    def report(ctx):
        return {"complete": complete}

    def over(ctx):
        def step():
            raise resumable.BudgetReached("x needs ~9 s, 1 s left")
        return step

    ran = []
    complete = True
    ctx = _ctx(resumable, tmp_path)
    assert resumable.run_units(ctx, [("a", lambda: ran.append("a"))], report, time.time()) == 0
    ctx = _ctx(resumable, tmp_path)
    assert resumable.run_units(ctx, [("b", over(ctx)), ("c", lambda: ran.append("c"))], report, time.time()) == 3
    assert ran == ["a"] and "stopping before x needs" in capsys.readouterr().out
    ctx = _ctx(resumable, tmp_path)
    assert resumable.run_units(ctx, [("d", lambda: 1 / 0), ("e", lambda: ran.append("e"))], report, time.time()) == 1
    assert ran == ["a", "e"] and ctx.errors == {"d": "ZeroDivisionError: division by zero"}
    complete = False
    assert resumable.run_units(_ctx(resumable, tmp_path), [], report, time.time()) == 3
    assert resumable.run_units(_ctx(resumable, tmp_path, stage="train"), [], report, time.time()) == 0


def test_input_checks(resumable, tmp_path):
    with pytest.raises(resumable.InputError, match="--budget-minutes must be > 0"):
        resumable.check_budget_minutes(0)
    resumable.check_budget_minutes(None)
    with pytest.raises(resumable.InputError, match="train-images-idx3-ubyte"):
        resumable.check_data_root(tmp_path)
    with pytest.raises(SystemExit) as done:
        resumable.fail("x.py", "bad")
    assert done.value.code == 2


def test_trained_and_timed(resumable, tmp_path):
    for name in ("a", "b"):
        resumable.write_json(tmp_path / "runs" / name / "result.json", {"unit": name})
    resumable.write_json(tmp_path / "time" / "a.json", {"ms": 1.0})
    found, complete = resumable.trained_and_timed(tmp_path, ["a", "b", "c"])
    assert found == [("a", {"unit": "a"}, {"ms": 1.0}), ("b", {"unit": "b"}, None)] and not complete
    resumable.write_json(tmp_path / "time" / "b.json", {"ms": 2.0})
    assert resumable.trained_and_timed(tmp_path, ["a", "b"])[1]
