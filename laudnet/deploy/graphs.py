"""CUDA-graph capture of deployed models and of single calls, with optional conditional nodes.

`GraphedModel` replays a deployed network from one CUDA graph (`DeployedModel.graphed`, `DeployedViT.graphed`);
`graph_replay` captures any call (each block and path that `tune_paths` times). Both warm up on a side stream first,
so that Triton compilation, cuDNN autotuning and lazy initialisation happen outside the capture (`capture`, through
`laudnet.timing.capture_graph`).

Conditional nodes: work captured inside `if_node(pred)` runs at replay only where `pred` is true. A deployed network
replayed from one CUDA graph launches every kernel of every block, even of a block that no sample executes (its
kernels then return at once, but each launch still costs a few microseconds: at batch 1 that is much of what a
skipped block costs). Captured with ``conditional=True`` (`DeployedModel.graphed`), a block's kernels sit in an IF
node on "some sample executes it", which the GPU evaluates at replay: a skipped block launches nothing. Needs a
PyTorch whose `torch.cuda.CUDAGraph` has conditional capture (`begin_capture_to_if_node`, CUDA >= 12.4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import torch
from torch import Tensor

from laudnet.timing import capture_graph

T = TypeVar("T")

# The graph being captured with conditional nodes (None: `if_node` bodies just run).
_CAPTURE: ContextVar[torch.cuda.CUDAGraph | None] = ContextVar("laudnet_conditional_capture", default=None)
_API = ("begin_capture_to_if_node", "end_capture_to_conditional_node")


# --- capture ------------------------------------------------------------------------------------------------------
def capture(fn: Callable[[], T], *, conditional: bool = False,
            what: str = "this call") -> tuple[torch.cuda.CUDAGraph, T]:
    """fn() captured as a CUDA graph after three warm-up calls on a side stream (`laudnet.timing.capture_graph`).

    Args:
        fn: the work to capture (CUDA tensors only, no host synchronisation).
        conditional: turn the `if_node` bodies inside fn into IF nodes (`conditional_capture`).
        what: what fn is, for the error raised when the capture fails (a host synchronisation).

    Returns:
        The graph and what the captured call returned (its static output, rewritten by every replay).
    """
    if conditional and not conditional_nodes_available():
        raise RuntimeError("conditional CUDA-graph nodes need a PyTorch whose torch.cuda.CUDAGraph has "
                           "begin_capture_to_if_node (and CUDA >= 12.4)")
    graph = torch.cuda.CUDAGraph()
    # The warm-up calls run inside `conditional_capture` too, but on a stream that is not capturing: their `if_node`
    # bodies just run (`capturing_conditionally`).
    with conditional_capture(graph if conditional else None):
        return capture_graph(fn, warmup=3, graph=graph, what=what)


def graph_replay(fn: Callable[[], object], conditional: bool = False, *, what: str = "this call") -> Callable[[], None]:
    """fn() captured as a CUDA graph (`capture`), with conditional nodes when `conditional`; returns the graph's
    replay."""
    return capture(fn, conditional=conditional, what=what)[0].replay


class GraphedModel:
    """A deployed model (or any callable of one tensor) replayed from a CUDA graph: no per-kernel launch cost, fixed
    input shape.

    Works when no block synchronises with the host (the fused-kernel paths; a ViT deployed with ``capturable=True``);
    a block that does (e.g. RegNetY layer skipping, or `dense_above` < 1) makes the capture fail with an error that
    says so. With `conditional`, the blocks' `if_node` bodies are captured as IF nodes.
    """

    def __init__(self, model: Callable[[Tensor], Tensor], example: Tensor, *, conditional: bool = False) -> None:
        if not example.is_cuda:
            raise ValueError("CUDA graphs need a CUDA input")
        self.model = model
        self.static_input = example.detach().clone()
        with torch.no_grad():
            self.graph, self.static_output = capture(lambda: model(self.static_input), conditional=conditional,
                                                     what="this deployed model")

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape != self.static_input.shape:
            raise ValueError(f"graph captured for input {tuple(self.static_input.shape)}, got {tuple(x.shape)}")
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output


# --- conditional nodes --------------------------------------------------------------------------------------------
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
