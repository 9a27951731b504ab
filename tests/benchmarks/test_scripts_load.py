"""Every benchmark script imports and parses its arguments on a CPU machine: a broken import or option in a GPU-only
script is found here, not in a device run. Every script is either such an entry point or a listed helper module, and
every script with a ``--smoke`` mode has a test that runs it."""

import ast
import sys
from pathlib import Path

import pytest
from helpers import ROOT, load_benchmark

BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))

# Scripts without a `main(argv)`: what each is for. Anything else must have a `main` that shows its help.
HELPERS = {
    "report_models": "markdown tables from bench_models results, run on the files given (sys.argv, no options)",
    "resumable": "the resumable, time-budgeted unit machinery (atomic JSON, units.json ledger, budget, exit codes) "
                 "shared by pareto and detection_results",
}


def _source(name: str) -> str:
    return (BENCHMARKS / f"{name}.py").read_text()


def _has_main(name: str) -> bool:
    tree = ast.parse(_source(name))
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def _has_smoke_mode(name: str) -> bool:
    return '"--smoke"' in _source(name)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports_and_shows_its_help(name, monkeypatch, capsys):
    if name in ("bench_vit", "profile_vit", "train_vit_targets", "bench_fastest"):
        pytest.importorskip("timm")
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their siblings
    module = load_benchmark(name)
    main = getattr(module, "main", None)
    if name in HELPERS:
        assert main is None, f"benchmarks/{name}.py now has a main(): remove it from HELPERS so its help is tested"
        return
    assert callable(main), f"benchmarks/{name}.py has no main(): give it one, or list it in HELPERS with its purpose"
    monkeypatch.setattr(sys, "argv", [str(Path(module.__file__).name), "--help"])
    with pytest.raises(SystemExit) as done:
        main(["--help"]) if _takes_argv(main) else main()
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _takes_argv(main) -> bool:
    return main.__code__.co_argcount > 0


def test_every_script_is_covered():
    """Without importing the scripts (so it holds where timm or a GPU is missing): each one has a `main` or is a
    listed helper, and each `--smoke` mode is run by a test under tests/benchmarks/ (one that names the script and
    passes ``--smoke``)."""
    assert "bench_models" in SCRIPTS
    assert not set(HELPERS) - set(SCRIPTS), f"HELPERS lists missing scripts: {sorted(set(HELPERS) - set(SCRIPTS))}"
    entry_points = [name for name in SCRIPTS if name not in HELPERS]
    no_main = [n for n in entry_points if not _has_main(n)]
    assert not no_main, f"scripts with no main() and not in HELPERS: {no_main}"
    listed_with_main = [n for n in HELPERS if _has_main(n)]
    assert not listed_with_main, f"HELPERS lists scripts that have a main(): {listed_with_main}"

    tests = {p: p.read_text() for p in (ROOT / "tests" / "benchmarks").glob("test_*.py") if p != Path(__file__)}
    smoke = [name for name in SCRIPTS if _has_smoke_mode(name)]
    assert smoke, "no script has a --smoke mode: the check below would pass vacuously"
    untested = [name for name in smoke
                if not any(name in text and '"--smoke"' in text for text in tests.values())]
    assert not untested, f"scripts whose --smoke mode no test in tests/benchmarks/ runs: {untested}"
