"""GPU-time breakdown of a deployed LAUD-ViT by kernel (torch.profiler), with exactly controlled decisions as in
`bench_vit.py`: where token, head or layer skipping spends its time.

Run: ``python benchmarks/profile_vit.py --paradigm token --token 0.5 --attention varlen --out prof.txt``.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity

import laudnet
from laudnet.deploy import deploy_vit

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_vit import Case, exact_decisions, impose  # noqa: E402
from profile_deployed import write_profile  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="laud_deit_small")
    parser.add_argument("--paradigm", default="token")
    parser.add_argument("--token", type=float, default=None)
    parser.add_argument("--head", type=float, default=None)
    parser.add_argument("--layer", type=float, default=None)
    parser.add_argument("--attention", default="varlen", choices=["bucket", "varlen"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--graphed", action="store_true",
                        help="profile the capturable model replayed as one CUDA graph (its kernels, no host work)")
    parser.add_argument("--unfused-rows", dest="fuse_rows", action="store_const", const=False, default=None,
                        help="deploy_vit(fuse_rows=False) (with --graphed)")
    parser.add_argument("--separate-token-masker", dest="fuse_token_masker", action="store_const", const=False,
                        default=None, help="the token masker as its own layer, not fused into norm1")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True  # the patch embedding's convolution, as in bench_vit.py
    model = laudnet.create_model(args.model, paradigm=args.paradigm).cuda().eval()
    deployed = deploy_vit(model, torch.bfloat16, attention=args.attention, capturable=args.graphed,
                          fuse_token_masker=args.fuse_token_masker, fuse_rows=args.fuse_rows)
    case = Case(args.paradigm, token=args.token, head=args.head, layer=args.layer)
    impose([deployed], exact_decisions(model, case, args.batch, torch.Generator().manual_seed(0)),
           torch.device("cuda"))
    x = torch.randn(args.batch, 3, *model.img_size, device="cuda")
    if args.graphed:
        graphed = deployed.graphed(x)
        write_profile(lambda: graphed(x), args, [ProfilerActivity.CUDA])
    else:  # CPU activity too: the eager forms are bound by the host (its time per call is in the table's totals)
        write_profile(lambda: deployed(x), args, [ProfilerActivity.CPU, ProfilerActivity.CUDA])
    return 0


if __name__ == "__main__":
    sys.exit(main())
