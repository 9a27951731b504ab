"""Whole-model latency ratio against FLOPs ratio, from `bench_models.py` results: one panel per model and batch size.

Each paradigm's cases (the fastest CUDA-graph form, all sparse or tuned, `report_models.best_cases`) as measured
points joined by a line, the latency predictor's ratios for the same cases dashed, and the line ratio = FLOPs ratio
(what skipping would give if time followed the multiply-adds) for reference. Below 1: faster than the best static
network of the same run.

    python benchmarks/plot_models.py benchmarks/results/bench_models_full_r101_h200_47df158.json \\
        benchmarks/results/bench_models_full_r50_h200_47df158.json \\
        --hardware benchmarks/results/h100_calibrated_1e74193.yaml --out benchmarks/results/models_h200_47df158.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from report_models import best_cases  # noqa: E402

COLORS = {"layer": "tab:blue", "channel": "tab:orange", "spatial": "tab:green"}


def plot(paths: list[str], out: Path, hardware: str | None = None) -> Path:
    data = best_cases(paths, hardware)
    panels = [(model, b) for model, d in data.items() for b in d["batches"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), sharey=True, squeeze=False)
    for ax, (model, batch) in zip(axes[0], panels, strict=True):
        d = data[model]
        for kind in dict.fromkeys(k for k, _ in d["cases"]):
            pts = sorted((c[batch]["flops_ratio"], c[batch]["ratio"], c[batch]["predicted"])
                         for (k, _), c in d["cases"].items() if k == kind and batch in c)
            color = COLORS.get(kind)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=kind)
            pred = [(p[0], p[2]) for p in pts if p[2] is not None]
            if pred:
                ax.plot(*zip(*pred, strict=True), "--", color=color, alpha=0.5)
        ax.plot([0, 1], [0, 1], ":", color="gray", label="ratio = FLOPs ratio")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(f"{model}, batch {batch} (static {d['best'][batch]:.2f} ms)", fontsize=9)
        ax.set_xlabel("FLOPs ratio")
        ax.set_xlim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("latency / best static (dashed: predicted)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="bench_models.py result JSON files")
    parser.add_argument("--hardware", help="a calibrated latency spec: predictions for CUDA-graph replays")
    parser.add_argument("--out", type=Path, required=True, help="PNG path")
    args = parser.parse_args()
    print(f"wrote {plot(args.results, args.out, args.hardware)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
