"""The layer-skipping block kernels against cuDNN on the same work: which tile config each ResNet stage wants.

For a middle bottleneck of each ResNet-101 stage (identity residual), batch 128 with `count` executing samples, each
op is replayed from a CUDA graph (median ms):

* cuDNN on the compacted sub-batch (`count` samples, bf16, channels_last): conv1 + bias + ReLU, conv2 + bias + ReLU,
  conv3 + bias + residual add + ReLU — the work the dynamic block does, in PyTorch's best eager form;
* the engine's kernels with a device-side count over a capacity of the whole batch (`pixel_conv1x1(per_sample=True)`,
  `gather_conv3x3`, `conv1x1_scatter_add` in place), with the default tile config and with every named config.

    python benchmarks/bench_layer_kernels.py --out layer_kernels.json --commit $(git rev-parse --short HEAD)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from functools import partial

import torch
import torch.nn.functional as F

from laudnet import kernels as K
from laudnet.kernels import spatial
from laudnet.timing import time_graph

# stage -> (map size, block channels, bottleneck width)
DEV = "cuda"
STAGES = {1: (56, 256, 64), 2: (28, 512, 128), 3: (14, 1024, 256), 4: (7, 2048, 512)}

# candidates beyond the named lists (timed here only; a config that wins moves into the lists)
EXTRA_1X1 = {"m128_n128_k64_w8_s4": spatial.GemmConfig(128, 128, 64, 8, 4),
             "m256_n128_k64_w8_s3": spatial.GemmConfig(256, 128, 64, 8, 3),
             "m128_n256_k64_w8_s4": spatial.GemmConfig(128, 256, 64, 8, 4),
             "m128_n64_k64_w4_s4": spatial.GemmConfig(128, 64, 64, 4, 4)}
# small tiles for one executing sample (batch 1: 3 136 rows or fewer fill few of the SMs with 64- or 128-row tiles)
SMALL = {"m32_n64_k64_w2_s3": spatial.GemmConfig(32, 64, 64, 2, 3),
         "m64_n32_k64_w2_s3": spatial.GemmConfig(64, 32, 64, 2, 3),
         "m32_n32_k64_w2_s3": spatial.GemmConfig(32, 32, 64, 2, 3),
         "m32_n128_k64_w4_s3": spatial.GemmConfig(32, 128, 64, 4, 3)}


def ms(fn, repeats: int = 30) -> float:
    return 1e3 * time_graph(fn, repeats=repeats)


def stage_case(stage: int, batch: int, count: int, gen: torch.Generator) -> list[dict]:
    size, c, width = STAGES[stage]
    dev, dt = DEV, (torch.bfloat16 if DEV == "cuda" else torch.float32)

    def param(*shape, scale):
        return (torch.randn(*shape, generator=gen) * scale).to(dev, dt)

    w1, w2, w3 = param(width, c, 1, 1, scale=c**-0.5), param(width, width, 3, 3, scale=(9 * width) ** -0.5), \
        param(c, width, 1, 1, scale=width**-0.5)
    b1, b2, b3 = param(width, scale=0.1), param(width, scale=0.1), param(c, scale=0.1)
    x = torch.randn(batch, c, size, size, generator=gen).to(dev, dt).to(memory_format=torch.channels_last)
    xs = x[:count].contiguous(memory_format=torch.channels_last)
    h1s = F.relu(F.conv2d(xs, w1, b1))
    h2s = F.relu(F.conv2d(h1s, w2, b2, padding=1))
    out_s = torch.empty_like(xs)
    cudnn = {"conv1": lambda: F.relu_(F.conv2d(xs, w1, b1)),
             "conv3x3": lambda: F.relu_(F.conv2d(h1s, w2, b2, padding=1)),
             "conv3+add": lambda: torch.add(F.conv2d(h2s, w3, b3), xs, out=out_s).relu_()}

    xh = x.permute(0, 2, 3, 1)
    order = torch.randperm(batch, generator=gen).to(dev, torch.int32)
    cnt = torch.tensor([count], device=dev, dtype=torch.int32)
    patches = K.samples_to_patch_idx(order)
    w1p, w3p = spatial.conv1x1_matrix(w1, c).contiguous(), spatial.conv1x1_matrix(w3, width).contiguous()
    w2p = spatial.pack_conv3x3_weight(w2).contiguous()
    h1 = spatial.pixel_conv1x1_triton(xh, w1p, b1, order, count=cnt, per_sample=True)
    h2 = spatial.gather_conv3x3_triton(h1, w2p, b2, patches, size, 1, count=cnt)
    res = xh.clone()
    ours = {"conv1": lambda cfg: spatial.pixel_conv1x1_triton(xh, w1p, b1, order, count=cnt, per_sample=True,
                                                              config=cfg),
            "conv3x3": lambda cfg: spatial.gather_conv3x3_triton(h1, w2p, b2, patches, size, 1, config=cfg,
                                                                 count=cnt),
            "conv3+add": lambda cfg: spatial.conv1x1_scatter_add_triton(h2, w3p, b3, res, patches, size, out=res,
                                                                        config=cfg, count=cnt)}
    small = SMALL if count * size * size <= 32 * 132 else {}  # fewer rows than one wave of 32-row tiles
    configs = {"conv1": {**spatial.CONV1X1_CONFIGS, **EXTRA_1X1, **small},
               "conv3x3": {**spatial.CONV3X3_CONFIGS, **small},
               "conv3+add": {**spatial.CONV1X1_CONFIGS, **EXTRA_1X1, **small}}
    rows = []
    for op, fn in cudnn.items():
        row = dict(stage=stage, op=op, batch=batch, count=count, cudnn_ms=ms(fn),
                   default_ms=ms(partial(ours[op], None)))
        for name, cfg in configs[op].items():
            try:
                row[name] = ms(partial(ours[op], cfg))
            except Exception as e:  # e.g. out of shared memory for this tile on this device
                row[name] = f"{type(e).__name__}: {str(e)[:80]}"
        timed = {k: v for k, v in row.items() if k in configs[op] and isinstance(v, float)}
        row["best"] = min(timed, key=timed.get)
        rows.append(row)
        print(f"stage {stage} {op:9s} cuDNN {row['cudnn_ms']:.3f}  default {row['default_ms']:.3f}  "
              f"best {row['best']} {timed[row['best']]:.3f}", flush=True)
    # the three kernels together against the cuDNN block on the sub-batch
    rows.append(dict(stage=stage, op="block", batch=batch, count=count,
                     cudnn_ms=ms(lambda: [f() for f in cudnn.values()]),
                     default_ms=ms(lambda: [f(None) for f in ours.values()])))
    print(f"stage {stage} block     cuDNN {rows[-1]['cudnn_ms']:.3f}  default {rows[-1]['default_ms']:.3f}",
          flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--count", type=int, default=60, help="executing samples (rate 0.4659 of 128: 60)")
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    import triton

    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                commit=args.commit, host=platform.node())
    rows = []
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for stage in args.stages:
            rows += stage_case(stage, args.batch, args.count, gen)
            with open(args.out, "w") as f:
                json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
