"""Conditional CUDA-graph nodes: work captured inside `if_node(pred)` runs at replay only where `pred` is true.

A deployed network replayed from one CUDA graph launches every kernel of every block, even of a block that no
sample executes (its kernels then return at once, but each launch still costs a few microseconds: at batch 1 that is
much of what a skipped block costs). Captured with ``conditional=True`` (`DeployedModel.graphed`), a block's kernels
sit in an IF node on "some sample executes it", which the GPU evaluates at replay: a skipped block launches nothing.
Needs a PyTorch whose `torch.cuda.CUDAGraph` has conditional capture (`begin_capture_to_if_node`, CUDA >= 12.4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

# The graph being captured with conditional nodes (None: `if_node` bodies just run).
_CAPTURE: ContextVar[torch.cuda.CUDAGraph | None] = ContextVar("laudnet_conditional_capture", default=None)
_API = ("begin_capture_to_if_node", "end_capture_to_conditional_node")


def conditional_nodes_available() -> bool:
    """Whether this PyTorch can capture conditional CUDA-graph nodes."""
    graph = getattr(torch.cuda, "CUDAGraph", None)
    return graph is not None and all(hasattr(graph, name) for name in _API)


@contextmanager
def conditional_capture(graph: torch.cuda.CUDAGraph | None) -> Iterator[None]:
    """Within this context, the capture of `graph` turns `if_node` bodies into IF nodes (None: it does not)."""
    token = _CAPTURE.set(graph)
    try:
        yield
    finally:
        _CAPTURE.reset(token)


def capturing_conditionally() -> bool:
    """Whether an `if_node` entered now becomes an IF node (a CUDA-graph capture inside `conditional_capture`)."""
    return _CAPTURE.get() is not None and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@contextmanager
def if_node(predicate: Callable[[], Tensor]) -> Iterator[None]:
    """The body runs at replay only where `predicate()` (a 0-d bool CUDA tensor) is true, when captured inside
    `conditional_capture`; anywhere else (eager calls, plain captures) the body simply runs and `predicate` is not
    called (no extra launch)."""
    if not capturing_conditionally():
        yield
        return
    pred = predicate()
    if pred.dim() != 0 or pred.dtype != torch.bool or not pred.is_cuda:
        raise ValueError(f"an IF node needs a 0-d bool CUDA tensor, got {pred.dtype} {tuple(pred.shape)} "
                         f"on {pred.device}")
    graph = _CAPTURE.get()
    graph.begin_capture_to_if_node(pred)
    try:
        yield
    finally:
        graph.end_capture_to_conditional_node()
