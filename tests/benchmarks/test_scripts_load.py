"""Every benchmark script imports and parses its arguments on a CPU machine: a broken import or option in a GPU-only
script is found here, not in a device run."""

import sys
from pathlib import Path

import pytest
from helpers import ROOT, load_benchmark

SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports_and_shows_its_help(name, monkeypatch, capsys):
    if name in ("bench_vit", "profile_vit", "train_vit_targets", "bench_fastest"):
        pytest.importorskip("timm")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the scripts import their siblings
    module = load_benchmark(name)
    main = getattr(module, "main", None)
    if main is None:  # a report helper with its own entry point
        return
    monkeypatch.setattr(sys, "argv", [str(Path(module.__file__).name), "--help"])
    with pytest.raises(SystemExit) as done:
        main(["--help"]) if _takes_argv(main) else main()
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _takes_argv(main) -> bool:
    return main.__code__.co_argcount > 0


def test_every_script_is_covered():
    assert len(SCRIPTS) > 10 and "bench_models" in SCRIPTS
