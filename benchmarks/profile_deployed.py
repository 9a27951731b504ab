"""GPU-time breakdown of a deployed LAUD model by kernel (torch.profiler): where a skipping network spends time.

Run: ``python benchmarks/profile_deployed.py --model laud_resnet101 --paradigm layer --rate 0.4659 --out prof.txt``.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import laudnet
from laudnet.deploy import deploy

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_models import block_decision_shapes, force, random_decisions  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="laud_resnet101")
    parser.add_argument("--paradigm", default="layer")
    parser.add_argument("--rate", type=float, default=0.4659)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--maskers", default="fused", choices=["fused", "kernel", "torch"],
                        help="masker bookkeeping path of deploy (torch: the previous path)")
    parser.add_argument("--compile", action="store_true", help="deploy(compile=True): stem, head and dense paths")
    parser.add_argument("--stem", choices=["auto", "cudnn", "triton"], default="auto", help="deploy(stem=...)")
    parser.add_argument("--static-whole", action="store_true",
                        help="profile the static folded network compiled whole instead (the best static form)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    x = torch.randn(args.batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    if args.static_whole:
        static = deploy(laudnet.create_model(args.model, paradigm="static").cuda().eval(), torch.bfloat16,
                        stem=args.stem)
        run = torch.compile(static, dynamic=False)
    else:
        model = laudnet.create_model(args.model, paradigm=args.paradigm).cuda().eval()
        deployed = deploy(model, torch.bfloat16, maskers=args.maskers, compile=args.compile, stem=args.stem)
        shapes = block_decision_shapes(model, args.batch, 224)
        force(model, deployed, random_decisions(shapes, args.rate, torch.Generator().manual_seed(0)))
        run = deployed
    write_profile(lambda: run(x), args, [ProfilerActivity.CUDA])
    return 0


def write_profile(run, args, activities: list[ProfilerActivity], calls: int = 5) -> None:
    """Profile `calls` calls of run() after warm-up; the kernel table (by CUDA time, `args.rows` rows) goes to
    `args.out`, headed by the arguments."""
    with torch.no_grad():
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(calls):
                run()
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70)
    with open(args.out, "w") as f:
        f.write(f"{args}\n{table}\n")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
