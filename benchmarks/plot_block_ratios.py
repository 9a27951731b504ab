"""The paper's latency-ratio figures, measured: block r_l = dynamic / static against activation rate, per paradigm and
granularity, from the committed H100 block benchmarks (`bench_spatial.py`, `bench_channel.py`).

Run: ``python benchmarks/plot_block_ratios.py --spatial benchmarks/results/bench_spatial_h100_9198376.json
--channel benchmarks/results/bench_channel_h100_run1.json --out benchmarks/results``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def plot_spatial(data: dict, out: Path) -> Path:
    stages = sorted({r["stage"] for r in data["spatial"]})
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.6), sharey=True)
    for ax, stage in zip(axes, stages, strict=True):
        by_s = defaultdict(list)
        for r in data["spatial"]:
            if r["stage"] == stage:
                by_s[r["S"]].append(r)
        for s, rows in sorted(by_s.items()):
            rows.sort(key=lambda r: r["rate"])
            line = ax.plot([r["rate"] for r in rows], [r["r_l_vs_compile"] for r in rows], "o-", label=f"S={s}")[0]
            ax.plot([r["rate"] for r in rows], [r["r_l_syncfree_vs_compile"] for r in rows], "--",
                    color=line.get_color(), alpha=0.6)
        layer = sorted((r for r in data["layer"] if r["stage"] == stage), key=lambda r: r["rate"])
        ax.plot([r["rate"] for r in layer], [r["r_l_as_spatial_vs_compile"] for r in layer], "k^-", label="layer")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"stage {stage}")
        ax.set_xlabel("activation rate")
    axes[0].set_ylabel("r_l vs compiled static block")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"Spatial / layer skipping, {data['device']}, batch {data['batch']}, bf16 "
                 "(solid: index lists given; dashed: sync-free index building included)", fontsize=9)
    fig.tight_layout()
    path = out / "block_ratio_spatial_h100.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_channel(data: dict, out: Path) -> Path:
    blocks = sorted({r["block"] for r in data["blocks"]})
    groups = sorted({r["group_size"] for r in data["blocks"]})
    colors = {g: plt.cm.viridis(i / max(len(groups) - 1, 1)) for i, g in enumerate(groups)}  # one colour per G
    fig, axes = plt.subplots(1, len(blocks), figsize=(3.6 * len(blocks), 3.8), sharey=True)
    for ax, block in zip(axes, blocks, strict=True):
        by_g = defaultdict(list)
        for r in data["blocks"]:
            if r["block"] == block and r.get("r_graph") is not None:
                by_g[r["group_size"]].append(r)
        for g, rows in sorted(by_g.items()):
            rows.sort(key=lambda r: r["rate"])
            ax.plot([r["rate"] for r in rows], [r["r_graph"] for r in rows], "o-", color=colors[g], label=f"G={g}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(block)
        ax.set_xlabel("channel activation rate")
    axes[0].set_ylabel("r_l vs folded cuDNN block (CUDA graphs)")
    handles = [plt.Line2D([], [], color=colors[g], marker="o", label=f"G={g}") for g in groups]
    fig.legend(handles=handles, loc="center right", fontsize=8)
    fig.subplots_adjust(right=0.93)
    fig.suptitle(f"Channel skipping, {data['meta'].get('device', '')}, batch 128, bf16", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.94, 1))
    path = out / "block_ratio_channel_h100.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spatial", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(plot_spatial(_load(args.spatial), out))
    print(plot_channel(_load(args.channel), out))


if __name__ == "__main__":
    main()
