"""Per-block choice between the sparse and the dense-masked path, decided by measurement on the target device.

Skipping only pays where the skipped work outweighs the cost of skipping (maskers, index lists, less efficient
kernels): at high activation rates, and for small blocks, the dense path can be faster (benchmarks/NOTES.md). The
choice depends on the device and on the rates a trained model shows on real data, so it is measured: each block runs
both paths on the input it receives from a representative batch, and keeps the faster.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from laudnet.deploy.model import DeployedModel


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 10, warmup: int = 3) -> float:
    """Median seconds of fn() on a device (CUDA events on a GPU, the wall clock elsewhere)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def graph_replay(fn: Callable[[], object]) -> Callable[[], None]:
    """fn() captured as a CUDA graph (after warm-up calls on a side stream); returns the graph's replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # Triton compilation, cuDNN autotuning and lazy initialisation happen outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as e:
        raise RuntimeError(f"tune_paths(graphed=True): a block synchronises with the host and cannot be captured: "
                           f"{e}") from e
    return graph.replay


@torch.no_grad()
def tune_paths(deployed: DeployedModel, example: Tensor, *, repeats: int = 10,
               timer: Callable[..., float] = time_call, graphed: bool = False) -> list[str]:
    """Set each dynamic block's `path` to whichever of ``sparse`` and ``dense`` runs faster on `example`.

    Args:
        deployed: a deployed model (its blocks' decisions are made by its maskers, or imposed with `forced_keep`).
        example: a representative input batch (same batch size as in production).
        repeats: timed calls per block and path.
        timer: ``timer(fn, device, repeats=...) -> seconds``; the default uses CUDA events on a GPU.
        graphed: time each block and path replayed from its own CUDA graph — what a model run through
            `DeployedModel.graphed` pays, without the per-kernel launch cost of eager calls, which dominates at
            small batches (CUDA only).

    Returns:
        The chosen path of every block, in order.
    """
    if graphed and example.device.type != "cuda":
        raise ValueError("tune_paths(graphed=True) times CUDA graphs: it needs a CUDA input")
    inputs: list[Tensor] = []
    sums_in: list[Tensor | None] = []
    blocks = deployed.blocks()
    deployed.forward_features(example, block_inputs=inputs, block_sums=sums_in)
    device = example.device
    chosen = []
    for i, block in enumerate(blocks):
        if block.paradigm == "static":
            chosen.append(block.path)
            continue
        x, sums = inputs[i], sums_in[i]
        costs = {}
        for path in ("sparse", "dense"):
            block.path = path
            # As in the chain: with the masker sums the predecessor hands over, making those the successor needs
            # (a sparse block accumulates them in its last kernel, a dense one pools its output in one more pass).
            # Blocks may write into their input and sums: each call gets copies (the same cost on both sides).
            call = lambda b=block, x=x, s=sums: b.forward_chained(x.clone(), None if s is None else s.clone())  # noqa: E731
            costs[path] = timer(graph_replay(call) if graphed else call, device, repeats=repeats)
        block.path = min(costs, key=costs.get)
        chosen.append(block.path)
    return chosen
