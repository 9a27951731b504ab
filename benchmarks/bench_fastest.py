"""`deploy_fastest` against the strongest static network: which whole form a LAUD-ResNet should run in, measured.

For each batch size: laudnet's folded static network compiled whole and replayed from a CUDA graph (the best static
form of `bench_models.py`); then for each paradigm, `deploy_fastest` with random decisions at exactly the given rate
(imposed through `forced_keep`, the maskers still run), reporting both forms' times (the tuned sparse network and
the dense-masked network compiled whole, each one CUDA graph) and the choice. Results are written after every case.

    python benchmarks/bench_fastest.py --batches 1 128 --paradigms channel spatial --out fastest.json \
        --commit $(git rev-parse --short HEAD)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import laudnet
from laudnet.deploy import GraphedModel, deploy, deploy_fastest
from laudnet.deploy.tune import time_call

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_models import _triton_version, block_decision_shapes, random_decisions  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="laud_resnet101")
    parser.add_argument("--paradigms", nargs="+", default=["layer", "channel", "spatial"])
    parser.add_argument("--batches", nargs="+", type=int, default=[128, 1])
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_fastest.py needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=_triton_version(),
                commit=args.commit, model=args.model, rate=args.rate)
    rows = []

    def save(row):
        rows.append(row)
        print(row, flush=True)
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)

    dev = torch.device("cuda")
    with torch.no_grad():
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224, device=dev).to(memory_format=torch.channels_last)
            static = deploy(laudnet.create_model(args.model, paradigm="static").cuda().eval(), torch.bfloat16)
            t0 = time.time()
            graph = GraphedModel(torch.compile(static, dynamic=False), x)
            static_ms = 1e3 * time_call(lambda g=graph, x=x: g(x), dev, repeats=args.repeats)
            save(dict(batch=batch, kind="static", variant="laudnet folded whole-compile cuda-graph", ms=static_ms,
                      build_s=round(time.time() - t0, 1)))
            for paradigm in args.paradigms:
                model = laudnet.create_model(args.model, paradigm=paradigm).cuda().eval()
                masks = random_decisions(block_decision_shapes(model, batch, 224), args.rate,
                                         torch.Generator().manual_seed(0))

                def setup(deployed, masks=masks):
                    for block, keep in zip(deployed.blocks(), masks, strict=True):
                        block.forced_keep = keep.cuda()

                t0 = time.time()
                try:
                    chosen = deploy_fastest(model, x, torch.bfloat16, setup=setup, repeats=args.repeats)
                except Exception as e:
                    save(dict(batch=batch, kind=paradigm, error=f"{type(e).__name__}: {str(e)[:300]}"))
                    continue
                save(dict(batch=batch, kind=paradigm, rate=args.rate, form=chosen.form, times_ms=chosen.times_ms,
                          errors=chosen.errors, build_s=round(time.time() - t0, 1),
                          ratio_to_static=round(min(chosen.times_ms.values()) / static_ms, 3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
