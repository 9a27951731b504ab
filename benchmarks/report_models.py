"""Markdown tables from a `bench_models.py` result: each deployed case against the best static time of the same run.

Run: ``python benchmarks/report_models.py benchmarks/results/bench_models_h100_<commit>.json``.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def report(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    meta, rows = data["meta"], [r for r in data["results"] if "ms" in r]
    lines = [f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}, commit {meta['commit']}; bf16, "
             "channels_last, medians of CUDA-event timings; ratio = time / best static time of the same run.", ""]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["batch"])].append(r)
    for (model, batch), rs in groups.items():
        static = {r["variant"]: r["ms"] for r in rs if r["kind"] == "static"}
        best_name = min(static, key=static.get)
        best = static[best_name]
        lines += [f"**{model}, batch {batch}** — static: " + ", ".join(f"{k} {v:.2f} ms" for k, v in static.items())
                  + f"; best: {best_name}", "",
                  "| paradigm | rate | FLOPs ratio | deployed (CUDA graph) | ratio to best static | eager "
                  "| rel. error |",
                  "|---|---|---|---|---|---|---|"]
        cases = defaultdict(dict)
        for r in rs:
            if r["kind"] != "static":
                cases[(r["kind"], r["rate"])][r["variant"]] = r
        for (kind, rate), variants in cases.items():
            graph = variants.get("deployed cuda-graph")
            eager = variants.get("deployed eager")
            any_row = graph or eager
            lines.append(
                f"| {kind} | {rate:g} | {any_row['flops_ratio']:.3f} | "
                + (f"{graph['ms']:.2f} ms | **{graph['ms'] / best:.2f}** | " if graph else "— | — | ")
                + (f"{eager['ms']:.2f} ms | " if eager else "— | ")
                + f"{any_row['rel_error']:.1e} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1]))
