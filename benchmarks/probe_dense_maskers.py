"""What the dense-masked network costs above the static one at small batches, and how much of it the maskers' form
decides.

`deploy_fastest` falls back to the dense-masked network (`deploy_dense_masked`, compiled whole, one CUDA graph) where
the sparse paths do not pay, and that form was slower than the static network at batch 1. Each form below is the
same network compiled whole (static shapes) and replayed from one CUDA graph on the same input:

- ``static``: the folded static network (the strongest static form);
- ``dense-masked, torch``: `deploy_dense_masked(maskers="torch")`: pool each window, then the masker's small GEMM;
- ``dense-masked, reduce``: `deploy_dense_masked(maskers="reduce")` (the default): the spatial and channel maskers
  written as reductions Inductor fuses with their producers instead of GEMM launches (layer maskers as ``torch``);
- ``dense-masked, fixed``: every masker replaced by its decisions on this input, precomputed (the floor that any
  form of the maskers can reach: static + applying the masks).

For each: the median time, the CUDA kernels one forward launches (torch.profiler on the compiled function, outside
the graph), and — for the variants — the share of decisions equal to the ``torch`` form's and the largest output
difference.

    python benchmarks/probe_dense_maskers.py --batches 1 8 128 --out probe_dense_maskers.json --commit <hash>
    python benchmarks/probe_dense_maskers.py --smoke --out /tmp/p.json    # the flow on the CPU, eager
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor

import laudnet
from laudnet.deploy import GraphedModel, deploy, deploy_dense_masked
from laudnet.deploy.blocks import DeployedBlock
from laudnet.timing import time_call

FORMS = ("torch", "reduce", "fixed")


@contextmanager
def fixed_decisions(deployed, x: Tensor) -> Iterator[None]:
    """The deployed network's maskers replaced by their decisions on x while the context is open."""
    keeps = decisions(deployed, x)
    saved = DeployedBlock.decide
    try:
        for block, keep in zip(deployed.blocks(), keeps, strict=True):
            block.forced_keep = keep
        DeployedBlock.decide = lambda self, x: self.forced_keep
        yield
    finally:
        DeployedBlock.decide = saved
        for block in deployed.blocks():
            block.forced_keep = None


def decisions(deployed, x: Tensor) -> list[Tensor | None]:
    """Each block's decisions on this input (an eager forward; None for a static block)."""
    blocks = list(deployed.blocks())
    seen: dict[int, Tensor] = {}

    def recording(block):
        decide = type(block).decide

        def run(inp: Tensor) -> Tensor:
            seen[id(block)] = keep = decide(block, inp)
            return keep
        return run

    for b in blocks:
        b.decide = recording(b)
    try:
        with torch.no_grad():
            deployed(x)
    finally:
        for b in blocks:
            del b.decide
    return [seen.get(id(b)) for b in blocks]


def kernels_per_call(fn: Callable[[], object], calls: int = 3) -> float:
    """CUDA kernels launched per call of fn after a warm-up (0 on the CPU): the first calls also compile, and search
    cuDNN's algorithms, and would be counted."""
    if not torch.cuda.is_available():
        return 0.0
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA") / calls


def measure(net, x: Tensor, args) -> dict:
    """Median ms of the compiled, graphed form of `net` on x, and its kernels per forward (compiled, no graph)."""
    if args.smoke:
        with torch.no_grad():
            return {"ms": round(1e3 * time_call(lambda: net(x), x.device, repeats=1, warmup=1), 4), "kernels": 0}
    fn = torch.compile(net, dynamic=False)
    with torch.no_grad():
        kernels = kernels_per_call(lambda: fn(x)) if x.shape[0] == 1 or args.count_all else None
        graph = GraphedModel(fn, x)
        ms = 1e3 * time_call(lambda: graph(x), x.device, repeats=args.repeats, warmup=10)
    torch._dynamo.reset()
    return {"ms": round(ms, 4), "kernels": kernels}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="laud_resnet101")
    parser.add_argument("--paradigms", nargs="+", default=["spatial", "channel", "layer"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 128])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--count-all", action="store_true", help="count kernels at every batch (default: batch 1)")
    parser.add_argument("--smoke", action="store_true", help="the flow on the CPU, eager, tiny: checks the script")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.smoke:
        dev, args.model, args.image_size, args.batches = torch.device("cpu"), "laud_resnet50", 64, [1]
    elif torch.cuda.is_available():
        dev = torch.device("cuda")
    else:
        parser.error("needs a CUDA device (or --smoke)")
    torch.backends.cudnn.benchmark = True
    dtype = torch.float32 if args.smoke else torch.bfloat16
    rows: list[dict] = []
    meta = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
            "commit": args.commit, "model": args.model, "image_size": args.image_size}

    def save(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)

    torch.manual_seed(0)
    static = deploy(laudnet.create_model(args.model, paradigm="static").to(dev).eval(), dtype)
    for batch in args.batches:
        x = torch.randn(batch, 3, args.image_size, args.image_size, device=dev, dtype=dtype)
        x = x.to(memory_format=torch.channels_last)
        save({"batch": batch, "form": "static", **measure(static, x, args)})
        for paradigm in args.paradigms:
            torch.manual_seed(0)
            model = laudnet.create_model(args.model, paradigm=paradigm).to(dev).eval()
            for name, p in model.named_parameters():  # decisions that differ by input and location
                if "masker" in name and p.dim() > 1:
                    torch.nn.init.normal_(p, std=0.5)
            ref = deploy_dense_masked(model, dtype, device=dev, maskers="torch")
            with torch.no_grad():
                ref_out, ref_keep = ref(x).float(), decisions(ref, x)
            for form in FORMS:
                deployed = ref if form == "torch" else deploy_dense_masked(model, dtype, device=dev)
                with fixed_decisions(deployed, x) if form == "fixed" else nullcontext():
                    with torch.no_grad():
                        out, keep = deployed(x).float(), decisions(deployed, x)
                    agree = [float((k == r).float().mean()) for k, r in zip(keep, ref_keep, strict=True)
                             if k is not None]
                    row = {"batch": batch, "paradigm": paradigm, "form": f"dense-masked, {form}",
                           "decisions_equal": round(sum(agree) / len(agree), 5),
                           "max_abs_diff": float((out - ref_out).abs().max()), **measure(deployed, x, args)}
                save(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
