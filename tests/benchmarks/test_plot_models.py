"""benchmarks/plot_models.py draws the committed whole-model runs."""

from helpers import ROOT, load_benchmark

RUNS = [str(ROOT / f"benchmarks/results/bench_models_full_{m}_h200_47df158.json") for m in ("r101", "r50")]


def test_plot_of_the_committed_runs(tmp_path):
    out = load_benchmark("plot_models").plot(RUNS, tmp_path / "models.png",
                                             str(ROOT / "benchmarks/results/h100_calibrated_1e74193.yaml"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_best_cases_take_the_faster_form():
    """Per case and batch, the faster of the all-sparse and tuned graphs, against that batch's best static time."""
    data = load_benchmark("report_models").best_cases(RUNS[:1])["laud_resnet101"]
    assert data["batches"] == [128, 1]
    layer_b1 = data["cases"][("layer", 0.5)][1]
    assert layer_b1["ms"] < 0.7 and abs(layer_b1["ratio"] - layer_b1["ms"] / data["best"][1]) < 1e-12
