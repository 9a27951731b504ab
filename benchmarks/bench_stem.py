"""The ResNet stem (folded 7x7 conv + ReLU + max-pool) on cuDNN against the Triton stem kernel, eager and compiled.

For each batch size, the stem of a deployed static LAUD-ResNet (`deploy(model, stem=...).stem`) is replayed from a
CUDA graph (median ms): ``cudnn`` and ``triton`` (`deploy(stem="triton")`), each eager and `torch.compile`d (the
compiler fuses the max-pool; the Triton conv is a custom op it keeps), and the Triton conv alone at each tile height
(`block_m`). It says whether `stem="triton"` should be the default, and with which tiles, apart from the rest of the
network.

    python benchmarks/bench_stem.py --out stem.json --commit $(git rev-parse --short HEAD)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from functools import partial

import torch

import laudnet
from laudnet.deploy import deploy
from laudnet.kernels.stem import stem_conv_triton
from laudnet.timing import time_graph


def stem_times(model: torch.nn.Module, batch: int, image: int, repeats: int) -> dict:
    """ms per form for one batch size, and the largest difference of each form from the eager cuDNN stem."""
    x = torch.randn(batch, 3, image, image, device="cuda").to(torch.bfloat16, memory_format=torch.channels_last)
    row: dict = dict(batch=batch, image=image)
    reference = None
    for kernel in ("cudnn", "triton"):
        stem = deploy(model, torch.bfloat16, stem=kernel).stem
        for form, fn in (("eager", stem), ("compile", torch.compile(stem, dynamic=False))):
            with torch.no_grad():
                out = fn(x)
                reference = out if reference is None else reference
                row[f"{kernel}_{form}_max_abs_diff"] = float((out.float() - reference.float()).abs().max())
                row[f"{kernel}_{form}_ms"] = 1e3 * time_graph(lambda fn=fn: fn(x), repeats=repeats)
            print(f"batch {batch} {kernel} {form}: {row[f'{kernel}_{form}_ms']:.4f} ms", flush=True)
    # the conv kernel alone (no max-pool) at each tile height: which `block_m` the default should take
    conv = deploy(model, torch.bfloat16, stem="triton").stem[0]
    xh = x.permute(0, 2, 3, 1)
    for bm in (64, 128, 256):
        fn = partial(stem_conv_triton, xh, conv.weight, conv.bias, conv.kernel, conv.stride, conv.padding,
                     block_m=bm)
        row[f"triton_conv_block_m{bm}_ms"] = 1e3 * time_graph(fn, repeats=repeats)
        print(f"batch {batch} triton conv block_m={bm}: {row[f'triton_conv_block_m{bm}_ms']:.4f} ms", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="laud_resnet101")
    parser.add_argument("--batches", nargs="+", type=int, default=[128, 1])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_stem.py needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    model = laudnet.create_model(args.model, paradigm="static").cuda().eval()
    rows = [stem_times(model, b, args.image_size, args.repeats) for b in args.batches]
    import triton

    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), commit=args.commit, args=vars(args))
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
