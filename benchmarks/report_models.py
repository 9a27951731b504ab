"""Markdown tables from a `bench_models.py` result: each deployed case against the best static time of the same run.

Run: ``python benchmarks/report_models.py benchmarks/results/bench_models_h100_<commit>.json``; with ``--summary A.json
B.json ...``, one table per model: each case's best CUDA-graph time (tuned where measured) at every batch size
(``--summary --hardware SPEC ...``: the predictor's ratio for CUDA-graph replays on a calibrated spec).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def report(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    meta, rows = data["meta"], [r for r in data["results"] if "ms" in r]
    args = meta["args"]
    # runs made before the option existed compiled with dynamic shapes
    compiled = (f"block function compiled with {args.get('compile_shapes', 'dynamic')} shapes"
                if args.get("compile", True) else "no torch.compile")
    lines = [f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}, commit {meta['commit']}; bf16, "
             f"channels_last, {compiled}, medians of CUDA-event timings; ratio = time / best static time of the "
             "same run; predicted ratio = `laudnet.latency.predict_model`, dynamic / static network (both as CUDA "
             "graphs on the H100-calibrated spec where the run recorded it, else the `h100` preset with eager "
             "launches).", ""]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["batch"])].append(r)
    for (model, batch), rs in groups.items():
        static = {r["variant"]: r["ms"] for r in rs if r["kind"] == "static"}
        best_name = min(static, key=static.get)
        best = static[best_name]
        lines += [f"**{model}, batch {batch}** — static: " + ", ".join(f"{k} {v:.2f} ms" for k, v in static.items())
                  + f"; best: {best_name}", "",
                  "| paradigm | rate | FLOPs ratio | deployed (CUDA graph) | ratio to best static | predicted ratio "
                  "| eager | rel. error |",
                  "|---|---|---|---|---|---|---|---|"]
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
                + _fmt_prediction(any_row)
                + (f"{eager['ms']:.2f} ms | " if eager else "— | ")
                + f"{_fmt_error(any_row['rel_error'])} |"
            )
        lines.append("")
        lines += _masker_table(cases)
        lines += _tuned_table(cases, best)
        lines += _dense_whole_table(cases, best)
        lines += _conditional_table(cases, best)
    return "\n".join(lines)


def _fmt_prediction(row: dict) -> str:
    pred = row.get("predicted_ratio_graphed", row.get("predicted_ratio"))
    return f"{pred:.2f} | " if pred is not None else "— | "


def _fmt_error(rel) -> str:
    return f"{rel:.1e}" if isinstance(rel, int | float) else "failed"


def _masker_table(cases: dict) -> list[str]:
    """CUDA-graph times of the masker bookkeeping paths (`bench_models.py --compare-maskers`), when measured."""
    prefix = "deployed cuda-graph maskers="
    modes = sorted({v[len(prefix):] for variants in cases.values() for v in variants if v.startswith(prefix)})
    if not modes:
        return []
    lines = ["masker bookkeeping (CUDA graph): `fused` is the default, `torch` the previous path", "",
             "| paradigm | rate | fused | " + " | ".join(modes) + " | torch / fused |",
             "|---|---|---|" + "---|" * len(modes) + "---|"]
    for (kind, rate), variants in cases.items():
        if not any(prefix + m in variants for m in modes):
            continue
        times = {"fused": variants.get("deployed cuda-graph")}
        times.update({m: variants.get(prefix + m) for m in modes})
        ms = {k: r["ms"] if r is not None and "ms" in r else None for k, r in times.items()}
        cells = [f"{ms[k]:.2f} ms" if ms[k] is not None else "—" for k in ["fused", *modes]]
        speedup = f"{ms['torch'] / ms['fused']:.2f}x" if ms.get("torch") and ms["fused"] else "—"
        lines.append(f"| {kind} | {rate:g} | " + " | ".join(cells) + f" | {speedup} |")
    return [*lines, ""]


def _dense_whole_table(cases: dict, best: float) -> list[str]:
    """Every block dense-masked, the network compiled whole (`bench_models.py --dense-whole`), when measured:
    called directly and replayed from a CUDA graph."""
    rows = [(kind, rate, variants) for (kind, rate), variants in cases.items()
            if "ms" in variants.get("dense-masked whole-compile", {})]
    if not rows:
        return []
    lines = ["every block dense-masked, the whole network one compiled graph (`deploy_dense_masked`)", "",
             "| paradigm | rate | compiled | ratio to best static | as a CUDA graph | ratio | rel. error |",
             "|---|---|---|---|---|---|---|"]
    for kind, rate, variants in rows:
        r, g = variants["dense-masked whole-compile"], variants.get("dense-masked whole-compile cuda-graph", {})
        graph = f"{g['ms']:.2f} ms | **{g['ms'] / best:.2f}**" if "ms" in g else "— | —"
        lines.append(f"| {kind} | {rate:g} | {r['ms']:.2f} ms | {r['ms'] / best:.2f} | {graph} | "
                     f"{_fmt_error(r.get('rel_error'))} |")
    return [*lines, ""]


def _conditional_table(cases: dict, best: float) -> list[str]:
    """The deployed and tuned networks captured with conditional CUDA-graph nodes (`--conditional`), when measured."""
    names = ("deployed cuda-graph", "deployed cuda-graph conditional", "deployed tuned cuda-graph",
             "deployed tuned cuda-graph conditional")
    rows = [(kind, rate, variants) for (kind, rate), variants in cases.items()
            if any("ms" in variants.get(n, {}) for n in names[1::2])]
    if not rows:
        return []
    lines = ["conditional CUDA-graph nodes (a block no sample executes launches nothing)", "",
             "| paradigm | rate | all sparse | conditional | tuned | tuned, conditional | best / best static |",
             "|---|---|---|---|---|---|---|"]
    for kind, rate, variants in rows:
        ms = [variants.get(n, {}).get("ms") for n in names]
        cells = " | ".join(f"{m:.2f} ms" if m is not None else "—" for m in ms)
        timed = [m for m in ms if m is not None]
        lines.append(f"| {kind} | {rate:g} | {cells} | **{min(timed) / best:.2f}** |")
    return [*lines, ""]


def _tuned_table(cases: dict, best: float) -> list[str]:
    """Per-block paths chosen by measurement (`bench_models.py --tune`), when measured."""
    rows = [(kind, rate, variants) for (kind, rate), variants in cases.items()
            if "deployed tuned cuda-graph" in variants]
    if not rows:
        return []
    lines = ["per-block paths chosen by measurement (`tune_paths(graphed=True)`), CUDA graph", "",
             "| paradigm | rate | all sparse | tuned | dense blocks | tuned / best static |",
             "|---|---|---|---|---|---|"]
    for kind, rate, variants in rows:
        graph, tuned = variants.get("deployed cuda-graph"), variants["deployed tuned cuda-graph"]
        lines.append(f"| {kind} | {rate:g} | " + (f"{graph['ms']:.2f} ms" if graph else "—")
                     + f" | {tuned['ms']:.2f} ms | {tuned['dense_blocks']} of {tuned['blocks']} | "
                     f"**{tuned['ms'] / best:.2f}** |")
    return [*lines, ""]


def graphed_prediction(row: dict, hardware: str) -> float | None:
    """The predictor's dynamic/static ratio for a result row, both networks as CUDA graphs on a calibrated spec."""
    from laudnet.latency import predict_model

    gran = row.get("granularity")
    gran = "-".join(map(str, gran)) if row["kind"] in ("spatial", "channel") and gran else None
    return predict_model(row["model"], row["kind"], density=row["rate"], granularity=gran, hardware=hardware,
                         batch=row["batch"], graphed=True).ratio


def best_cases(paths: list[str], hardware: str | None = None) -> dict:
    """Per model: the batch sizes, each batch's best static time, and per case (paradigm, rate) and batch the
    fastest CUDA-graph form (all sparse or tuned) as a dict with ``ms``, ``ratio`` (to that best static time),
    ``flops_ratio`` and ``predicted`` (the recorded prediction — for CUDA graphs where the run recorded it — or,
    with `hardware`, a calibrated spec, recomputed for CUDA-graph replays)."""
    out: dict = {}
    for path in paths:
        with open(path) as f:
            rows = [r for r in json.load(f)["results"] if "ms" in r]
        for model in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == model]
            best = {}
            for r in mine:
                if r["kind"] == "static":
                    best[r["batch"]] = min(best.get(r["batch"], float("inf")), r["ms"])
            cases: dict = defaultdict(dict)
            for r in mine:
                if r["kind"] != "static" and r["variant"] in ("deployed cuda-graph", "deployed tuned cuda-graph"):
                    old = cases[(r["kind"], r["rate"])].get(r["batch"])
                    if old is None or r["ms"] < old["ms"]:
                        pred = graphed_prediction(r, hardware) if hardware else r.get(
                            "predicted_ratio_graphed", r.get("predicted_ratio"))
                        cases[(r["kind"], r["rate"])][r["batch"]] = dict(
                            ms=r["ms"], ratio=r["ms"] / best[r["batch"]], flops_ratio=r["flops_ratio"], predicted=pred)
            out[model] = dict(batches=list(dict.fromkeys(r["batch"] for r in mine)), best=best, cases=dict(cases))
    return out


def summary(paths: list[str], hardware: str | None = None) -> str:
    """One table per model over all batch sizes of the given results (`best_cases`)."""
    lines = []
    for model, data in best_cases(paths, hardware).items():
        batches, best = data["batches"], data["best"]
        head = " | ".join(f"batch {b} (static {best[b]:.2f} ms) | predicted" for b in batches)
        lines += [f"**{model}**", "", f"| paradigm | rate | FLOPs ratio | {head} |",
                  "|---|---|---|" + "---|---|" * len(batches)]
        for (kind, rate), by_batch in data["cases"].items():
            cells = []
            for b in batches:
                c = by_batch.get(b)
                cells += [f"{c['ms']:.2f} ms (**{c['ratio']:.2f}**)" if c else "—",
                          f"{c['predicted']:.2f}" if c and c["predicted"] is not None else "—"]
            flops = next(iter(by_batch.values()))["flops_ratio"]
            lines.append(f"| {kind} | {rate:g} | {flops:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--summary":  # --summary [--hardware SPEC] A.json B.json ...
        hw = sys.argv[3] if sys.argv[2] == "--hardware" else None
        print(summary(sys.argv[4:] if hw else sys.argv[2:], hw))
    else:
        print(report(sys.argv[1]))
