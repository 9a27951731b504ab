"""Predicted against measured block latency on the H100: the latency predictor checked on the engine's kernels.

Reads the committed block benchmarks (`bench_spatial.py` for static, spatial and layer skipping; `bench_channel.py`
for channel skipping), turns every measured block case into the measurement format of
`laudnet.latency.calibrate.compare_blocks` (explicit block geometry, paradigm, granularity S or G, density, batch,
precision and `measured_ms` = the block's time for the whole batch), writes that list, and compares it with the
predictions of each hardware spec given (by default the `h100` datasheet preset and the spec calibrated on the H100).

Which measured variant stands for each paradigm (`PRIMARY`), chosen to match what the predictor composes:

Every variant is a CUDA-graph replay (cases are marked `graphed`: kernels cost the spec's `graph_launch_time` when it
has one). No dynamic variant runs the masker network (masks are imposed; cases marked `masker: false`).

* static: the folded cuDNN block captured as a CUDA graph (`graph_ms` / `static_graph_ms`). The predictor costs one
  kernel per conv plus the residual add, each with a device-side launch time and no host overhead; a graph replay of
  the unfused cuDNN block is that. `torch.compile` fuses the epilogues, which the predictor does not model: reported
  as an alternative.
* spatial: the sync-free path as a CUDA graph (`syncfree_graph_ms`): index building from the coarse mask (patch list
  and conv1 pixel list, on the device) + sparse conv1 on the halo region + gathered 3x3 + 1x1 with scatter-add, i.e.
  the engine's `PatchBlock._forward_patches` (`laudnet/deploy/blocks.py`) with `spatial_conv1="sparse"` (cases marked
  so). The kernels alone with the lists prebuilt (`sparse_conv1_graph_ms`, cases marked `index_lists: false`) are
  reported as an alternative.
* layer: the engine's path, the spatial kernels with one whole-map patch per executing sample (`as_spatial_graph_ms`,
  lists prebuilt: `index_lists: false`), which is what `PatchBlock._forward_patches` runs for a `LayerBlock` and the
  default-mode predictor composes. `index_select` + the cuDNN block on the sub-batch + `rows_add_relu_`
  (`index_select_graph_ms`, the primary variant of the earlier report) is reported as an alternative.
* channel: `channel_index` + the three channel kernels as a CUDA graph with `kmax = w` (`dynamic_graph_ms`), i.e.
  index building included and no host sync. Cases measured in both channel runs are taken from run 2 (the final
  tile configurations); run 1 supplies the rest.

Spatial cases whose patch size does not divide the map (S=4 on the 14x14 stage 3: partial patches) cannot be
expressed to the predictor, which requires S to divide the output size; they are listed as skipped.

    python benchmarks/compare_predictor.py                      # defaults: the committed H100 files
    python benchmarks/compare_predictor.py --hardware h100 --hardware my_spec.yaml --out-dir /tmp/cmp
    laudnet calibrate --hardware h100 --compare benchmarks/results/h100_block_measurements.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from laudnet.latency.blocks import block_cost, spatial_parts
from laudnet.latency.calibrate import _block_of, compare_blocks
from laudnet.latency.geometry import get_geometry
from laudnet.latency.hardware import load_hardware
from laudnet.latency.ops import ZERO, get_op_model

RESULTS = Path(__file__).resolve().parent / "results"
SPATIAL_FILE = RESULTS / "bench_spatial_h100_9198376.json"
CHANNEL_FILES = (RESULTS / "bench_channel_h100_run1.json", RESULTS / "bench_channel_h100_run2.json")
CALIBRATED_SPEC = RESULTS / "h100_calibrated_1e74193.yaml"
MEASUREMENTS_FILE = "h100_block_measurements.json"
# The report of the predictor before it composed blocks as the engine runs them (commit 73760ee): its per-case
# predictions become the "before" columns.
BEFORE_FILE = RESULTS / "predictor_vs_measured_h100_before_73760ee.json"
REPORT_STEM = "predictor_vs_measured_h100"

# paradigm -> measured variant (see the module docstring for why)
PRIMARY = {"static": "cudnn_graph", "spatial": "syncfree_graph", "layer": "as_spatial_graph",
           "channel": "kmax_w_graph"}
ALTERNATIVES = {"static": "compiled_graph", "spatial": "prebuilt_lists_graph", "layer": "index_select_graph"}
_VARIANT_KEYS = {
    ("static", "cudnn_graph"): ("graph_ms", "static_graph_ms"),
    ("static", "compiled_graph"): ("compile_graph_ms", "static_compiled_ms"),
    ("spatial", "syncfree_graph"): ("syncfree_graph_ms",),
    ("spatial", "prebuilt_lists_graph"): ("sparse_conv1_graph_ms",),
    ("layer", "index_select_graph"): ("index_select_graph_ms",),
    ("layer", "as_spatial_graph"): ("as_spatial_graph_ms",),
    ("channel", "kmax_w_graph"): ("dynamic_graph_ms",),
}
PARADIGM_ORDER = ("static", "spatial", "layer", "channel")


# ---- geometry --------------------------------------------------------------------------------------------------------
def _geometry(size: int, cin: int, width: int, cout: int, stride: int) -> dict:
    """Block geometry fields for `compare_blocks`, labelled with the ResNet-50 block of that shape (0-based stage and
    index: a first, projecting block is index 0, a non-first block index 1). ValueError if ResNet-50 has no such
    block, so that a misread benchmark cannot slip through as some other geometry."""
    for b in get_geometry("resnet50").blocks():
        if (b.in_size, b.in_channels, b.width, b.out_channels, b.stride) == (size, cin, width, cout, stride) \
                and b.index <= 1:
            return {"block": f"resnet50 stage {b.stage} block {b.index}", "stage": b.stage, "index": b.index,
                    "in_channels": cin, "out_channels": cout, "width": width, "in_size": size, "stride": stride,
                    "groups": 1, "se_squeeze": 0, "projection": b.projection}
    raise ValueError(f"no ResNet-50 bottleneck with input {size}x{size}, {cin}->{width}->{cout}, stride {stride}")


def _measured(row: dict, paradigm: str, variant: str, source: str) -> float:
    keys = _VARIANT_KEYS.get((paradigm, variant))
    if keys is None:
        raise ValueError(f"unknown variant {variant!r} for paradigm {paradigm!r}")
    for k in keys:
        if row.get(k) is not None:
            value = float(row[k])
            if not value > 0:
                raise ValueError(f"{source}: {k} = {value} is not a positive time in {row}")
            return value
    raise ValueError(f"{source}: none of {keys} in {row}")


def _case(geo: dict, paradigm: str, granularity: int | None, density: float, batch: int, measured_ms: float,
          variant: str, source: str, rate: float | None) -> dict:
    case = {**geo, "paradigm": paradigm, "granularity": granularity, "density": density, "batch": batch,
            "precision": "bf16", "measured_ms": measured_ms, "variant": variant, "rate": rate, "source": source,
            "graphed": variant.endswith("_graph")}  # every variant compared here is timed as CUDA-graph replays
    if paradigm != "static":  # the benchmarks impose the masks: the masker network is not in the timed block
        case["masker"] = False
    if variant in ("prebuilt_lists_graph", "as_spatial_graph"):  # index lists built before the timing
        case["index_lists"] = False
    if paradigm == "spatial":  # both timed spatial variants run conv1 on the union of the halos (pixel list)
        case["spatial_conv1"] = "sparse"
    return case


# ---- conversion ------------------------------------------------------------------------------------------------------
def _check_bf16(dtype: str, source: str) -> None:
    if dtype not in ("bfloat16", "bf16"):
        raise ValueError(f"{source}: expected bf16 measurements, got dtype {dtype!r}")


def spatial_file_measurements(data: dict, source: str, variants: dict[str, str] = PRIMARY,
                              ) -> tuple[list[dict], list[dict]]:
    """Static, spatial and layer-skipping cases of a `bench_spatial.py` result.

    Args:
        data: the parsed JSON (`batch`, `dtype`, `static`, `spatial`, `layer`).
        source: file name recorded in each case.
        variants: paradigm -> measured variant (keys of `_VARIANT_KEYS`); a paradigm absent here is not converted.

    Returns:
        (measurements, skipped): skipped cases carry the reason.
    """
    for key in ("batch", "dtype", "static", "spatial", "layer"):
        if key not in data:
            raise ValueError(f"{source}: not a bench_spatial result (no {key!r})")
    _check_bf16(data["dtype"], source)
    batch = int(data["batch"])
    geo_by_stage, out, skipped = {}, [], []
    for row in data["static"]:
        geo_by_stage[row["stage"]] = _geometry(row["size"], row["cin"], row["width"], row["cin"], 1)
        if "static" in variants:
            out.append(_case(geo_by_stage[row["stage"]], "static", None, 1.0, batch,
                             _measured(row, "static", variants["static"], source), variants["static"], source, 1.0))
    if "spatial" in variants:
        for row in data["spatial"]:
            geo, s = geo_by_stage[row["stage"]], int(row["S"])
            if geo["in_size"] % s:
                skipped.append({"source": source, "block": geo["block"], "paradigm": "spatial", "granularity": s,
                                "rate": row["rate"], "reason": f"S={s} does not divide the {geo['in_size']}x"
                                f"{geo['in_size']} map (partial patches); the predictor needs S | map size"})
                continue
            # pixel_rate is the realized fraction of active output pixels (whole patches, as the predictor counts)
            out.append(_case(geo, "spatial", s, float(row["pixel_rate"]), batch,
                             _measured(row, "spatial", variants["spatial"], source), variants["spatial"], source,
                             row["rate"]))
    if "layer" in variants:
        for row in data["layer"]:
            geo = geo_by_stage[row["stage"]]
            out.append(_case(geo, "layer", None, int(row["n"]) / batch, batch,
                             _measured(row, "layer", variants["layer"], source), variants["layer"], source,
                             row["rate"]))
    return out, skipped


def channel_file_measurements(data: dict, source: str, variants: dict[str, str] = PRIMARY) -> list[dict]:
    """Static and channel-skipping cases of a `bench_channel.py` result (one static case per block)."""
    if "meta" not in data or "blocks" not in data:
        raise ValueError(f"{source}: not a bench_channel result (needs 'meta' and 'blocks')")
    _check_bf16(data["meta"].get("dtype", "?"), source)
    batch = int(data["meta"]["batch"])
    out, static_done = [], set()
    for row in data["blocks"]:
        geo = _geometry(row["size"], row["cin"], row["width"], row["cout"], row["stride"])
        if "static" in variants and row["block"] not in static_done:
            keys = _VARIANT_KEYS[("static", variants["static"])]
            if any(row.get(k) is not None for k in keys):  # compiled static was timed for some blocks only
                static_done.add(row["block"])
                out.append(_case(geo, "static", None, 1.0, batch, _measured(row, "static", variants["static"], source),
                                 variants["static"], source, 1.0))
        if "channel" in variants:
            out.append(_case(geo, "channel", int(row["group_size"]), float(row["density"]), batch,
                             _measured(row, "channel", variants["channel"], source), variants["channel"], source,
                             row["rate"]))
    return out


def _case_key(m: dict) -> tuple:
    """Identity of a measured case: the same block, paradigm, granularity and nominal rate."""
    return (m["block"], m["paradigm"], m["granularity"], m["rate"])


def build_measurements(spatial: dict | None, channel_runs: Sequence[tuple[str, dict]], spatial_source: str = "",
                       variants: dict[str, str] = PRIMARY) -> tuple[list[dict], list[dict]]:
    """All cases of the spatial file and the channel runs, one per (block, paradigm, granularity, rate).

    A case measured in several files is taken from the spatial file first, then from the *last* channel run that has
    it (later runs use the final kernels). Returns (measurements, skipped), in a stable order.
    """
    chosen: dict[tuple, dict] = {}
    skipped: list[dict] = []
    for source, data in channel_runs:  # later runs overwrite earlier ones
        for m in channel_file_measurements(data, source, variants):
            chosen[_case_key(m)] = m
    if spatial is not None:
        cases, skipped = spatial_file_measurements(spatial, spatial_source, variants)
        for m in cases:
            chosen[_case_key(m)] = m
    order = {p: i for i, p in enumerate(PARADIGM_ORDER)}
    out = sorted(chosen.values(), key=lambda m: (order[m["paradigm"]], m["stage"], m["index"],
                                                 m["granularity"] or 0, m["rate"] or 0))
    return out, skipped


# ---- comparison ------------------------------------------------------------------------------------------------------
def _before_key(spec: str, m: dict) -> tuple:
    return (Path(spec).name, m["block"], m["paradigm"], m["granularity"], m["rate"], m["variant"])


def load_before(path: Path) -> dict[tuple, float]:
    """Per-case predictions (ms) of an earlier report JSON, keyed by spec name and case (main and alternatives)."""
    data = _load(path)
    out = {}
    for section in ("results", "alternatives"):
        for spec, res in data.get(section, {}).items():
            for r in res["rows"]:
                out[_before_key(spec, r)] = float(r["predicted_ms"])
    return out


def attach_before(results: dict[str, dict], before: dict[tuple, float]) -> None:
    """Add `before_ms` / `before_rel_error` to the rows an earlier report predicted too (in place)."""
    for hw, res in results.items():
        for r in res["rows"]:
            old = before.get(_before_key(hw, r))
            if old is not None:
                r["before_ms"] = old
                r["before_rel_error"] = abs(old - r["measured_ms"]) / r["measured_ms"]


def summarize(result: dict) -> dict:
    """Per paradigm (and all): n, median / worst relative error, median signed error, the worst case; and the
    median / worst error of the earlier predictions where every row has one (`attach_before`)."""
    groups: dict[str, list[dict]] = {}
    for r in result["rows"]:
        groups.setdefault(r["paradigm"], []).append(r)
    groups = {p: groups[p] for p in PARADIGM_ORDER if p in groups}
    groups["all"] = result["rows"]
    out = {}
    for name, rows in groups.items():
        worst = max(rows, key=lambda r: r["rel_error"])
        out[name] = {"n": len(rows), "median_rel_error": statistics.median(r["rel_error"] for r in rows),
                     "worst_rel_error": worst["rel_error"],
                     "median_signed_error": statistics.median(r["signed_error"] for r in rows),
                     "worst_case": describe(worst)}
        if all("before_rel_error" in r for r in rows):
            out[name]["before_median_rel_error"] = statistics.median(r["before_rel_error"] for r in rows)
            out[name]["before_worst_rel_error"] = max(r["before_rel_error"] for r in rows)
    return out


def describe(m: dict) -> str:
    """A one-line label of a case: block, paradigm, granularity, density."""
    gran = {"spatial": f" S={m['granularity']}", "channel": f" G={m['granularity']}"}.get(m["paradigm"], "")
    dens = "" if m["paradigm"] == "static" else f" density {m['density']:.2f}"
    return f"{m['block']} {m['paradigm']}{gran}{dens}"


def compare(measurements: list[dict], hardware: Sequence[str], before: dict[tuple, float] | None = None,
            ) -> dict[str, dict]:
    """`compare_blocks` of the measurements for each spec, with the per-paradigm summary (and the earlier
    predictions of `before`, when given)."""
    out = {}
    for hw in hardware:
        res = compare_blocks(measurements, hw)
        if before:
            attach_before({str(hw): res}, before)
        out[str(hw)] = {**res, "by_paradigm": summarize(res)}
    return out


def spatial_breakdown(spatial: dict, measurements: list[dict], hw: str) -> list[dict]:
    """Predicted per-op latency of the spatial blocks whose kernels were timed one by one (`spatial_kernels`).

    The parts are `laudnet.latency.blocks.spatial_parts` (the engine composition, conv1 on the union of the halos, as
    measured), checked to add up to `block_cost`. Measured: the sparse conv1, the gathered 3x3, the 1x1 with the
    scatter-add fused, and index building (sync-free block minus the block with prebuilt lists), against the
    predicted patch list + conv1 pixel list.
    """
    by_case = {(m["stage"], m["granularity"], m["rate"]): m for m in measurements if m["paradigm"] == "spatial"}
    rows_by_case = {(r["stage"], r["S"], r["rate"]): r for r in spatial["spatial"]}
    spec = load_hardware(hw)
    out = []
    for k in spatial["spatial_kernels"]:
        m = by_case.get((k["stage"] - 1, k["S"], k["rate"]))
        if m is None:  # S does not divide the map: not expressible to the predictor
            continue
        b, s = _block_of(m), int(k["S"])
        dev = spec.with_precision(m["precision"])
        op = get_op_model(dev.graphed() if m.get("graphed") else dev, m["batch"])
        conv1 = m.get("spatial_conv1", "dense")
        masker = bool(m.get("masker", True))
        parts = spatial_parts(op, b, s, m["density"], conv1, masker=True)
        total = block_cost(op, b, "spatial", m["density"], s, spatial_conv1=conv1, masker=True).latency
        if abs(sum(c.latency for c in parts.values()) - total) > 1e-9 + 1e-6 * total:
            raise RuntimeError("spatial_breakdown no longer mirrors laudnet.latency.blocks.spatial_block")
        row = rows_by_case[(k["stage"], k["S"], k["rate"])]
        if not masker:  # the report shows the masker's predicted cost although the measured block leaves it out
            total -= parts["masker"].latency
            if abs(block_cost(op, b, "spatial", m["density"], s, spatial_conv1=conv1, masker=False).latency
                   - total) > 1e-9 + 1e-6 * total:
                raise RuntimeError("spatial_breakdown: the masker part does not match block_cost(masker=False)")
        index = parts["patch_list"].latency + parts.get("conv1_list", ZERO).latency
        out.append({"block": m["block"], "S": s, "density": m["density"],
                    **{f"pred_{n}_ms": parts[n].latency * 1e3 for n in ("masker", "conv1", "conv2", "conv3")},
                    "pred_index_build_ms": index * 1e3,
                    "meas_conv1_ms": k["conv1_sparse_ms"], "meas_conv2_ms": k["gather_conv3x3_ms"],
                    "meas_conv3_scatter_ms": k["conv1x1_scatter_ms"],
                    "meas_index_build_ms": row["syncfree_graph_ms"] - row["sparse_conv1_graph_ms"]})
    return out


def _breakdown_table(rows: list[dict]) -> list[str]:
    lines = ["| block | S | density | masker pred / meas | conv1 pred / meas | conv2 pred / meas | "
             "conv3 + scatter-add pred / meas | index building pred / meas |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['block']} | {r['S']} | {r['density']:.2f} | {r['pred_masker_ms']:.3f} / - | "
                     f"{r['pred_conv1_ms']:.3f} / {r['meas_conv1_ms']:.3f} | "
                     f"{r['pred_conv2_ms']:.3f} / {r['meas_conv2_ms']:.3f} | "
                     f"{r['pred_conv3_ms']:.3f} / {r['meas_conv3_scatter_ms']:.3f} | "
                     f"{r['pred_index_build_ms']:.3f} / {r['meas_index_build_ms']:.3f} |")
    return lines


# ---- report ----------------------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{x:.0%}" if abs(x) >= 0.095 else f"{x:.1%}"


def _summary_table(results: dict[str, dict]) -> list[str]:
    lines = ["| spec | paradigm | n | median error | worst error | before: median | before: worst | "
             "median signed error | worst case |", "|---|---|---|---|---|---|---|---|---|"]
    for hw, res in results.items():
        for p, s in res["by_paradigm"].items():
            bm, bw = (_pct(s[k]) if k in s else "-" for k in ("before_median_rel_error", "before_worst_rel_error"))
            lines.append(f"| {Path(hw).name} | {p} | {s['n']} | {_pct(s['median_rel_error'])} | "
                         f"{_pct(s['worst_rel_error'])} | {bm} | {bw} | {s['median_signed_error']:+.0%} | "
                         f"{s['worst_case']} |")
    return lines


def _earlier_note(earlier: dict[str, dict] | None) -> list[str]:
    """The earlier report's own per-paradigm medians (its measured variants), where they differ in meaning."""
    if not earlier:
        return []
    meds = ", ".join(f"`{spec}` {_pct(bp['layer']['median_rel_error'])}" for spec, bp in earlier.items()
                     if "layer" in bp)
    return ["Layer skipping is now compared with the engine's path (`as_spatial_graph`); the earlier report compared "
            f"it with `index_select_graph` (now an alternative below), with a median error of {meds} there. Its "
            "overall medians: " + ", ".join(f"`{spec}` {_pct(bp['all']['median_rel_error'])}"
                                            for spec, bp in earlier.items()) + ".", ""]


def render_markdown(measurements: list[dict], skipped: list[dict], results: dict[str, dict],
                    alternatives: dict[str, dict], sources: dict[str, str],
                    breakdowns: dict[str, list[dict]] | None = None, args_before: str | None = None,
                    earlier: dict[str, dict] | None = None) -> str:
    """The report: per-paradigm errors, worst cases, spatial per-op breakdown, every case, alternatives, skips."""
    hws = list(results)
    lines = ["# Latency predictor against measured block latency (H100, batch 128, bf16)", "",
             "Generated by `benchmarks/compare_predictor.py` from the committed measurements:",
             *[f"- `{name}`: {what}" for name, what in sources.items()], "",
             f"{len(measurements)} measured block cases (ResNet-50/101 bottlenecks of stages 0-2, 0-based; the "
             f"measurement list is `{MEASUREMENTS_FILE}`), compared with `compare_blocks` for "
             + ", ".join(f"`{Path(h).name}`" for h in hws) + ". Relative error = |predicted - measured| / measured; "
             "signed error > 0 means the predictor is slower than the measurement."
             + (f" 'before' = the predictions of `{args_before}` on the same case (the predictor before its "
                "default mode composed dynamic blocks as laudnet's engine runs them)." if args_before else ""), "",
             "Measured variant per paradigm (why: see the script's docstring): "
             + "; ".join(f"{p} = `{v}`" for p, v in PRIMARY.items()) + ".", "",
             "## Error per paradigm", "", *_summary_table(results), "",
             *_earlier_note(earlier),
             "## Worst cases", ""]
    for hw, res in results.items():
        lines += [f"`{Path(hw).name}`:", "", "| case | measured ms | predicted ms | error | before ms |",
                  "|---|---|---|---|---|"]
        for r in sorted(res["rows"], key=lambda r: -r["rel_error"])[:8]:
            old = f"{r['before_ms']:.3f}" if "before_ms" in r else "-"
            lines.append(f"| {describe(r)} | {r['measured_ms']:.3f} | {r['predicted_ms']:.3f} | "
                         f"{r['signed_error']:+.0%} | {old} |")
        lines.append("")
    for hw, rows in (breakdowns or {}).items():
        if rows:
            lines += [f"## Spatial blocks op by op (`{Path(hw).name}`, ms for the batch)", "",
                      "Predicted parts of `spatial_parts` (the engine composition: conv1 once on the union of the "
                      "patches' halos, the 3x3 as an implicit GEMM, the scatter-add fused into conv3's epilogue) "
                      "against the kernels timed one by one in the same benchmark. The masker network was not timed "
                      "and is left out of the block's prediction; its predicted cost is shown for scale. Measured "
                      "index building = sync-free block minus the block with prebuilt lists: it also holds the "
                      "capacity-sized launches' idle programs, which the predictor does not model.", "",
                      *_breakdown_table(rows), ""]
    lines += ["## Every case", "",
              "| block | paradigm | gran | density | measured ms | variant | "
              + " | ".join(f"{Path(h).name} ms | error | before ms" for h in hws) + " |",
              "|---|---|---|---|---|---|" + "---|---|---|" * len(hws)]

    def _before(r: dict) -> str:
        return f"{r['before_ms']:.3f}" if "before_ms" in r else "-"

    for i, m in enumerate(measurements):
        preds = " | ".join(f"{results[h]['rows'][i]['predicted_ms']:.3f} | {results[h]['rows'][i]['signed_error']:+.0%}"
                           f" | {_before(results[h]['rows'][i])}" for h in hws)
        lines.append(f"| {m['block']} | {m['paradigm']} | {m['granularity'] or '-'} | {m['density']:.3f} | "
                     f"{m['measured_ms']:.3f} | {m['variant']} | {preds} |")
    if alternatives:
        lines += ["", "## Alternative measured variants", "",
                  "The same comparison against the other timed forms of a block (not in the measurement list): "
                  + "; ".join(f"{p} = `{v}`" for p, v in ALTERNATIVES.items()) + ".", "",
                  *_summary_table(alternatives)]
    if skipped:
        lines += ["", "## Skipped measured cases", ""]
        lines += [f"- {s['source']}: {s['block']} {s['paradigm']} S={s['granularity']} rate {s['rate']}: {s['reason']}"
                  for s in skipped]
    return "\n".join(lines) + "\n"


def _load(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark result not found: {path}")
    return json.loads(path.read_text())


def _slim(res: dict) -> dict:
    """The comparison for the JSON report, rows reduced to their label, inputs and errors."""
    keep = ("block", "paradigm", "granularity", "density", "rate", "variant", "source", "measured_ms",
            "predicted_ms", "rel_error", "signed_error", "before_ms")
    return {"n": res["n"], "median_rel_error": res["median_rel_error"], "worst_rel_error": res["worst_rel_error"],
            "median_signed_error": res["median_signed_error"], "by_paradigm": res["by_paradigm"],
            "rows": [{k: r[k] for k in keep if k in r} for r in res["rows"]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spatial", type=Path, default=SPATIAL_FILE, help="bench_spatial.py result JSON")
    ap.add_argument("--channel", type=Path, action="append", default=None,
                    help="bench_channel.py result JSON (repeat; later runs win for cases in several)")
    ap.add_argument("--hardware", action="append", default=None,
                    help=f"preset or spec file (repeat; default h100 and {CALIBRATED_SPEC.name})")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--before", type=Path, default=BEFORE_FILE,
                    help="earlier report JSON whose per-case predictions fill the 'before' columns")
    ap.add_argument("--no-before", action="store_true", help="no 'before' columns")
    args = ap.parse_args(argv)
    channel_paths = args.channel or list(CHANNEL_FILES)
    hardware = args.hardware or ["h100", str(CALIBRATED_SPEC)]
    spatial = _load(args.spatial)
    runs = [(p.name, _load(p)) for p in channel_paths]

    before = None if args.no_before else load_before(args.before)
    measurements, skipped = build_measurements(spatial, runs, args.spatial.name)
    results = compare(measurements, hardware, before)
    alt_meas, _ = build_measurements(spatial, runs, args.spatial.name, ALTERNATIVES)
    alternatives = compare(alt_meas, hardware, before)

    sources = {args.spatial.name: f"static, spatial and layer skipping (commit {spatial.get('commit', '?')})"}
    for name, data in runs:
        sources[name] = f"channel skipping and static (commit {data['meta'].get('commit', '?')})"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / MEASUREMENTS_FILE).write_text(json.dumps(measurements, indent=1) + "\n")
    breakdowns = {h: spatial_breakdown(spatial, measurements, h) for h in hardware}
    report = render_markdown(measurements, skipped, results, alternatives, sources, breakdowns,
                             None if before is None else args.before.name,
                             None if before is None else {spec: r["by_paradigm"]
                                                          for spec, r in _load(args.before)["results"].items()})
    (args.out_dir / f"{REPORT_STEM}.md").write_text(report)
    summary = {"sources": sources, "variants": PRIMARY, "alternative_variants": ALTERNATIVES, "skipped": skipped,
               "results": {Path(h).name: _slim(r) for h, r in results.items()},
               "alternatives": {Path(h).name: _slim(r) for h, r in alternatives.items()},
               "spatial_breakdown": {Path(h).name: rows for h, rows in breakdowns.items()}}
    (args.out_dir / f"{REPORT_STEM}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(_summary_table(results)))
    print("\nalternative variants:")
    print("\n".join(_summary_table(alternatives)))
    for hw, res in results.items():
        print(f"{Path(hw).name}: blocks: n={res['n']}  median error {res['median_rel_error']:.1%}  "
              f"worst {res['worst_rel_error']:.1%}")
    print(f"wrote {args.out_dir / MEASUREMENTS_FILE}, {REPORT_STEM}.md and {REPORT_STEM}.json in {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
