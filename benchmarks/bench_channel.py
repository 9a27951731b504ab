"""Channel-skipping bottleneck blocks on the GPU: measured latency ratio r_l = dynamic / static per activation rate.

Blocks: the ResNet-50/101 bottlenecks of stages 1-3 (identical shapes in both models) at 224^2 input, batch 128,
bf16, NHWC (channels_last), BN folded. Non-first blocks (stride 1, identity residual) and the first, downsampling
blocks of stages 2-3 (stride 2; the 1x1 stride-2 projection runs through cuDNN in both forms).

Per case, in the same run:
* static: the folded dense block through cuDNN (bias in the conv, ReLU and residual add separate), eager and as a
  CUDA graph; with ``--compile`` also ``torch.compile`` of it;
* dynamic: ``channel_index`` + the three channel kernels, eager with ``kmax`` = the batch's largest count (one host
  sync per block) and as a CUDA graph with ``kmax = w`` (no sync);
* a correctness check of the dynamic output against the dense masked reference on 16 samples.

``--sweep`` first times each kernel alone over a few tile configurations (stage 2 and 3, rate 0.5, G = 16) and uses
the fastest per stage in the block table; ``--bucket`` times the alternative that groups samples by identical
mask pattern and runs cuDNN on each group with gathered weights.

Run on the GPU machine: ``python benchmarks/bench_channel.py --sweep --bucket --out results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from laudnet.kernels import channel as ch
from laudnet.kernels import channel_ref as ref
from laudnet.timing import capture_graph

# (name, input size, Cin, width w, Cout, stride, first block)
BLOCKS = [  # the target stages first, so that a run cut short still has them
    ("s3", 14, 1024, 256, 1024, 1, False),
    ("s2", 28, 512, 128, 512, 1, False),
    ("s1", 56, 256, 64, 256, 1, False),
    ("s2_first", 56, 256, 128, 512, 2, True),
    ("s3_first", 28, 512, 256, 1024, 2, True),
]

SWEEP = {  # a few tile shapes per kernel: (BM pixels, BN channels, BK reduction), warps, pipeline stages
    "conv1x1_out": [
        dict(BM=128, BN=64, BK=64, num_warps=4, num_stages=3),
        dict(BM=64, BN=64, BK=64, num_warps=4, num_stages=3),
        dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3),
        dict(BM=128, BN=64, BK=64, num_warps=4, num_stages=4),
    ],
    "conv3x3": [
        dict(BM=64, BN=64, BK=32, num_warps=4, num_stages=3),
        dict(BM=128, BN=64, BK=32, num_warps=4, num_stages=3),
        dict(BM=64, BN=64, BK=64, num_warps=4, num_stages=3),
        dict(BM=128, BN=128, BK=32, num_warps=8, num_stages=3),
        dict(BM=128, BN=64, BK=64, num_warps=8, num_stages=3),
        dict(BM=128, BN=64, BK=32, num_warps=4, num_stages=4),
        dict(BM=128, BN=32, BK=32, num_warps=4, num_stages=3),
    ],
    "conv1x1_in": [
        dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3),
        dict(BM=64, BN=128, BK=64, num_warps=4, num_stages=3),
        dict(BM=128, BN=256, BK=64, num_warps=8, num_stages=3),
        dict(BM=128, BN=64, BK=64, num_warps=4, num_stages=3),
        dict(BM=64, BN=128, BK=64, num_warps=4, num_stages=3, PREFETCH=True),
        dict(BM=128, BN=64, BK=64, num_warps=4, num_stages=3, PREFETCH=True),
    ],
}

DEVICE = "cuda"
H100_BF16_TFLOPS = 786.0  # measured 8192^3 matmul, shared/h100-baselines.md
H100_COPY_TBPS = 2.95  # measured device-to-device copy, read + write


def bench(fn, warmup: int = 5, rep: int = 25) -> float:
    """Median milliseconds of ``fn`` (triton.testing.do_bench: CUDA events, L2 flushed before each call)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def make_params(cin, width, cout, first, seed=0, device=None, dtype=torch.bfloat16):
    device = device or DEVICE
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    p = dict(
        w1=rnd(width, cin, 1, 1, scale=(2 / cin) ** 0.5),
        b1=rnd(width, scale=0.1),
        w2=rnd(width, width, 3, 3, scale=(2 / (9 * width)) ** 0.5),
        b2=rnd(width, scale=0.1),
        w3=rnd(cout, width, 1, 1, scale=(1 / width) ** 0.5),
        b3=rnd(cout, scale=0.1),
    )
    if first:
        p["wd"] = rnd(cout, cin, 1, 1, scale=(1 / cin) ** 0.5)
        p["bd"] = rnd(cout, scale=0.1)
    for k in ("w1", "w2", "w3", "wd"):
        if k in p:
            p[k] = p[k].contiguous(memory_format=torch.channels_last)
    return p


def static_block(x, p, stride):
    """Folded dense bottleneck, NCHW channels_last: cuDNN convs with bias, separate ReLU / add."""
    h = F.conv2d(x, p["w1"], p["b1"]).relu_()
    h = F.conv2d(h, p["w2"], p["b2"], stride=stride, padding=1).relu_()
    y = F.conv2d(h, p["w3"], p["b3"])
    identity = F.conv2d(x, p["wd"], p["bd"], stride=stride) if "wd" in p else x
    return y.add_(identity).relu_()


def dynamic_block(x_nhwc, x_nchw, p, packed, mask, group_size, stride, kmax, out=None, configs=None):
    """Channel-skipping bottleneck: index + three kernels; the projection (first blocks) through cuDNN."""
    configs = configs or {}
    idx, counts = ch.channel_index(mask, group_size, kmax=kmax)
    h1 = ch.channel_conv1x1_out(x_nhwc, packed[0], p["b1"], idx, counts, config=configs.get("conv1x1_out"))
    h2 = ch.channel_conv3x3(
        h1, packed[1], p["b2"], idx, counts, stride, group_size=group_size, config=configs.get("conv3x3")
    )
    if "wd" in p:
        residual = F.conv2d(x_nchw, p["wd"], p["bd"], stride=stride)
        residual = residual.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        return ch.channel_conv1x1_in(
            h2, packed[2], p["b3"], idx, counts, residual, out=residual, config=configs.get("conv1x1_in")
        )
    return ch.channel_conv1x1_in(h2, packed[2], p["b3"], idx, counts, x_nhwc, out=out, config=configs.get("conv1x1_in"))


def graph_of(fn):
    """Capture ``fn`` (already warmed up, so Triton has compiled; two more warm-up calls on a side stream) into a CUDA
    graph; returns its replay."""
    return capture_graph(fn, warmup=2)[0].replay


def random_mask(n, n_groups, rate, seed):
    g = torch.Generator().manual_seed(seed)
    return (
        (torch.rand(n, n_groups, generator=g) < rate).to(DEVICE)
        if rate < 1
        else torch.ones(n, n_groups, dtype=torch.bool).to(DEVICE)
    )


def block_flops(size_in, cin, width, cout, stride, counts):
    """Multiply-adds x 2 of conv1/conv2/conv3 (and projection) for given per-sample active counts (tensor [N])."""
    size_out = (size_in - 1) // stride + 1
    c = counts.double()
    conv1 = 2 * size_in**2 * cin * c.sum().item()
    conv2 = 2 * 9 * size_out**2 * (c * c).sum().item()
    conv3 = 2 * size_out**2 * cout * c.sum().item()
    proj = 2 * size_out**2 * cin * cout * len(c) if stride != 1 or cin != cout else 0.0
    return conv1, conv2, conv3, proj


def check(out_nhwc, x_nhwc, p, mask, group_size, stride, n_check=16):
    """Relative RMS error of the dynamic output against the dense masked reference on the first samples."""
    x = x_nhwc[:n_check]
    residual = None
    if "wd" in p:
        residual = F.conv2d(x.permute(0, 3, 1, 2).float(), p["wd"].float(), p["bd"].float(), stride=stride)
        residual = residual.to(x.dtype).permute(0, 2, 3, 1)
    *_, out_ref = ref.dense_masked_bottleneck_ref(
        x, p["w1"], p["b1"], p["w2"], p["b2"], p["w3"], p["b3"], mask[:n_check], group_size, stride, residual
    )
    a, b = out_nhwc[:n_check].double(), out_ref.double()
    return ((a - b).norm() / b.norm()).item()


def run_sweep(args, results, log):
    """Time each kernel alone over SWEEP configs at rate 0.5, G = 16; returns the best config per (stage, kernel)."""
    best = {}
    for spec in BLOCKS:
        if (
            spec[0] in ("s2", "s3") and spec[0] in args.blocks
        ):  # stage 1 has stage 2's Triton specialization: it reuses stage 2's choice
            best.update(_sweep_stage(spec, args.batch, results, log))
    best.update({("s1", k): cfg for (s, k), cfg in list(best.items()) if s == "s2"})
    return best


def _sweep_stage(spec, batch, results, log):
    name, size, cin, width, cout, stride, first = spec
    p = make_params(cin, width, cout, first)
    packed = ch.pack_bottleneck_weights(p["w1"], p["w2"], p["w3"])
    x = torch.randn(batch, size, size, cin, device=DEVICE, dtype=torch.bfloat16)
    mask = random_mask(batch, width // 16, 0.5, seed=1)
    idx, counts = ch.channel_index(mask, 16)
    h1 = ch.channel_conv1x1_out(x, packed[0], p["b1"], idx, counts)
    h2 = ch.channel_conv3x3(h1, packed[1], p["b2"], idx, counts, stride, group_size=16)
    out = torch.empty_like(x)
    c1, c2, c3, _ = block_flops(size, cin, width, cout, stride, counts)
    kmax = idx.shape[1]
    nbytes = {
        "conv1x1_out": 2 * (x.numel() + batch * size * size * kmax),
        "conv3x3": 2 * 2 * batch * size * size * kmax,
        "conv1x1_in": 2 * (batch * size * size * kmax + 2 * x.numel()),
    }
    flops = {"conv1x1_out": c1, "conv3x3": c2, "conv1x1_in": c3}
    runs = {
        "conv1x1_out": lambda cfg: ch.channel_conv1x1_out(x, packed[0], p["b1"], idx, counts, config=cfg),
        "conv3x3": lambda cfg: ch.channel_conv3x3(h1, packed[1], p["b2"], idx, counts, 1, 16, config=cfg),
        "conv1x1_in": lambda cfg: ch.channel_conv1x1_in(h2, packed[2], p["b3"], idx, counts, x, out, config=cfg),
    }
    best = {}
    for kernel, configs in SWEEP.items():
        run = runs[kernel]
        expected = run(None).double()
        timings = []
        for cfg in configs:
            try:
                err = ((run(cfg).double() - expected).norm() / expected.norm()).item()
                ms = bench(lambda cfg=cfg, run=run: run(cfg))
            except Exception as exc:  # a config can exceed shared memory; record and go on
                log(f"sweep {name} {kernel} {cfg}: failed {type(exc).__name__}: {str(exc)[:120]}")
                continue
            row = dict(
                stage=name, kernel=kernel, config=cfg, ms=ms, err_vs_default=err,
                tflops=flops[kernel] / ms / 1e9, gbps=nbytes[kernel] / ms / 1e6,
            )  # fmt: skip
            results["sweep"].append(row)
            timings.append((ms, cfg))
            log(f"sweep {name:3s} {kernel:11s} {cfg} {ms * 1e3:7.1f} us {row['tflops']:6.1f} TFLOP/s "
                f"{row['gbps']:6.0f} GB/s err {err:.1e}")  # fmt: skip
        if timings:
            best[(name, kernel)] = min(timings, key=lambda t: t[0])[1]
    idx_ms = bench(lambda: ch.channel_index(mask, 16, kmax=width))
    results["sweep"].append(dict(stage=name, kernel="channel_index", ms=idx_ms))
    log(f"sweep {name:3s} channel_index {idx_ms * 1e3:7.1f} us")
    return best


def run_blocks(args, best, results, log, save):
    for spec in BLOCKS:
        if spec[0] in args.blocks:
            _bench_block(spec, args, best, results, log, save)


def _bench_block(spec, args, best, results, log, save):
    name, size, cin, width, cout, stride, first = spec
    p = make_params(cin, width, cout, first)
    packed = ch.pack_bottleneck_weights(p["w1"], p["w2"], p["w3"])
    x_nchw = torch.randn(args.batch, cin, size, size, device=DEVICE, dtype=torch.bfloat16)
    x_nchw = x_nchw.contiguous(memory_format=torch.channels_last)
    x_nhwc = x_nchw.permute(0, 2, 3, 1)
    stage = name.split("_")[0]
    configs = {k: best[(stage, k)] for k in SWEEP if (stage, k) in best}
    static_eager = bench(lambda: static_block(x_nchw, p, stride))
    static_graph = bench(graph_of(lambda: static_block(x_nchw, p, stride)))
    statics = [static_eager, static_graph]
    dense = block_flops(size, cin, width, cout, stride, torch.full((args.batch,), width))
    cases = [(g, r) for g in (args.groups_first if first else args.groups) for r in args.rates]
    if not first:  # the G sweep at a fixed rate
        cases += [(g, args.sweep_rate) for g in args.sweep_groups if g not in args.groups]
    for group_size, rate in cases:
        mask = random_mask(args.batch, width // group_size, rate, seed=group_size * 100 + int(rate * 100))
        out = None if first else torch.empty_like(x_nhwc)

        def dyn(kmax, mask=mask, group_size=group_size, out=out):
            return dynamic_block(x_nhwc, x_nchw, p, packed, mask, group_size, stride, kmax, out, configs)

        err = max(check(dyn(None), x_nhwc, p, mask, group_size, stride),
                  check(dyn(width), x_nhwc, p, mask, group_size, stride))  # fmt: skip
        eager = bench(lambda dyn=dyn: dyn(None))
        eager_nosync = bench(lambda dyn=dyn: dyn(width))
        graph = bench(graph_of(lambda dyn=dyn: dyn(width)))
        counts = ref.expand_channel_mask(mask, group_size).sum(1)
        flops = block_flops(size, cin, width, cout, stride, counts)
        row = dict(
            block=name, size=size, cin=cin, width=width, cout=cout, stride=stride, group_size=group_size,
            rate=rate, density=counts.float().mean().item() / width, kmax_sync=int(counts.max()),
            flops_ratio=sum(flops) / sum(dense),
            static_eager_ms=static_eager, static_graph_ms=static_graph, static_compiled_ms=None,
            dynamic_eager_ms=eager, dynamic_eager_nosync_ms=eager_nosync, dynamic_graph_ms=graph,
            r_graph=graph / static_graph, r_eager=eager / static_eager,
            r_best=min(graph, eager, eager_nosync) / min(statics), rel_err=err,
        )  # fmt: skip
        results["blocks"].append(row)
        save()
        log(f"{name:8s} G={group_size:2d} rate={rate:.2f} dens={row['density']:.2f} "
            f"static {static_eager * 1e3:6.1f}/{static_graph * 1e3:6.1f} us  dyn {eager * 1e3:6.1f}/"
            f"{graph * 1e3:6.1f} us nosync {eager_nosync * 1e3:6.1f} us  r_graph {row['r_graph']:.2f} "
            f"r_eager {row['r_eager']:.2f} "
            f"r_best {row['r_best']:.2f} err {err:.1e}")  # fmt: skip
        if err > 2e-2:
            log(f"  !! {name} G={group_size} rate={rate}: output differs from the dense masked reference")
    if args.compile and time.time() - args.t_start < args.compile_deadline:
        # after the dynamic cases (and saved), since compiling can take long: a run cut short keeps the rest
        t0 = time.time()
        try:
            compiled = torch.compile(static_block)
            compiled(x_nchw, p, stride)
            static_compiled = bench(lambda: compiled(x_nchw, p, stride))
        except Exception as exc:
            log(f"compile {name} failed: {type(exc).__name__}: {str(exc)[:200]}")
            return
        log(f"compile {name}: {time.time() - t0:.0f} s, {static_compiled * 1e3:.1f} us")
        for row in results["blocks"]:
            if row["block"] == name:
                best_static = min(static_eager, static_graph, static_compiled)
                fastest = min(row["dynamic_graph_ms"], row["dynamic_eager_ms"], row["dynamic_eager_nosync_ms"])
                row.update(static_compiled_ms=static_compiled, r_compiled=row["dynamic_graph_ms"] / static_compiled,
                           r_best=fastest / best_static)  # fmt: skip
        save()


def bucketed_block(x_nchw, p, mask, group_size, stride):
    """Alternative: group samples by identical mask pattern, run cuDNN per group with gathered weights."""
    patterns, inverse = torch.unique(mask, dim=0, return_inverse=True)
    identity = F.conv2d(x_nchw, p["wd"], p["bd"], stride=stride) if "wd" in p else x_nchw
    out = torch.empty_like(identity)
    for j in range(patterns.shape[0]):
        samples = torch.nonzero(inverse == j).flatten()
        act = torch.nonzero(ref.expand_channel_mask(patterns[j : j + 1], group_size)[0]).flatten()
        xs = x_nchw[samples]
        if act.numel():
            h = F.conv2d(xs, p["w1"][act], p["b1"][act]).relu_()
            h = F.conv2d(h, p["w2"][act][:, act], p["b2"][act], stride=stride, padding=1).relu_()
            y = F.conv2d(h, p["w3"][:, act], p["b3"])
        else:
            y = p["b3"][None, :, None, None]
        out[samples] = (y + identity[samples]).relu_()
    return out, patterns.shape[0]


def run_bucket(args, results, log):
    name, size, cin, width, cout, stride, first = next(b for b in BLOCKS if b[0] == "s3")
    p = make_params(cin, width, cout, first)
    x = torch.randn(args.batch, cin, size, size, device=DEVICE, dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    static = bench(lambda: static_block(x, p, stride))
    for group_size in (g for g in (32, 64, 128) if width % g == 0 and g < width):
        mask = random_mask(args.batch, width // group_size, 0.5, seed=7)
        _, n_patterns = bucketed_block(x, p, mask, group_size, stride)
        ms = bench(lambda mask=mask, group_size=group_size: bucketed_block(x, p, mask, group_size, stride)[0])
        results["bucket"].append(dict(block=name, group_size=group_size, rate=0.5, patterns=n_patterns, ms=ms,
                                      static_eager_ms=static, r=ms / static))  # fmt: skip
        log(f"bucket {name} G={group_size} patterns={n_patterns} {ms * 1e3:.1f} us static {static * 1e3:.1f} us "
            f"r {ms / static:.2f}")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_channel.json")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--blocks", default="s3,s2,s1,s3_first,s2_first", help="blocks to time (BLOCKS names)")
    parser.add_argument("--rates", default="0.25,0.5,0.75,1.0")
    parser.add_argument("--groups", default="1,8,32", help="G measured at every rate")
    parser.add_argument("--groups-first", default="8,32", help="G measured at every rate, first blocks")
    parser.add_argument("--sweep-groups", default="1,2,4,8,16,32", help="G measured at --sweep-rate")
    parser.add_argument("--sweep-rate", type=float, default=0.5)
    parser.add_argument("--sweep", action="store_true", help="tune tile configs per stage first")
    parser.add_argument("--bucket", action="store_true", help="also time the bucket-by-pattern alternative")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the static block")
    parser.add_argument("--compile-deadline", type=float, default=1e9, help="no compile after this many seconds")
    parser.add_argument("--commit", default="unknown")
    args = parser.parse_args(argv)
    args.blocks = args.blocks.split(",")
    args.rates = [float(r) for r in args.rates.split(",")]
    args.groups = [int(g) for g in args.groups.split(",")]
    args.groups_first = [int(g) for g in args.groups_first.split(",")]
    args.sweep_groups = [int(g) for g in args.sweep_groups.split(",") if g]
    if not torch.cuda.is_available():
        print("bench_channel needs a CUDA device", file=sys.stderr)
        return 2
    import triton

    torch.backends.cudnn.benchmark = True
    results = dict(
        meta=dict(
            device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
            cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), python=platform.python_version(),
            commit=args.commit, batch=args.batch, dtype="bfloat16", layout="NHWC / channels_last",
            timing="triton.testing.do_bench median, L2 flushed before each call",
            date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        ),
        sweep=[], blocks=[], bucket=[],
    )  # fmt: skip
    t0 = args.t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    def save():
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    best = {}
    if args.sweep:
        try:
            best = run_sweep(args, results, log)
        except Exception:  # keep going: the block table is worth having with default configs
            log("sweep failed:\n" + traceback.format_exc())
        results["meta"]["best_configs"] = {f"{s}/{k}": cfg for (s, k), cfg in best.items()}
        save()
    try:
        run_blocks(args, best, results, log, save)
    except Exception:
        log("blocks failed:\n" + traceback.format_exc())
    save()
    if args.bucket:
        try:
            run_bucket(args, results, log)
        except Exception:
            log("bucket failed:\n" + traceback.format_exc())
        save()
    log("summary (r_graph = dynamic CUDA graph / static CUDA graph):")
    for row in results["blocks"]:
        if row["rate"] == 0.5 or row["group_size"] == 16:
            log(f"  {row['block']:8s} G={row['group_size']:2d} rate={row['rate']:.2f} r_graph={row['r_graph']:.2f} "
                f"r_eager={row['r_eager']:.2f} flops={row['flops_ratio']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
