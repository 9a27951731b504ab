"""Masker kernels on ResNet-101 block inputs: window sums (tiled vs per-window kernel, against a copy of the map as
the bandwidth yardstick) and the channel masker (window sums + one MLP launch vs PyTorch's five ops), each replayed
from a CUDA graph, median of CUDA-event timings.

Run on the GPU: ``python benchmarks/bench_masker_kernels.py --out masker.json --commit $(git rev-parse --short HEAD)``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from laudnet import kernels as K
from laudnet.kernels import masker
from laudnet.timing import time_graph

# (H, W, C, window) of block inputs: the masker windows of spatial 4-4-2-1 (stride-2 first blocks: 2S) and S = 1
SHAPES = [(56, 56, 256, 4), (56, 56, 256, 8), (28, 28, 512, 4), (28, 28, 512, 8), (14, 14, 1024, 2),
          (14, 14, 1024, 4), (7, 7, 2048, 1)]
# (H, W, C, width, G) of channel-skipping block inputs (hidden = max(groups // 16, 16))
CHANNEL = [(56, 56, 256, 64, 4), (28, 28, 512, 128, 4), (14, 14, 1024, 256, 4), (7, 7, 2048, 512, 4)]


def ms(fn, repeats: int) -> float:
    return time_graph(fn, repeats=repeats) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[128, 1])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dev = torch.device("cuda")
    rows = []
    for b in args.batches:
        for h, w, c, win in SHAPES:
            x = torch.randn((b, h, w, c), device=dev, dtype=torch.bfloat16)
            got, ref = K.window_sums(x, win), masker.window_sums_triton(x, win, split=1)
            err = float((got - ref).abs().max() / ref.abs().max())
            row = dict(batch=b, shape=[h, w, c], window=win, mbytes=x.numel() * 2 / 1e6, rel_error=err,
                       copy_ms=ms(lambda x=x: x.clone(), args.repeats),
                       tiled_ms=ms(lambda x=x, win=win: K.window_sums(x, win), args.repeats),
                       per_window_ms=ms(lambda x=x, win=win: masker.window_sums_triton(x, win, split=1), args.repeats))
            row["tiled_tb_s"] = row["mbytes"] / row["tiled_ms"] / 1e3  # MB/ms = GB/s
            rows.append(row)
            print(row, flush=True)
        for h, w, c, width, g in CHANNEL:
            x = torch.randn((b, h, w, c), device=dev, dtype=torch.bfloat16)
            groups = width // g
            hidden = max(groups // 16, 16)
            w1, b1 = torch.randn((hidden, c), device=dev) / c**0.5, torch.randn(hidden, device=dev)
            w2, b2 = torch.randn((groups, hidden), device=dev), torch.randn(groups, device=dev)
            xc = x.permute(0, 3, 1, 2)  # NCHW view, channels_last memory: what a deployed block receives

            def torch_masker(xc=xc, w1=w1, b1=b1, w2=w2, b2=b2):
                return F.relu(xc.mean(dim=(2, 3), dtype=torch.float32) @ w1.t() + b1) @ w2.t() + b2 >= 0

            def kernel_masker(x=x, w1=w1, b1=b1, w2=w2, b2=b2, h=h, w=w):
                sums = K.window_sums(x, K.MAP_WINDOW).view(x.shape[0], -1)
                return K.channel_masker(sums, h * w, w1, b1, w2, b2)

            agree = float((torch_masker() == kernel_masker()).float().mean())
            row = dict(batch=b, shape=[h, w, c], channel_groups=groups, hidden=hidden, agreement=agree,
                       copy_ms=ms(lambda x=x: x.clone(), args.repeats),
                       torch_masker_ms=ms(torch_masker, args.repeats), kernel_masker_ms=ms(kernel_masker, args.repeats))
            rows.append(row)
            print(row, flush=True)
    import triton

    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                commit=args.commit, args=vars(args))
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
