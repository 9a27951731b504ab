"""Latency measurement: how laudnet times a call, on a GPU or a CPU, eagerly or replayed from a CUDA graph.

Every timer of the package (`laudnet.deploy.tune`, `laudnet.latency.calibrate`) and of `benchmarks/` is one of these,
so that a number in a results file means the same thing whichever script wrote it:

* `time_call`: `warmup` untimed calls, then `repeats` samples of `inner` calls each, timed with two CUDA events on a
  GPU (the host waits for the end event) and with the wall clock (`time.perf_counter`) elsewhere; returns the median
  seconds per call, and hands every sample to `samples` when given a list.
* `capture_graph`: calls captured as one CUDA graph after warm-up calls on a side stream, so that Triton
  compilation, cuDNN autotuning and lazy initialisation happen outside the capture. `laudnet.deploy.graphs.capture`
  (conditional nodes) captures through it.
* `time_graph`: `capture_graph`, then `time_call` of the graph's replay, per captured call: no host launch cost, only
  the device's per-kernel cost and the work.

The median, not the mean: one sample slowed by something else (a host hiccup, another process's kernel) moves the mean
but not the median. On a GPU the host waits for the warm-up calls before the first sample, so that every sample starts
on an idle stream and includes its own launches.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from time import perf_counter
from typing import TypeVar

import torch

T = TypeVar("T")


def time_call(fn: Callable[[], object], device: torch.device | str, repeats: int = 10, warmup: int = 3, *,
              inner: int = 1, samples: list[float] | None = None) -> float:
    """Median seconds per call of fn() on `device`, after `warmup` untimed calls.

    Args:
        fn: the work, called ``warmup + repeats * inner`` times.
        device: where fn's work runs: ``"cuda"`` times with CUDA events, anything else with the wall clock (CPU work
            is synchronous).
        repeats: timed samples.
        warmup: untimed calls first (compilation, autotuning, allocations).
        inner: calls per sample (each sample is divided by it): for calls shorter than the clock's resolution or than
            the events' own cost.
        samples: a list that receives every sample (seconds per call), in order.

    Returns:
        The median of the samples.
    """
    _check_counts(repeats=repeats, inner=inner, warmup=warmup)
    cuda = _is_cuda(device)
    for _ in range(warmup):
        fn()
    taken = []
    if cuda:
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            taken.append(start.elapsed_time(end) / 1e3 / inner)
    else:
        for _ in range(repeats):
            t0 = perf_counter()
            for _ in range(inner):
                fn()
            taken.append((perf_counter() - t0) / inner)
    if samples is not None:
        samples.extend(taken)
    return statistics.median(taken)


def capture_graph(fn: Callable[[], T], *, warmup: int = 3, copies: int = 1,
                  graph: torch.cuda.CUDAGraph | None = None, what: str = "this call") -> tuple[torch.cuda.CUDAGraph, T]:
    """`copies` calls of fn() captured as one CUDA graph, after `warmup` calls on a side stream.

    Args:
        fn: the work (CUDA tensors only, no host synchronisation).
        warmup: uncaptured calls first, on a side stream: Triton compilation, cuDNN autotuning and lazy
            initialisation happen outside the capture.
        copies: calls captured one after the other (`time_graph` divides by them).
        graph: the graph to capture into (a new one when None).
        what: what fn is, for the error raised when the capture fails (a host synchronisation).

    Returns:
        The graph and what the last captured call returned (its static output, rewritten by every replay).
    """
    _check_counts(copies=copies, warmup=warmup)
    if not torch.cuda.is_available():
        raise ValueError("CUDA graphs need CUDA, which this machine does not have")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph() if graph is None else graph
    try:
        with torch.cuda.graph(graph):
            for _ in range(copies):
                out = fn()
    except RuntimeError as e:
        raise RuntimeError(f"{what} synchronises with the host and cannot be captured: {e}") from e
    return graph, out


def time_graph(fn: Callable[[], object], *, repeats: int = 10, warmup: int = 3, capture_warmup: int = 3,
               copies: int = 1, samples: list[float] | None = None) -> float:
    """Median seconds per call of fn() replayed from a CUDA graph (`capture_graph`, then `time_call` of the replay).

    Args:
        fn: the work (CUDA tensors only, no host synchronisation).
        repeats: timed replays.
        warmup: untimed replays first.
        capture_warmup: uncaptured calls of fn before the capture.
        copies: calls of fn in the graph; each replay's time is divided by them.
        samples: a list that receives every sample (seconds per call of fn), in order.

    Returns:
        The median of the samples.
    """
    _check_counts(repeats=repeats, warmup=warmup)  # before the capture, which may take long
    graph, _ = capture_graph(fn, warmup=capture_warmup, copies=copies)
    per_replay: list[float] = []
    time_call(graph.replay, "cuda", repeats, warmup, samples=per_replay)
    taken = [t / copies for t in per_replay]
    if samples is not None:
        samples.extend(taken)
    return statistics.median(taken)


def _is_cuda(device: torch.device | str) -> bool:
    """Whether `device` is a GPU; a GPU asked for where there is none is an error."""
    cuda = torch.device(device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError(f"timing on {device} needs CUDA, which this machine does not have")
    return cuda


def _check_counts(*, warmup: int = 0, **at_least_one: int) -> None:
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for name, value in at_least_one.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
