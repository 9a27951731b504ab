"""Block-level latency of spatial and layer skipping against the static dense block, measured on one GPU.

For the ResNet-50/101 bottleneck of stages 1-3 (the two models share these shapes), batch 128, bf16, BN folded,
channels_last, non-first blocks (stride 1, identity residual):

* static: cuDNN conv1 -> conv2 -> conv3, bias + ReLU, add + ReLU (eager; timed as a CUDA-graph replay and eagerly);
* spatial: conv1 (dense cuDNN, or `pixel_conv1x1` on the dilated region) -> `gather_conv3x3` ->
  `conv1x1_scatter_add` in place, for S in {1, 2, 4, 7/8} and activation rate in {0.25, 0.5, 0.75, 1.0};
* layer: the block on the compacted sub-batch (`index_select` + cuDNN, or conv1 fused with the gather) ->
  `rows_add_relu_` in place.

r_l = dynamic / static, both from the same run. Index building (mask -> patch_idx / pixel list, one host sync) is
timed separately: it belongs to the masker, not to the kernels. Results go to a JSON file, written after every case
so a run cut short still leaves its numbers.

    python benchmarks/bench_spatial.py --out results.json [--sweep] [--compile] [--budget-s 240]
    python benchmarks/bench_spatial.py --report results.json     # markdown tables for NOTES-spatial.md
    python benchmarks/bench_spatial.py --smoke --batch 2         # tiny shapes on CPU (Triton interpreter)
"""

# Closures below are built and called within one loop iteration (timed right away), so the loop-variable binding
# that B023 warns about cannot go stale.
# ruff: noqa: B023

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from laudnet import kernels as K
from laudnet.kernels import spatial
from laudnet.timing import time_call, time_graph

# stage -> (map size, block input/output channels, bottleneck width)
STAGES = {1: (56, 256, 64), 2: (28, 512, 128), 3: (14, 1024, 256)}
PATCH_SIZES = {
    1: (4, 1, 2, 8),
    2: (4, 1, 2, 7),
    3: (4, 1, 2, 7),
}  # S=4 first (the target); on 14x14 it has partial patches
RATES = (0.25, 0.5, 0.75, 1.0)
SMOKE = False  # --smoke: tiny shapes on CPU under TRITON_INTERPRET=1, to check the script itself without a GPU
DEV = "cuda"


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def _smoke_ms(fn) -> float:
    """Milliseconds of one wall-clock call of fn, without warm-up (`--smoke`: checks the script, not the numbers)."""
    return 1e3 * time_call(fn, "cpu", repeats=1, warmup=0)


def _median_graph_ms(fn, reps: int = 30) -> float:
    """Capture `fn` in a CUDA graph and return the median replay time in ms (events around each replay; two warm-up
    calls before the capture — Triton compile, cuDNN heuristics, allocator — and three replays before the timing)."""
    if SMOKE:
        return _smoke_ms(fn)
    return 1e3 * time_graph(fn, repeats=reps, warmup=3, capture_warmup=2)


def _median_eager_ms(fn, reps: int = 20) -> float:
    """Median eager time in ms of `fn` (host launch overhead included), after warm-up."""
    if SMOKE:
        return _smoke_ms(fn)
    return 1e3 * time_call(fn, "cuda", repeats=reps, warmup=3)


def _err_ratio(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


class Block:
    """A folded bottleneck block (random weights) with its static and dynamic forward passes."""

    def __init__(self, size: int, cin: int, width: int, batch: int, dtype: torch.dtype):
        dev = DEV
        self.size, self.cin, self.width, self.batch = size, cin, width, batch

        def w(*shape, fan):
            return (
                (torch.randn(shape, device=dev) * (2.0 / fan) ** 0.5)
                .to(dtype)
                .contiguous(memory_format=torch.channels_last)
            )

        self.w1, self.b1 = w(width, cin, 1, 1, fan=cin), (0.1 * torch.randn(width, device=dev)).to(dtype)
        self.w2, self.b2 = w(width, width, 3, 3, fan=9 * width), (0.1 * torch.randn(width, device=dev)).to(dtype)
        # small conv3 so that repeated in-place residual updates stay bounded during timing
        self.w3 = (w(cin, width, 1, 1, fan=width) * 0.05).contiguous(memory_format=torch.channels_last)
        self.b3 = (0.01 * torch.randn(cin, device=dev)).to(dtype)
        self.w1p, self.w2p, self.w3p = K.pack_conv1x1_weight(self.w1), K.pack_conv3x3_weight(self.w2), None
        self.w3p = K.pack_conv1x1_weight(self.w3)
        x = torch.randn(batch, cin, size, size, device=dev).to(dtype)
        self.x = x.contiguous(memory_format=torch.channels_last)  # NCHW view of NHWC memory

    # -- static ---------------------------------------------------------------------------------------------
    def branch(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, self.w1, self.b1).relu_()
        h = F.conv2d(h, self.w2, self.b2, padding=1).relu_()
        return F.conv2d(h, self.w3, self.b3)

    def static(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x).add_(x).relu_()

    # -- spatial --------------------------------------------------------------------------------------------
    def spatial(self, x_nhwc, pidx, s, pix=None, cfg3=None, cfg1=None):
        if pix is None:
            h1 = F.conv2d(x_nhwc.permute(0, 3, 1, 2), self.w1, self.b1).relu_().permute(0, 2, 3, 1)
        else:
            h1 = spatial.pixel_conv1x1_triton(x_nhwc, self.w1p, self.b1, pix)
        h2 = spatial.gather_conv3x3_triton(h1, self.w2p, self.b2, pidx, s, 1, config=cfg3)
        return spatial.conv1x1_scatter_add_triton(h2, self.w3p, self.b3, x_nhwc, pidx, s, config=cfg1)

    def spatial_syncfree(self, x_nhwc, mask, s):
        """Whole deploy path from the coarse mask, no host sync (CUDA-graph capturable): index lists built on the
        device with a count, capacity-sized launches."""
        pidx, count = K.mask_to_patch_list(mask)
        region = K.conv1_pixel_mask(mask, s, 1, (self.size, self.size))
        pix, pcount = K.pixel_mask_to_idx_padded(region)
        h1 = spatial.pixel_conv1x1_triton(x_nhwc, self.w1p, self.b1, pix, count=pcount)
        h2 = spatial.gather_conv3x3_triton(h1, self.w2p, self.b2, pidx, s, 1, count=count)
        return spatial.conv1x1_scatter_add_triton(h2, self.w3p, self.b3, x_nhwc, pidx, s, count=count)

    # -- layer ----------------------------------------------------------------------------------------------
    def layer_as_spatial(self, x_nhwc, pidx, rows):
        """Layer skipping through the spatial kernels: one patch of S = map size per active sample."""
        h1 = spatial.pixel_conv1x1_triton(x_nhwc, self.w1p, self.b1, rows)
        h2 = spatial.gather_conv3x3_triton(h1, self.w2p, self.b2, pidx, self.size, 1)
        return spatial.conv1x1_scatter_add_triton(h2, self.w3p, self.b3, x_nhwc, pidx, self.size)

    def layer(self, x_nhwc, idx, fused_gather: bool, pix_rows=None):
        n = idx.shape[0]
        if fused_gather:
            h1 = spatial.pixel_conv1x1_triton(x_nhwc, self.w1p, self.b1, pix_rows, compact=True)
            h1 = h1.view(n, self.size, self.size, self.width).permute(0, 3, 1, 2)
            h = F.conv2d(h1, self.w2, self.b2, padding=1).relu_()
            y = F.conv2d(h, self.w3, self.b3)
        else:
            xs = x_nhwc.index_select(0, idx).permute(0, 3, 1, 2)  # NHWC rows are contiguous: channels_last stays
            y = self.branch(xs)
        return K.rows_add_relu_(x_nhwc, y.permute(0, 2, 3, 1), idx)


def _random_patch_mask(batch, grid, rate, gen) -> torch.Tensor:
    """Exactly round(rate * gh * gw) active patches per sample, at random places."""
    gh, gw = grid
    k = max(1, round(rate * gh * gw))
    scores = torch.rand((batch, gh * gw), generator=gen, device=DEV)
    mask = torch.zeros((batch, gh * gw), dtype=torch.bool, device=DEV)
    mask.scatter_(1, scores.topk(k, dim=1).indices, True)
    return mask.view(batch, gh, gw)


def _flops_bytes(size, cin, width, batch, frac_out, frac_c1, elem=2):
    """(GFLOP, GB) lower bounds of one block: each active input read once, each output written once."""
    hw = batch * size * size
    fl = 2 * hw * (cin * width * frac_c1 + 9 * width * width * frac_out + width * cin * frac_out)
    by = elem * hw * (cin * frac_c1 + width * frac_c1 + width * frac_out * 1.0 + cin * frac_out * 2 + width * frac_out)
    return fl / 1e9, by / 1e9


def render_tables(result: dict) -> str:
    """Markdown tables (block r_l for spatial and layer skipping) from a results JSON, for NOTES-spatial.md."""
    lines = [
        f"{result['device']}, torch {result['torch']}, triton {result['triton']}, commit {result['commit']}, "
        f"batch {result['batch']}, {result['dtype']}; times are medians of CUDA-graph replays (ms).",
        "",
        "| stage | S | rate | static eager | static compiled | dynamic | r_l (eager) | r_l (compiled) "
        "| sync-free dynamic | r_l sync-free (compiled) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(result["spatial"], key=lambda r: (r["stage"], r["S"], r["rate"])):
        dyn = min(r["dense_conv1_graph_ms"], r["sparse_conv1_graph_ms"])
        comp = r.get("static_compile_graph_ms") or float("nan")
        lines.append(
            f"| {r['stage']} | {r['S']} | {r['rate']} | {r['static_graph_ms']:.3f} | {comp:.3f} | {dyn:.3f} "
            f"| {r['r_l']:.2f} | {dyn / comp:.2f} | {r['syncfree_graph_ms']:.3f} "
            f"| {r['syncfree_graph_ms'] / comp:.2f} |"
        )
    lines += [
        "",
        "| stage | rate | static eager | static compiled | index_select + cuDNN | conv1 gather-fused | spatial kernels "
        "(S = map) | r_l best (eager) | r_l best (compiled) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["layer"]:
        best = min(r["index_select_graph_ms"], r["fused_gather_graph_ms"], r["as_spatial_graph_ms"])
        comp = r.get("static_compile_graph_ms") or float("nan")
        lines.append(
            f"| {r['stage']} | {r['rate']} | {r['static_graph_ms']:.3f} | {comp:.3f} "
            f"| {r['index_select_graph_ms']:.3f} | {r['fused_gather_graph_ms']:.3f} | {r['as_spatial_graph_ms']:.3f} "
            f"| {best / r['static_graph_ms']:.2f} | {best / comp:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_spatial.json"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--sweep", action="store_true", help="sweep the named tile configs at S=4, rate 0.5")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the static block (best static)")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop starting new cases after this many seconds")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under the Triton interpreter")
    ap.add_argument("--report", type=Path, help="print the markdown tables of a results JSON and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(render_tables(json.loads(args.report.read_text())))
        return 0
    global SMOKE, DEV, STAGES, PATCH_SIZES
    if args.smoke:
        import os

        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["LAUDNET_KERNELS"] = "triton"
        SMOKE, DEV = True, "cpu"
        STAGES = {1: (8, 32, 16), 2: (7, 32, 16), 3: (5, 16, 16)}
        PATCH_SIZES = {1: (1, 4), 2: (2, 4), 3: (4,)}
    elif not torch.cuda.is_available():
        raise SystemExit("bench_spatial needs a CUDA device (or --smoke)")
    t_start = time.time()
    torch.backends.cudnn.benchmark = True
    import triton

    result = {
        "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "commit": args.commit,
        "batch": args.batch,
        "dtype": "bfloat16",
        "timing": "median of 30 CUDA-graph replays (graph_ms) / 20 eager calls (eager_ms), CUDA events",
        "static": [],
        "spatial": [],
        "spatial_kernels": [],
        "layer": [],
        "sweep": [],
        "checks": [],
        "skipped": [],
    }

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))

    def over_budget(what: str) -> bool:
        if time.time() - t_start > args.budget_s:
            result["skipped"].append(what)
            return True
        return False

    gen = torch.Generator(device=DEV).manual_seed(0)
    stages = [int(s) for s in args.stages.split(",")]
    dtype = torch.float32 if SMOKE else torch.bfloat16
    blocks = {st: Block(*STAGES[st], args.batch, dtype) for st in stages}

    # ---- static baselines + correctness on the real shapes
    static_ms, compiled_ms = {}, {}
    for st, blk in blocks.items():
        g = _median_graph_ms(lambda blk=blk: blk.static(blk.x))
        e = _median_eager_ms(lambda blk=blk: blk.static(blk.x))
        fl, by = _flops_bytes(blk.size, blk.cin, blk.width, args.batch, 1.0, 1.0)
        static_ms[st] = g
        row = dict(stage=st, size=blk.size, cin=blk.cin, width=blk.width, graph_ms=g, eager_ms=e, gflop=fl, gb=by)
        if args.compile:  # the best static baseline: inductor fuses bias/add/ReLU around the cuDNN convs
            t0 = time.time()
            fn = torch.compile(blk.static)
            fn(blk.x)
            _sync()
            row["compile_s"] = time.time() - t0
            row["compile_graph_ms"] = _median_graph_ms(lambda fn=fn, blk=blk: fn(blk.x))
            compiled_ms[st] = row["compile_graph_ms"]
        result["static"].append(row)
        # spatial S=4 rate 0.5 and layer rate 0.5 against the dense block masked
        s = 4
        grid = K.patch_grid((blk.size, blk.size), s)
        mask = _random_patch_mask(args.batch, grid, 0.5, gen)
        pidx = K.mask_to_patch_idx(mask)
        dense = blk.static(blk.x).permute(0, 2, 3, 1)
        x_nhwc = blk.x.permute(0, 2, 3, 1).clone()
        pm = K.patch_mask_to_pixel_mask(mask, s, (blk.size, blk.size))
        expect = torch.where(pm[..., None], dense, x_nhwc)
        for conv1 in ("dense", "sparse"):
            xw = x_nhwc.clone()
            pix = K.pixel_mask_to_idx(K.conv1_pixel_mask(mask, s, 1, (blk.size,) * 2)) if conv1 == "sparse" else None
            blk.spatial(xw, pidx, s, pix)
            result["checks"].append(dict(stage=st, op=f"spatial_S4_r0.5_conv1_{conv1}", err=_err_ratio(xw, expect)))
        xw = x_nhwc.clone()
        blk.spatial_syncfree(xw, mask, s)
        result["checks"].append(dict(stage=st, op="spatial_S4_r0.5_syncfree", err=_err_ratio(xw, expect)))
        idx = torch.randperm(args.batch, device=DEV)[: args.batch // 2].sort().values
        for fused in (False, True):
            xw = x_nhwc.clone()
            rows = K.samples_to_pixel_idx(idx, blk.size * blk.size)
            blk.layer(xw, idx, fused, rows)
            lexp = x_nhwc.clone()
            lexp[idx] = dense[idx]
            result["checks"].append(dict(stage=st, op=f"layer_r0.5_fused{int(fused)}", err=_err_ratio(xw, lexp)))
        xw = x_nhwc.clone()
        blk.layer_as_spatial(xw, K.samples_to_patch_idx(idx), K.samples_to_pixel_idx(idx, blk.size * blk.size))
        result["checks"].append(dict(stage=st, op="layer_r0.5_as_spatial", err=_err_ratio(xw, lexp)))
        save()
        print(f"stage {st}: static {row} checks {result['checks'][-6:]}", flush=True)

    # ---- spatial skipping
    # the target granularity S=4 on every stage first, so a run cut short by the budget still has it
    cases = sorted(((st, s) for st in blocks for s in PATCH_SIZES[st]), key=lambda c: (c[1] != 4, c[0]))
    for st, s in cases:
        blk = blocks[st]
        hw = (blk.size, blk.size)
        x0 = blk.x.permute(0, 2, 3, 1).clone()
        grid = K.patch_grid(hw, s)
        for rate in RATES:
            if over_budget(f"spatial stage{st} S{s} r{rate}"):
                continue
            mask = _random_patch_mask(args.batch, grid, rate, gen)
            real_rate = K.patch_mask_to_pixel_mask(mask, s, hw).float().mean().item()
            _sync()
            t0 = time.perf_counter()
            pidx = K.mask_to_patch_idx(mask)
            _sync()
            t1 = time.perf_counter()
            region = K.conv1_pixel_mask(mask, s, 1, hw)
            pix = K.pixel_mask_to_idx(region)
            _sync()
            t2 = time.perf_counter()
            c1 = region.float().mean().item()
            xw = x0.clone()
            gd = _median_graph_ms(lambda xw=xw, pidx=pidx, s=s: blk.spatial(xw, pidx, s))
            gs = _median_graph_ms(lambda xw=xw, pidx=pidx, s=s, pix=pix: blk.spatial(xw, pidx, s, pix))
            ed = _median_eager_ms(lambda xw=xw, pidx=pidx, s=s: blk.spatial(xw, pidx, s))
            gf = _median_graph_ms(lambda xw=xw, mask=mask, s=s: blk.spatial_syncfree(xw, mask, s))
            fl, by = _flops_bytes(blk.size, blk.cin, blk.width, args.batch, real_rate, 1.0)
            row = dict(
                stage=st, S=s, rate=rate, pixel_rate=real_rate, conv1_region=c1, P=int(pidx.shape[0]),
                dense_conv1_graph_ms=gd, sparse_conv1_graph_ms=gs, dense_conv1_eager_ms=ed,
                static_graph_ms=static_ms[st], r_l_dense_conv1=gd / static_ms[st],
                r_l_sparse_conv1=gs / static_ms[st], r_l=min(gd, gs) / static_ms[st],
                syncfree_graph_ms=gf, r_l_syncfree=gf / static_ms[st],
                static_compile_graph_ms=compiled_ms.get(st),
                r_l_vs_compile=min(gd, gs) / compiled_ms[st] if st in compiled_ms else None,
                r_l_syncfree_vs_compile=gf / compiled_ms[st] if st in compiled_ms else None,
                patch_idx_host_ms=(t1 - t0) * 1e3, pixel_idx_host_ms=(t2 - t1) * 1e3,
                gflop_dense_conv1=fl, gb_dense_conv1=by,
            )  # fmt: skip
            if s == 4 or (s == 7 and st == 3):  # per-kernel breakdown at the target granularity
                h1 = F.conv2d(blk.x, blk.w1, blk.b1).relu_().permute(0, 2, 3, 1)
                h2 = spatial.gather_conv3x3_triton(h1, blk.w2p, blk.b2, pidx, s, 1)
                m = h2.shape[0]
                t_c1 = _median_graph_ms(lambda: F.conv2d(blk.x, blk.w1, blk.b1).relu_())
                t_c1s = _median_graph_ms(lambda: spatial.pixel_conv1x1_triton(x0, blk.w1p, blk.b1, pix))
                t_c2 = _median_graph_ms(lambda: spatial.gather_conv3x3_triton(h1, blk.w2p, blk.b2, pidx, s, 1))
                t_c3 = _median_graph_ms(lambda: spatial.conv1x1_scatter_add_triton(h2, blk.w3p, blk.b3, xw, pidx, s))
                k2 = dict(
                    stage=st, S=s, rate=rate, rows=m, conv1_dense_ms=t_c1, conv1_sparse_ms=t_c1s,
                    gather_conv3x3_ms=t_c2, conv1x1_scatter_ms=t_c3,
                    gather_conv3x3_tflops=2 * m * 9 * blk.width**2 / t_c2 / 1e9,
                    gather_conv3x3_gbps=2 * (m * blk.width * (1 + ((s + 2) / s) ** 2)) / t_c2 / 1e6,
                    conv1x1_scatter_tflops=2 * m * blk.width * blk.cin / t_c3 / 1e9,
                    conv1x1_scatter_gbps=2 * m * (blk.width + 2 * blk.cin) / t_c3 / 1e6,
                    conv1_dense_gbps=2 * args.batch * blk.size**2 * (blk.cin + blk.width) / t_c1 / 1e6,
                )  # fmt: skip
                result["spatial_kernels"].append(k2)
            result["spatial"].append(row)
            save()
            print(
                f"spatial st{st} S{s} r{rate}: dense-c1 {gd:.3f} sparse-c1 {gs:.3f} syncfree {gf:.3f} ms "
                f"(static {static_ms[st]:.3f}) r_l {row['r_l']:.2f} c1-region {c1:.2f}",
                flush=True,
            )

    # ---- layer skipping
    for st, blk in blocks.items():
        x0 = blk.x.permute(0, 2, 3, 1).clone()
        for rate in RATES:
            if over_budget(f"layer stage{st} r{rate}"):
                continue
            n = max(1, round(rate * args.batch))
            idx = torch.randperm(args.batch, device=DEV)[:n].sort().values
            rows = K.samples_to_pixel_idx(idx, blk.size * blk.size)
            xw = x0.clone()
            t_sel = _median_graph_ms(lambda xw=xw, idx=idx: blk.layer(xw, idx, False))
            t_fus = _median_graph_ms(lambda xw=xw, idx=idx, rows=rows: blk.layer(xw, idx, True, rows))
            t_sel_e = _median_eager_ms(lambda xw=xw, idx=idx: blk.layer(xw, idx, False))
            t_sub = _median_graph_ms(lambda n=n: blk.static(blk.x[:n]))  # ideal: the block on n samples, no copies
            lp = K.samples_to_patch_idx(idx)
            t_asp = _median_graph_ms(lambda xw=xw, lp=lp, rows=rows: blk.layer_as_spatial(xw, lp, rows))
            result["layer"].append(
                dict(
                    stage=st, rate=rate, n=n, index_select_graph_ms=t_sel, fused_gather_graph_ms=t_fus,
                    index_select_eager_ms=t_sel_e, static_subbatch_graph_ms=t_sub, static_graph_ms=static_ms[st],
                    r_l=min(t_sel, t_fus) / static_ms[st], r_l_ideal=t_sub / static_ms[st],
                    as_spatial_graph_ms=t_asp, r_l_as_spatial=t_asp / static_ms[st],
                    static_compile_graph_ms=compiled_ms.get(st),
                    r_l_as_spatial_vs_compile=t_asp / compiled_ms[st] if st in compiled_ms else None,
                )
            )  # fmt: skip
            save()
            print(
                f"layer st{st} r{rate}: select {t_sel:.3f} fused {t_fus:.3f} as-spatial {t_asp:.3f} "
                f"ideal {t_sub:.3f} ms",
                flush=True,
            )

    # ---- tile-config sweep at the target point (S=4, rate 0.5)
    if args.sweep:
        for st, blk in blocks.items():
            mask = _random_patch_mask(args.batch, K.patch_grid((blk.size,) * 2, 4), 0.5, gen)
            pidx = K.mask_to_patch_idx(mask)
            h1 = F.conv2d(blk.x, blk.w1, blk.b1).relu_().permute(0, 2, 3, 1)
            h2 = spatial.gather_conv3x3_triton(h1, blk.w2p, blk.b2, pidx, 4, 1)
            xw = blk.x.permute(0, 2, 3, 1).clone()
            for name, cfg in spatial.CONV3X3_CONFIGS.items():
                if over_budget(f"sweep conv3x3 {name} stage{st}"):
                    continue
                t = _median_graph_ms(
                    lambda cfg=cfg: spatial.gather_conv3x3_triton(h1, blk.w2p, blk.b2, pidx, 4, 1, True, cfg)
                )
                result["sweep"].append(dict(stage=st, op="gather_conv3x3", config=name, ms=t))
            for name, cfg in spatial.CONV1X1_CONFIGS.items():
                if over_budget(f"sweep conv1x1 {name} stage{st}"):
                    continue
                t = _median_graph_ms(
                    lambda cfg=cfg: spatial.conv1x1_scatter_add_triton(
                        h2, blk.w3p, blk.b3, xw, pidx, 4, True, None, cfg
                    )
                )
                result["sweep"].append(dict(stage=st, op="conv1x1_scatter_add", config=name, ms=t))
            region = K.conv1_pixel_mask(mask, 4, 1, (blk.size,) * 2)
            pix = K.pixel_mask_to_idx(region)
            x0 = blk.x.permute(0, 2, 3, 1)
            for name, cfg in spatial.CONV1X1_CONFIGS.items():
                if over_budget(f"sweep pixel_conv1x1 {name} stage{st}"):
                    continue
                t = _median_graph_ms(
                    lambda cfg=cfg: spatial.pixel_conv1x1_triton(x0, blk.w1p, blk.b1, pix, True, None, False, cfg)
                )
                result["sweep"].append(dict(stage=st, op="pixel_conv1x1", config=name, ms=t))
            save()
            print("sweep", [r for r in result["sweep"] if r["stage"] == st], flush=True)

    # ---- summary table (the reply carries the end of the output)
    print("\nstage S rate  static_ms compiled_ms  dyn_ms syncfree_ms  r_l  r_l_vs_compile  syncfree_vs_compile")
    for r in result["spatial"]:
        dyn = min(r["dense_conv1_graph_ms"], r["sparse_conv1_graph_ms"])
        rc = r["r_l_vs_compile"] or float("nan")
        rf = r["r_l_syncfree_vs_compile"] or float("nan")
        cm = r["static_compile_graph_ms"] or 0.0
        print(
            f"{r['stage']:>5} {r['S']} {r['rate']:<5} {r['static_graph_ms']:8.3f} {cm:8.3f} "
            f"{dyn:7.3f} {r['syncfree_graph_ms']:7.3f} {r['r_l']:.2f} {rc:.2f} {rf:.2f}"
        )
    print("\nlayer: stage rate  static compiled  select  fused  as_spatial  ideal")
    for r in result["layer"]:
        print(
            f"{r['stage']:>5} {r['rate']:<5} {r['static_graph_ms']:.3f} {r['static_compile_graph_ms'] or 0:.3f} "
            f"{r['index_select_graph_ms']:.3f} {r['fused_gather_graph_ms']:.3f} {r['as_spatial_graph_ms']:.3f} "
            f"{r['static_subbatch_graph_ms']:.3f}"
        )
    result["elapsed_s"] = time.time() - t_start
    save()
    print(f"done in {result['elapsed_s']:.0f} s; skipped: {result['skipped']}")
    return 0 if all(math.isfinite(c["err"]) and c["err"] < 2e-2 for c in result["checks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
