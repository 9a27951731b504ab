"""`laudnet latency`, `laudnet granularity` and `laudnet calibrate`.

`latency` and `granularity` import neither torch nor the model code, so they answer in about a second; only
`calibrate` imports torch (inside `measure_device`).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from laudnet.latency.geometry import is_vit, list_models, list_vit_models
from laudnet.latency.hardware import PRECISIONS, list_hardware
from laudnet.paradigms import CNN_PARADIGMS, DEFAULT_GRANULARITY, VIT_PARTS, format_granularity


def _clear_errors(fn):
    """Bad input ends the command with its message (exit status 2) rather than a traceback."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, FileNotFoundError) as err:
            print(f"laudnet {fn.__name__.removeprefix('run_')}: error: {err}", file=sys.stderr)
            return 2

    return wrapper


_DENSITY_KEYS = ("per_block_densities", "block_densities", "densities", "rates", "activation_rates", "block_rates")


def _add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hardware", default="v100",
                        help=f"preset ({', '.join(list_hardware())}) or a .json/.yaml spec file (laudnet calibrate)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the device's, 128 or 1)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="override the device's precision (tensor cores for bf16/fp16/tf32)")
    parser.add_argument("--compat", choices=["paper"], default=None,
                        help="reproduce the official simulator (FP32, residual stages only, quirks included)")


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help=f"one of {', '.join(list_models() + list_vit_models())} (laud_ prefix accepted)")


def read_densities(value: str) -> list[float]:
    """Per-block activation rates from `0.5,0.4,...` or a JSON file: a list, or a dict holding one under
    per_block_densities / block_densities / densities / rates / block_rates (what `laudnet eval` writes; a
    {block: rate} dict as in the demo's report works too), or `blocks: [{"density": ...}, ...]`."""
    path = Path(value)
    if path.suffix.lower() == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"densities file not found: {path}")
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            for key in _DENSITY_KEYS:
                if key in data:
                    data = data[key]
                    break
            else:
                if "blocks" in data:
                    data = [b["density"] for b in data["blocks"]]
                else:
                    raise ValueError(f"{path}: no per-block densities under any of {_DENSITY_KEYS} or 'blocks'")
        if isinstance(data, dict):  # {block name: rate}, as in the demo's report.json (blocks in forward order)
            data = list(data.values())
        if not isinstance(data, list):
            raise ValueError(f"{path}: per-block densities must be a list of numbers")
        return [float(v) for v in data]
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--densities must be comma-separated numbers or a .json file, got {value!r}") from err


# ---- laudnet latency -------------------------------------------------------------------------------------------------
def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arg(parser)
    parser.add_argument("--paradigm", default="layer",
                        help=f"CNNs: {', '.join(CNN_PARADIGMS)}; ViTs: static or a +-combination of "
                             f"{', '.join(VIT_PARTS)}, e.g. {'+'.join(VIT_PARTS)} (default layer)")
    parser.add_argument("--density", type=float, default=0.5,
                        help="activation rate of every block (default 0.5); ViTs: the rate of each skipped part")
    parser.add_argument("--densities", default=None,
                        help="per-block activation rates: comma list or JSON file (e.g. from laudnet eval)")
    parser.add_argument("--granularity", default=None,
                        help="CNNs only: patch size S (spatial) or group size G (channel), one per stage (4-4-2-1 or "
                             "4,4,2,1) or one for every stage; default the models': spatial "
                             f"{format_granularity(DEFAULT_GRANULARITY['spatial'])}, channel "
                             f"{format_granularity(DEFAULT_GRANULARITY['channel'])}")
    _add_device_args(parser)
    parser.add_argument("--blocks", action="store_true", help="also print every block")
    parser.add_argument("--json", action="store_true", help="print the prediction as JSON")
    parser.add_argument("--graphed", action="store_true",
                        help="both networks replayed as one CUDA graph (needs a spec with graph_launch_time)")


def format_prediction(p, show_blocks: bool = False) -> str:
    gran = "-".join(map(str, p.granularity)) if p.granularity else "-"
    vit = is_vit(p.model)
    other = "embed, norm, fc" if vit else "stem, pool, fc"
    mode = ("compat paper (residual stages only)" if p.compat else
            f"default ({'patch embedding, final norm' if vit else 'stem, pooling'} and classifier included)")
    mode += ", CUDA graph" if p.graphed else ""
    lines = [f"{p.model}  {p.paradigm}  granularity {gran}  on {p.hardware} ({p.precision}), batch {p.batch}, {mode}",
             f"static {p.static_ms:.4f} ms/img   dynamic {p.dynamic_ms:.4f} ms/img   ratio {p.ratio:.3f}", "",
             f"{'stage':>5} {'blocks':>6} {'gran':>5} {'static ms':>10} {'dynamic ms':>11} {'ratio':>6}"]
    for s in p.stages:
        g = "-" if s["granularity"] is None else str(s["granularity"])
        lines.append(f"{s['stage'] + 1:>5} {s['blocks']:>6} {g:>5} {s['static_ms']:>10.4f} {s['dynamic_ms']:>11.4f} "
                     f"{s['ratio']:>6.3f}")
    if p.other_ms:
        lines.append(f"{other:>18} {p.other_ms:>10.4f} {p.other_ms:>11.4f}")
    if show_blocks:
        lines += ["", f"{'stage':>5} {'block':>5} {'density':>7} {'static ms':>10} {'dynamic ms':>11} {'ratio':>6}"]
        for b in p.blocks:
            lines.append(f"{b.stage + 1:>5} {b.index:>5} {b.density:>7.3f} {b.static_ms:>10.4f} {b.dynamic_ms:>11.4f} "
                         f"{b.ratio:>6.3f}")
    return "\n".join(lines)


@_clear_errors
def run_latency(args: argparse.Namespace) -> int:
    from laudnet.latency.predictor import predict_model

    per_block = read_densities(args.densities) if args.densities else None
    p = predict_model(args.model, args.paradigm, density=None if per_block else args.density,
                      granularity=args.granularity, hardware=args.hardware, batch=args.batch, compat=args.compat,
                      precision=args.precision, per_block_densities=per_block, graphed=args.graphed)
    print(json.dumps(p.to_dict(), indent=2) if args.json else format_prediction(p, args.blocks))
    return 0


# ---- laudnet granularity ---------------------------------------------------------------------------------------------
def add_granularity_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arg(parser)
    _add_device_args(parser)
    parser.add_argument("--rate", type=float, default=0.5, help="activation rate to recommend for (default 0.5)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="recommend the finest granularity within this fraction of the best ratio (0.05)")
    parser.add_argument("--out", default="runs/granularity", help="folder for the PNG plots, table and CSV")


@_clear_errors
def run_granularity(args: argparse.Namespace) -> int:
    from laudnet.latency.granularity import format_table, sweep, write_csv
    from laudnet.latency.plots import plot_granularity

    if not 0.0 <= args.rate <= 1.0:
        raise ValueError(f"--rate must lie in [0, 1], got {args.rate}")
    report = sweep(args.model, args.hardware, args.batch, args.compat, args.precision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(report, args.rate, args.tolerance)
    stem = f"{report.model}_{report.hardware}"
    (out / f"{stem}_granularity.md").write_text(table + "\n")
    write_csv(report, out / f"{stem}_granularity.csv")
    plots = plot_granularity(report, out)
    print(table)
    print(f"\nwrote {out / (stem + '_granularity.md')}, {stem}_granularity.csv and {len(plots)} plots in {out}")
    return 0


# ---- laudnet calibrate -----------------------------------------------------------------------------------------------
def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", default="runs/calibrate/hardware.yaml", help="spec file to write (.yaml or .json)")
    parser.add_argument("--name", default=None, help="name of the calibrated device (default local-<device>)")
    parser.add_argument("--thorough", action="store_true", help="more repetitions (slower, steadier)")
    parser.add_argument("--compare", default=None,
                        help="JSON list of measured block latencies to check the predictions against")
    parser.add_argument("--hardware", default=None,
                        help="with --compare: check this preset or spec file instead of measuring the device")


@_clear_errors
def run_calibrate(args: argparse.Namespace) -> int:
    from laudnet.latency.calibrate import check_ops, compare_blocks, fit_spec, measure_device
    from laudnet.latency.hardware import load_hardware, save_hardware

    if args.hardware is not None:
        if not args.compare:
            raise ValueError("--hardware is for checking a spec against --compare measurements; give --compare FILE")
        _print_comparison(compare_blocks(_read_measurements(args.compare), load_hardware(args.hardware)))
        return 0
    meas = measure_device(args.device, quick=not args.thorough)
    spec = fit_spec(meas, args.name)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_hardware(spec, out)
    print(f"device {meas['name']} ({meas['device']}), {meas['n_pes']} engines")
    print(f"  copy bandwidth   {meas['copy_bandwidth'] / 1e9:9.2f} GB/s (read + write)")
    print(f"  cache bandwidth  {meas['cache_bandwidth'] / 1e9:9.2f} GB/s  -> l2_speed_frac {spec.l2_speed_frac:.2f}")
    print(f"  fp32 matmul      {meas['fp32_macs'] * 2 / 1e12:9.4f} TFLOP/s (n={meas['matmul_n']})")
    if "bf16_macs" in meas:
        print(f"  bf16 matmul      {meas['bf16_macs'] * 2 / 1e12:9.4f} TFLOP/s")
    print(f"  3x3 conv         {meas['conv_macs'] * 2 / 1e12:9.4f} TFLOP/s {meas['conv_shape']}")
    print(f"  launch overhead  {meas['launch_time'] * 1e6:9.2f} us")
    if "graph_launch_time" in meas:
        print(f"  graph launch     {meas['graph_launch_time'] * 1e6:9.2f} us per kernel of a CUDA-graph replay")
    if "frequency_source" in meas:
        print(f"  SM clock         {meas['frequency'] / 1e6:9.0f} MHz (max, from {meas['frequency_source']})")
    for r in check_ops(meas, spec):
        print(f"  check {r['op']:<30} measured {r['measured_ms']:.4f} ms  predicted {r['predicted_ms']:.4f} ms  "
              f"error {r['rel_error']:.0%}")
    print(f"wrote {out} (use it as --hardware {out})")
    if args.compare:
        _print_comparison(compare_blocks(_read_measurements(args.compare), spec))
    return 0


def _read_measurements(path: str) -> list[dict]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"measurements file not found: {file}")
    data = json.loads(file.read_text())
    if isinstance(data, dict) and "measurements" in data:
        data = data["measurements"]
    if not isinstance(data, list):
        raise ValueError(f"{file}: expected a JSON list of measurements (or {{'measurements': [...]}})")
    return data


def _print_comparison(res: dict) -> None:
    print(f"{'block':<28} {'paradigm':<8} {'gran':>4} {'density':>7} {'batch':>5} {'measured':>9} {'predicted':>9} "
          f"{'error':>6}")
    for r in res["rows"]:
        if "model" in r:
            where = f"{r['model']} stage {r['stage']} block {r['index']}"
        else:
            where = f"{r['in_channels']}->{r['out_channels']} @{r['in_size']}"
        print(f"{where:<28} {r.get('paradigm', 'static'):<8} {r.get('granularity') or '-':>4} "
              f"{r.get('density', 1.0):>7.2f} {r.get('batch', '-'):>5} {r['measured_ms']:>9.3f} "
              f"{r['predicted_ms']:>9.3f} {r['signed_error']:>+6.0%}")
    print(f"blocks: n={res['n']}  median error {res['median_rel_error']:.1%}  worst {res['worst_rel_error']:.1%}")


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience for python -m
    parser = argparse.ArgumentParser(prog="laudnet latency")
    add_latency_arguments(parser)
    return run_latency(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
