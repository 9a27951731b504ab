"""Granularity analysis: per-stage latency ratio against activation rate for each spatial S and channel G.

This re-runs the paper's analysis of how coarse the dynamic decisions must be to turn FLOPs savings into latency
savings: for every stage, the ratio r = dynamic / static latency of the stage's blocks as a function of the activation
rate, for every patch size S that divides the stage, every channel-group size G that divides the width, and for layer
skipping. `recommend` picks S and G per stage.

Recommendation rule (ours; the paper chooses by eye from the same curves): at the target activation rate, take the
finest granularity (smallest S or G, which costs the least accuracy) whose ratio is within `tolerance` of the best
ratio any granularity reaches in that stage. S equal to the stage size is not recommended (one patch per map: the
rate is rounded up to the whole map, so it never skips). The break-even rate (highest rate whose ratio stays below 1)
is reported with it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from laudnet.latency.blocks import block_cost
from laudnet.latency.geometry import ModelGeometry, get_geometry
from laudnet.latency.hardware import HardwareSpec, load_hardware
from laudnet.latency.ops import get_op_model

DEFAULT_RATES = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass
class Curve:
    """Latency ratio of one stage against activation rate at one granularity."""

    stage: int
    kind: str  # "spatial", "channel" or "layer"
    granularity: int | None
    rates: list[float]
    ratios: list[float]

    def ratio_at(self, rate: float) -> float:
        """Ratio at `rate`, interpolated linearly between the swept rates."""
        pts = list(zip(self.rates, self.ratios, strict=True))
        if rate <= pts[0][0]:
            return pts[0][1]
        for (r0, y0), (r1, y1) in zip(pts, pts[1:], strict=False):
            if r0 <= rate <= r1:
                return y0 + (y1 - y0) * (rate - r0) / (r1 - r0)
        return pts[-1][1]

    def break_even(self) -> float | None:
        """Highest swept rate whose ratio is below 1 (None if the op never pays off)."""
        below = [r for r, y in zip(self.rates, self.ratios, strict=True) if y < 1.0]
        return max(below) if below else None


@dataclass
class GranularityReport:
    model: str
    hardware: str
    precision: str
    batch: int
    compat: str | None
    curves: list[Curve] = field(default_factory=list)

    def stage_curves(self, stage: int, kind: str) -> list[Curve]:
        return [c for c in self.curves if c.stage == stage and c.kind == kind]


def spatial_choices(size: int) -> list[int]:
    """Patch sizes S that tile a stage of side `size` exactly."""
    return [s for s in range(1, size + 1) if size % s == 0]


def channel_choices(width: int, limit: int = 64) -> list[int]:
    """Channel-group sizes G (powers of two up to `limit`) that divide the bottleneck width."""
    out, g = [], 1
    while g <= min(limit, width):
        if width % g == 0:
            out.append(g)
        g *= 2
    return out


def _stage_ratio(op, geom: ModelGeometry, stage: int, paradigm: str, rate: float, gran: int) -> float:
    blocks = [b for b in geom.blocks() if b.stage == stage]
    static = sum(block_cost(op, b, "static", 1.0, 0).latency for b in blocks)
    dynamic = sum(block_cost(op, b, paradigm, rate, gran).latency for b in blocks)
    return dynamic / static


def sweep(model: str, hardware: str | HardwareSpec = "v100", batch: int | None = None, compat: str | None = None,
          precision: str | None = None, rates: tuple[float, ...] = DEFAULT_RATES) -> GranularityReport:
    """Ratio curves for every stage, granularity and paradigm (see module docstring)."""
    if compat not in (None, "paper"):
        raise ValueError(f"unknown compat mode {compat!r}; choose None or 'paper'")
    if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
        raise ValueError(f"activation rates must be a non-empty list within [0, 1], got {rates!r}")
    rates = tuple(sorted(rates))
    geom = get_geometry(model)
    hw = load_hardware(hardware)
    if precision is not None:
        hw = hw.with_precision(precision)
    elif compat == "paper":
        hw = hw.with_precision("fp32")
    batch = hw.batch if batch is None else batch
    op = get_op_model(hw, batch, compat == "paper")
    report = GranularityReport(geom.name, hw.name, hw.precision, batch, compat)
    for si, st in enumerate(geom.stages):
        for s in spatial_choices(st.size):
            report.curves.append(Curve(si, "spatial", s, list(rates),
                                       [_stage_ratio(op, geom, si, "spatial", r, s) for r in rates]))
        for g in channel_choices(st.width):
            report.curves.append(Curve(si, "channel", g, list(rates),
                                       [_stage_ratio(op, geom, si, "channel", r, g) for r in rates]))
        report.curves.append(Curve(si, "layer", None, list(rates),
                                   [_stage_ratio(op, geom, si, "layer", r, 0) for r in rates]))
    return report


def recommend(report: GranularityReport, target_rate: float = 0.5, tolerance: float = 0.05) -> list[dict]:
    """Per stage: recommended S and G at `target_rate` (finest within `tolerance` of the best ratio)."""
    out = []
    stages = sorted({c.stage for c in report.curves})
    for si in stages:
        row: dict = {"stage": si}
        for kind, key in (("spatial", "S"), ("channel", "G")):
            curves = report.stage_curves(si, kind)
            if kind == "spatial" and len(curves) > 1:
                # A patch as large as the stage rounds any rate below 1 up to the whole map: it never skips (that is
                # layer skipping's job), so it is plotted but not recommended.
                curves = curves[:-1]
            best = min(c.ratio_at(target_rate) for c in curves)
            pick = min((c for c in curves if c.ratio_at(target_rate) <= best * (1 + tolerance)),
                       key=lambda c: c.granularity)
            row[key] = pick.granularity
            row[f"{kind}_ratio"] = pick.ratio_at(target_rate)
            row[f"{kind}_break_even"] = pick.break_even()
        layer = report.stage_curves(si, "layer")[0]
        row["layer_ratio"] = layer.ratio_at(target_rate)
        out.append(row)
    return out


def format_table(report: GranularityReport, target_rate: float = 0.5, tolerance: float = 0.05) -> str:
    """Markdown table: ratio at `target_rate` per stage and granularity, then the recommendation."""
    lines = [f"# granularity analysis: {report.model} on {report.hardware} ({report.precision}), batch {report.batch}"
             f"{', compat ' + report.compat if report.compat else ''}; latency ratio at activation rate {target_rate}",
             "", "| stage | kind | granularity | ratio | break-even rate |", "|---|---|---|---|---|"]
    for c in report.curves:
        be = c.break_even()
        lines.append(f"| {c.stage + 1} | {c.kind} | {c.granularity if c.granularity is not None else '-'} | "
                     f"{c.ratio_at(target_rate):.3f} | {'-' if be is None else f'{be:.1f}'} |")
    rec = recommend(report, target_rate, tolerance)
    lines += ["", f"Recommended (finest granularity within {tolerance:.0%} of the stage's best ratio):", "",
              "| stage | S | ratio | G | ratio | layer ratio |", "|---|---|---|---|---|---|"]
    for r in rec:
        lines.append(f"| {r['stage'] + 1} | {r['S']} | {r['spatial_ratio']:.3f} | {r['G']} | {r['channel_ratio']:.3f} "
                     f"| {r['layer_ratio']:.3f} |")
    lines.append("")
    lines.append("spatial: --granularity " + "-".join(str(r["S"]) for r in rec)
                 + "    channel: --granularity " + "-".join(str(r["G"]) for r in rec))
    return "\n".join(lines)


def write_csv(report: GranularityReport, path: str | Path) -> Path:
    """Every (stage, kind, granularity, rate, ratio) point as CSV."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "hardware", "precision", "batch", "stage", "kind", "granularity", "rate", "ratio"])
        for c in report.curves:
            for r, y in zip(c.rates, c.ratios, strict=True):
                w.writerow([report.model, report.hardware, report.precision, report.batch, c.stage + 1, c.kind,
                            c.granularity if c.granularity is not None else "", r, f"{y:.6f}"])
    return path
