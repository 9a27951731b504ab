"""The count-aware row GEMMs of the capturable deployed ViT (`laudnet.kernels.rows_linear`) against cuBLAS on the
same rows, on DeiT-S shapes at batch 128: each tile configuration, replayed from a CUDA graph, median of CUDA-event
timings. cuBLAS runs on the rows already gathered and contiguous (what an exact, host-synchronised packing gives
it), so its time is the GEMM alone; the row kernels gather, activate and scatter-add inside. Also norm2 as its own
kernel on the listed rows, against PyTorch's LayerNorm over every row.

Run on the GPU: ``python benchmarks/bench_rows_kernels.py --out rows.json --commit $(git rev-parse --short HEAD)``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from laudnet.kernels import rows_ref, token_ref
from laudnet.kernels.rows import rows_linear_triton
from laudnet.kernels.spatial import GemmConfig
from laudnet.kernels.token import rows_layer_norm_triton
from laudnet.timing import time_graph

CONFIGS = {f"m{m}_n{n}_k{k}_w{w}_s{s}": GemmConfig(m, n, k, w, s) for m, n, k, w, s in [
    (128, 128, 64, 8, 3), (128, 128, 64, 4, 3), (128, 128, 64, 4, 4), (128, 64, 64, 4, 3), (128, 256, 64, 8, 3),
    (64, 128, 64, 4, 4), (64, 64, 64, 4, 3), (256, 128, 64, 8, 3), (128, 128, 32, 4, 4), (64, 256, 64, 8, 3),
    (128, 128, 128, 8, 2), (128, 64, 128, 4, 3), (64, 128, 128, 4, 3)]}  # K = 384: three 128-wide K steps
# (name, Cin, Cout, form): the GEMMs of one DeiT-S block. "qkv, half the heads": each sample keeps 3 of 6 heads.
OPS = [("q/k/v (gather)", 384, 384, "gather"), ("qkv as one (planes)", 384, 1152, "planes"),
       ("qkv, half the heads", 384, 1152, "heads"), ("fc1 + GELU (packed)", 384, 1536, "gelu"),
       ("fc2 + residual add", 1536, 384, "scatter"), ("proj + residual add", 384, 384, "scatter")]
HEADS, TOKENS = 6, 197


def row_gemm(form, src, wt, bias, perm, cnt, keep, res, batch):
    """The row kernel of one op as call(config), and the reference's arguments for the same op."""
    if form == "scatter":  # src is already packed (the attention / hidden rows), the output scattered
        out = res.clone()

        def call(cfg):
            return rows_linear_triton(src, wt, bias, None, cnt, out=out, out_idx=perm, keep=keep, config=cfg)
        return call, dict(in_idx=None, out=res.float(), out_idx=perm, keep=keep)
    kw = {"gather": dict(in_idx=perm), "planes": dict(in_idx=perm, planes=3), "gelu": dict(in_idx=None, act="gelu"),
          "heads": dict(in_idx=perm, planes=3, heads=(torch.arange(batch * HEADS, device=src.device).view(
              batch, HEADS) % 2 == 0, TOKENS))}[form]

    def call(cfg):
        return rows_linear_triton(src, wt, bias, count=cnt, config=cfg, **kw)
    return call, kw


def ms(fn, repeats: int) -> float:
    return time_graph(fn, repeats=repeats) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--rates", nargs="+", type=float, default=[0.5, 1.0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    cap = args.batch * args.tokens
    gen = torch.Generator(device=dev).manual_seed(0)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, commit=args.commit,
                triton=__import__("triton").__version__, batch=args.batch, tokens=args.tokens)
    rows = []
    for rate in args.rates:
        count = int(cap * rate)
        perm = torch.randperm(cap, device=dev, generator=gen).to(torch.int32)  # packed rows: positions in any order
        cnt = torch.tensor([count], device=dev, dtype=torch.int32)
        keep = torch.arange(cap, device=dev) < count
        x = torch.randn(cap, 384, device=dev, dtype=dt, generator=gen)
        lnw, lnb = (torch.randn(384, device=dev, dtype=dt, generator=gen) for _ in range(2))
        z = rows_layer_norm_triton(x, perm, cnt, lnw, lnb, 1e-6)
        ref = token_ref.rows_layer_norm_ref(x.float(), perm, cnt, lnw.float(), lnb.float(), 1e-6)
        row = dict(rate=rate, rows=count, op="norm2 (rows LayerNorm)", cin=384, cout=384,
                   rel_error=float((z[:count].float() - ref[:count]).abs().max() / ref[:count].abs().max()),
                   torch_full_ms=ms(lambda a=(x, (384,), lnw, lnb, 1e-6): F.layer_norm(*a), args.repeats),
                   default_ms=ms(lambda a=(x, perm, cnt, lnw, lnb, 1e-6): rows_layer_norm_triton(*a), args.repeats))
        rows.append(row)
        print(f"rate {rate} {row['op']:22s} torch LayerNorm on all rows {row['torch_full_ms']:.3f}  "
              f"rows kernel {row['default_ms']:.3f}", flush=True)
        for name, cin, cout, form in OPS:
            src = torch.randn(cap, cin, device=dev, dtype=dt, generator=gen)
            wt = torch.randn(cin, cout, device=dev, dtype=dt, generator=gen) / cin**0.5
            bias = torch.randn(cout, device=dev, dtype=dt, generator=gen)
            w = wt.t().contiguous()
            res = torch.randn(cap, cout, device=dev, dtype=dt, generator=gen)
            dense_in = src[perm[:count].long()].contiguous() if form != "gelu" else src[:count]
            call, ref_args = row_gemm(form, src, wt, bias, perm, cnt, keep, res, args.batch)
            ref = rows_ref.rows_linear_ref(src.float(), wt.float(), bias.float(), count=cnt, **ref_args)
            got = call(None).float()
            if form == "scatter":
                got, ref = got[perm[:count].long()], ref[perm[:count].long()]
            elif got.dim() == 3:
                got, ref = got[:, :count], ref[:, :count]
            else:
                got, ref = got[:count], ref[:count]
            err = float((got - ref).abs().max() / ref.abs().max())
            row = dict(rate=rate, rows=count, op=name, cin=cin, cout=cout, rel_error=err,
                       cublas_ms=ms(lambda a=dense_in, w=w, b=bias: F.linear(a, w, b), args.repeats),
                       default_ms=ms(lambda call=call: call(None), args.repeats),
                       configs={k: ms(lambda cfg=cfg, call=call: call(cfg), args.repeats)
                                for k, cfg in CONFIGS.items()})
            row["tflops"] = 2 * count * cin * cout / 1e9 / row["default_ms"]  # GFLOP / ms = TFLOP/s
            rows.append(row)
            best = min(row["configs"], key=row["configs"].get)
            print(f"rate {rate} {name:22s} cuBLAS (all heads) {row['cublas_ms']:.3f}  default {row['default_ms']:.3f}"
                  f"  best {best} {row['configs'][best]:.3f}  err {err:.1e}",
                  flush=True)
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
