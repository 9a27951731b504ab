"""The layer-skipping kernels and networks against the device's ceilings: achieved TFLOP/s and TB/s from measured times.

Reads a `bench_layer_kernels.py` result (per stage and op, the engine's kernels and cuDNN on the same sub-batch) and,
optionally, a `bench_models.py` result, and prints markdown tables: per kernel the multiply-add work, the fewest
bytes it must move (each operand read once, the output written once; a residual read and written), and what the
measured time makes of them as a share of the compute ceiling and of the copy ceiling.

    python benchmarks/roofline_layer.py benchmarks/results/bench_layer_kernels_h200_37af28c.json \
        --models benchmarks/results/bench_models_tuned_r101_h200_56fa110.json

Ceilings (`--peak-tflops`, `--copy-tbps`): the H200's dense bf16 tensor-core rate from its data sheet (989 TFLOP/s)
and the copy rate measured for a ResNet stage-1 map at batch 128 (`bench_masker_kernels_h200_92d3f2d.json`: 205 MB
read and written in 0.103 ms, 4.0 TB/s).
"""

from __future__ import annotations

import argparse
import json
import sys

# stage -> (map size, block channels, bottleneck width), as in bench_layer_kernels.py
STAGES = {1: (56, 256, 64), 2: (28, 512, 128), 3: (14, 1024, 256), 4: (7, 2048, 512)}
BYTES = 2  # bf16


def op_work(stage: int, op: str, count: int) -> tuple[float, float]:
    """(FLOPs, fewest bytes moved) of one op of a middle block of `stage` on `count` samples."""
    size, c, width = STAGES[stage]
    rows = count * size * size
    if op == "conv1":
        k, n, extra = c, width, 0
    elif op == "conv3x3":
        k, n, extra = 9 * width, width, 0
    elif op == "conv3+add":
        k, n, extra = width, c, rows * c * BYTES  # the residual is read as well as the output written
    else:
        raise ValueError(op)
    flops = 2.0 * rows * k * n
    in_bytes = rows * (k if op != "conv3x3" else width) * BYTES  # a 3x3 reads each input pixel once at best
    return flops, in_bytes + rows * n * BYTES + k * n * BYTES + extra


def kernel_table(path: str, peak: float, copy: float) -> list[str]:
    with open(path) as f:
        data = json.load(f)
    lines = [f"{data['meta']['device']}, commit {data['meta']['commit']}; ceilings {peak:g} TFLOP/s, {copy:g} TB/s", "",
             "| stage | op | GFLOP | MB moved | ours (best tile) ms | TFLOP/s | % of peak | TB/s | % of copy "
             "| cuDNN ms | cuDNN % of peak |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        if r["op"] == "block":
            continue
        flops, nbytes = op_work(r["stage"], r["op"], r["count"])
        ms = min(v for k, v in r.items() if isinstance(v, float) and (k == "default_ms" or k.startswith("m")))
        tflops, tbps = flops / ms / 1e9, nbytes / ms / 1e9
        lines.append(f"| {r['stage']} | {r['op']} | {flops / 1e9:.1f} | {nbytes / 1e6:.0f} | {ms:.3f} | {tflops:.0f} | "
                     f"{100 * tflops / peak:.0f} | {tbps:.2f} | {100 * tbps / copy:.0f} | {r['cudnn_ms']:.3f} | "
                     f"{100 * flops / r['cudnn_ms'] / 1e9 / peak:.0f} |")
    return lines


def model_table(path: str, peak: float) -> list[str]:
    """Whole ResNet-101 at batch 128: the static network and the layer-skipping ones, FLOPs from the accounting."""
    import laudnet

    with open(path) as f:
        rows = json.load(f)["results"]
    static = laudnet.model_flops(laudnet.create_model("laud_resnet101", paradigm="static"), (3, 224, 224)).dense
    b128 = [r for r in rows if r.get("batch") == 128 and "ms" in r]
    best = min((r for r in b128 if r["kind"] == "static"), key=lambda r: r["ms"])
    lines = ["", "| network (batch 128) | GFLOP per image | ms | TFLOP/s | % of peak |", "|---|---|---|---|---|"]
    cases = [(f"static ({best['variant']})", 1.0, best["ms"])]
    for r in b128:
        if r["kind"] == "layer" and r["variant"] == "deployed cuda-graph":
            cases.append((f"layer skipping, rate {r['rate']:g} (FLOPs ratio {r['flops_ratio']:.3f})",
                          r["flops_ratio"], r["ms"]))
    for name, ratio, ms in cases:
        flops = 2 * static * ratio * 128
        lines.append(f"| {name} | {2 * static * ratio / 1e9:.2f} | {ms:.2f} | {flops / ms / 1e9:.0f} | "
                     f"{100 * flops / ms / 1e9 / peak:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", help="bench_layer_kernels.py result JSON")
    parser.add_argument("--models", help="bench_models.py result JSON (ResNet-101, batch 128)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--copy-tbps", type=float, default=4.0)
    args = parser.parse_args(argv)
    lines = kernel_table(args.kernels, args.peak_tflops, args.copy_tbps)
    if args.models:
        lines += model_table(args.models, args.peak_tflops)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
