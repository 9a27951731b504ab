"""PNG plots of the granularity analysis: one figure per stage, ratio against activation rate per S and per G."""

from __future__ import annotations

from pathlib import Path

from laudnet.latency.granularity import GranularityReport


def plot_granularity(report: GranularityReport, out_dir: str | Path) -> list[Path]:
    """Write `<model>_<hardware>_stage<k>.png` for every stage; returns the paths.

    Left panel: spatial skipping, one line per patch size S; right panel: channel skipping, one line per group size
    G. Layer skipping is the dashed black line on both, and the ratio-1 line marks break-even.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stage in sorted({c.stage for c in report.curves}):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        layer = report.stage_curves(stage, "layer")[0]
        for ax, kind, label in ((axes[0], "spatial", "S"), (axes[1], "channel", "G")):
            for c in report.stage_curves(stage, kind):
                ax.plot(c.rates, c.ratios, marker="o", markersize=3, label=f"{label}={c.granularity}")
            ax.plot(layer.rates, layer.ratios, "k--", label="layer")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_xlabel("activation rate")
            ax.set_title(f"{kind} skipping")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("latency ratio (dynamic / static)")
        fig.suptitle(f"{report.model}, stage {stage + 1}: {report.hardware} ({report.precision}), batch {report.batch}"
                     + (f", compat {report.compat}" if report.compat else ""))
        fig.tight_layout()
        path = out_dir / f"{report.model}_{report.hardware}_stage{stage + 1}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
