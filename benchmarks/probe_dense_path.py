"""Per-block cost of the sparse path, the dense-masked path and the static block, each replayed from its own CUDA
graph on the block's real input: why `tune_paths` keeps or drops the dense path at a given batch and rate.

Run on the GPU: ``python benchmarks/probe_dense_path.py --paradigm spatial --rate 0.75 --out probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import laudnet
from laudnet.deploy import deploy
from laudnet.deploy.tune import graph_replay, time_call

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_models import block_decision_shapes, force, random_decisions  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="laud_resnet101")
    parser.add_argument("--paradigm", default="spatial")
    parser.add_argument("--rate", type=float, default=0.75)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--blocks", nargs="+", type=int, default=[1, 5, 10, 31])
    parser.add_argument("--no-compile", dest="compile", action="store_false")
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
                row[path + "_ms"] = 1e3 * time_call(graph_replay(lambda b=block, xi=xi: b(xi.clone())), dev, repeats=20)
            block.path = "sparse"
            row["static_ms"] = 1e3 * time_call(graph_replay(lambda b=sblock, xi=xi: b(xi.clone())), dev, repeats=20)
            row["copy_ms"] = 1e3 * time_call(graph_replay(lambda xi=xi: xi.clone()), dev, repeats=20)
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, commit=args.commit, args=vars(args))
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
