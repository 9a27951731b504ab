"""Per-block cost of the sparse path, the dense-masked path and the static block, each replayed from its own CUDA
graph on the block's real input: why `tune_paths` keeps or drops the dense path at a given batch and rate.

With `--decompose`, the dense-masked path is also timed in parts: the masker alone (window sums and decision
kernels for spatial/layer skipping, the torch masker MLP for channel skipping), the dense-masked computation without
the masker, and the block's compiled bottleneck without masks and with an all-ones mask (all on the same input; each
call's input copy is included, `copy_ms` says how much that is).

Run on the GPU: ``python benchmarks/probe_dense_path.py --paradigm spatial --rate 0.75 --out probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import laudnet
from laudnet import kernels as K
from laudnet.deploy import deploy
from laudnet.deploy.blocks import nhwc
from laudnet.timing import time_graph

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_models import block_decision_shapes, force, random_decisions  # noqa: E402


def parts(block, xi: torch.Tensor) -> dict:
    """Callables timing the pieces of `block`'s dense-masked path on input xi (decisions: its `forced_keep`)."""
    keep = block.forced_keep
    in_hw = (xi.shape[2], xi.shape[3])
    if block.fusable:
        def masker():
            sums = K.window_sums(nhwc(xi), block.in_window)
            return K.masker_decide(sums, block.masker_w, block.masker_b, in_hw, block.in_window, keep.reshape(-1))
    else:
        def masker():
            return block.decide(xi)
    ones = torch.ones(xi.shape[0], 1, *block._out_hw(xi), device=xi.device, dtype=xi.dtype)
    if block.paradigm == "channel":
        masked = dict(channels=torch.ones(xi.shape[0], block.width, 1, 1, device=xi.device, dtype=xi.dtype))
    else:
        masked = dict(out_mask=ones)

    def branch(**kw):
        x = xi.clone()
        return block._dense_block(x, block._shortcut(x), **kw)

    return {"masker": masker, "dense_without_masker": lambda: block._forward_dense(xi.clone(), keep),
            "branch_no_mask": branch, "branch_ones_mask": lambda: branch(**masked)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="laud_resnet101")
    parser.add_argument("--paradigm", default="spatial")
    parser.add_argument("--rate", type=float, default=0.75)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--blocks", nargs="+", type=int, default=[1, 5, 10, 31])
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--decompose", action="store_true", help="also time the dense-masked path in parts")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    model = laudnet.create_model(args.model, paradigm=args.paradigm).cuda().eval()
    dyn = deploy(model, torch.bfloat16, compile=args.compile)
    static = deploy(laudnet.create_model(args.model, paradigm="static").cuda().eval(), torch.bfloat16,
                    compile=args.compile)
    force(model, dyn, random_decisions(block_decision_shapes(model, args.batch, 224), args.rate,
                                       torch.Generator().manual_seed(0)))
    x = torch.randn(args.batch, 3, 224, 224, device=dev).to(memory_format=torch.channels_last)
    inputs: list[torch.Tensor] = []
    rows = []
    with torch.no_grad():
        dyn.forward_features(x, block_inputs=inputs)
        for i in args.blocks:
            block, sblock, xi = dyn.blocks()[i], static.blocks()[i], inputs[i]
            row = dict(block=i, shape=list(xi.shape))
            for path in ("sparse", "dense"):
                block.path = path
                row[path + "_ms"] = 1e3 * time_graph(lambda b=block, xi=xi: b(xi.clone()), repeats=20)
            block.path = "sparse"
            row["static_ms"] = 1e3 * time_graph(lambda b=sblock, xi=xi: b(xi.clone()), repeats=20)
            row["copy_ms"] = 1e3 * time_graph(lambda xi=xi: xi.clone(), repeats=20)
            if args.decompose:
                row.update({name + "_ms": 1e3 * time_graph(fn, repeats=20)
                            for name, fn in parts(block, xi).items()})
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, commit=args.commit, args=vars(args))
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
