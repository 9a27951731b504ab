"""benchmarks/roofline_layer.py: work and traffic per op, and the tables from committed results."""

import pytest
from helpers import ROOT, load_benchmark

RESULTS = ROOT / "benchmarks" / "results"


def _load():
    return load_benchmark("roofline_layer")


def test_op_work_counts_multiply_adds_and_bytes():
    r = _load()
    flops, nbytes = r.op_work(3, "conv3x3", 60)  # 14x14 maps, width 256: 9*256 inputs per output
    rows = 60 * 14 * 14
    assert flops == 2 * rows * 9 * 256 * 256
    assert nbytes == 2 * (rows * 256 + rows * 256 + 9 * 256 * 256)
    _, plain = r.op_work(1, "conv1", 10)
    _, with_residual = r.op_work(1, "conv3+add", 10)
    assert with_residual == plain + 2 * 10 * 56 * 56 * 256  # 64->256 reads the residual besides writing
    with pytest.raises(ValueError):
        r.op_work(1, "conv7x7", 1)


def test_tables_from_committed_results(capsys):
    r = _load()
    assert r.main([str(RESULTS / "bench_layer_kernels_h200_37af28c.json"),
                   "--models", str(RESULTS / "bench_models_tuned_r101_h200_56fa110.json")]) == 0
    out = capsys.readouterr().out
    kernel_rows = [line for line in out.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(kernel_rows) == 12  # 4 stages x 3 ops
    static = next(line for line in out.splitlines() if line.startswith("| static"))
    assert "| 7.32 | 273 | 28 |" in static  # 2 * 7.80 GMAC * 128 images in 7.32 ms
