"""Where the fixed cost of a deployed skipping block goes: masker pooling variants and index building, on one GPU.

Each piece runs alone as a CUDA-graph replay (median of CUDA-event timings) on ResNet stage shapes at batch 128, bf16,
channels_last. Run: ``python benchmarks/probe_block_overheads.py --out probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from laudnet import kernels as K

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_models import as_graph, time_ms  # noqa: E402

SHAPES = {"stage1": (128, 256, 56, 56), "stage3": (128, 1024, 14, 14)}


def pieces(x: torch.Tensor, keep: torch.Tensor):
    b, c, h, w_ = x.shape
    xh = x.permute(0, 2, 3, 1)
    sums_map, sums_s4 = K.window_sums(xh, K.MAP_WINDOW), K.window_sums(xh, 4)
    w = torch.randn(c, device=x.device) / c**0.5
    bias = torch.zeros(1, device=x.device)
    base = torch.arange(h * w_, device=x.device, dtype=torch.int32)
    return {
        "mean(2,3) fp32": lambda t: t.mean(dim=(2, 3), dtype=torch.float32),
        "nhwc sum(1) fp32": lambda t: t.permute(0, 2, 3, 1).reshape(b, h * w_, c).sum(1, dtype=torch.float32),
        "adaptive_avg_pool2d": lambda t: F.adaptive_avg_pool2d(t, 1),
        "avg_pool2d S=4": lambda t: F.avg_pool2d(t, 4, 4, ceil_mode=True),
        "mask_to_patch_list (B,1,1)": lambda t: K.mask_to_patch_list(keep.view(-1, 1, 1)),
        "samples_to_pixel_idx": lambda t: K.samples_to_pixel_idx(keep.nonzero_static(size=b)[:, 0], h * w_)
        if hasattr(keep, "nonzero_static") else None,
        "argsort sample list": lambda t: (torch.argsort((~keep).to(torch.int8), stable=True)[:, None] * (h * w_)
                                          + base).reshape(-1),
        "copy x (bandwidth ref)": lambda t: xh.clone(),
        # the Triton masker ops of deploy(maskers="kernel"/"fused")
        "window_sums MAP (Triton)": lambda t: K.window_sums(xh, K.MAP_WINDOW),
        "window_sums S=4 (Triton)": lambda t: K.window_sums(xh, 4),
        "window_sums MAP relu (Triton)": lambda t: K.window_sums(xh, K.MAP_WINDOW, relu=True),
        "masker_decide layer (Triton)": lambda t: K.masker_decide(sums_map, w, bias, (h, w_), K.MAP_WINDOW),
        "masker_decide S=4 (Triton)": lambda t: K.masker_decide(sums_s4, w, bias, (h, w_), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for stage, shape in SHAPES.items():
        x = torch.randn(shape, device="cuda").to(torch.bfloat16, memory_format=torch.channels_last)
        keep = torch.rand(shape[0], device="cuda") < 0.5
        for name, fn in pieces(x, keep).items():
            try:
                ms = time_ms(as_graph(fn, x), 5, 30)
            except Exception as e:
                rows.append(dict(stage=stage, piece=name, error=f"{type(e).__name__}: {e}"[:200]))
                continue
            rows.append(dict(stage=stage, piece=name, us=round(ms * 1000, 1)))
            print(f"{stage} {name:<30} {ms * 1000:8.1f} us", flush=True)
    with open(args.out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
