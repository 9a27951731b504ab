"""laudnet.timing: the median of the samples, warm-up calls left out of the timing, argument checks; on the CPU with a
fake clock (the GPU path in the `gpu` tests)."""

import pytest
import torch

from laudnet import timing
from laudnet.timing import capture_graph, time_call, time_graph


class Clock:
    """A fake `perf_counter` that only the stub calls advance: call i takes durations[i] seconds."""

    def __init__(self, durations):
        self.durations, self.now, self.calls = list(durations), 0.0, 0

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.now += self.durations[self.calls]
        self.calls += 1


@pytest.fixture
def clock(monkeypatch):
    def make(durations):
        fake = Clock(durations)
        monkeypatch.setattr(timing, "perf_counter", fake)
        return fake

    return make


def test_median_of_the_samples_after_untimed_warmup(clock):
    c = clock([100.0, 100.0, 5.0, 1.0, 3.0, 2.0, 4.0])  # the two warm-up calls are slow: not in the median
    samples = []
    assert time_call(c.work, "cpu", repeats=5, warmup=2, samples=samples) == 3.0
    assert c.calls == 7
    assert samples == [5.0, 1.0, 3.0, 2.0, 4.0]


def test_even_repeats_average_the_two_middle_samples(clock):
    c = clock([4.0, 1.0, 2.0, 8.0])
    assert time_call(c.work, torch.device("cpu"), repeats=4, warmup=0) == 3.0


def test_inner_calls_make_one_sample_per_call(clock):
    c = clock([9.0, 1.0, 3.0, 2.0, 2.0])  # warm-up, then two samples of two calls: 2 s and 2 s per call
    samples = []
    assert time_call(c.work, "cpu", repeats=2, warmup=1, inner=2, samples=samples) == 2.0
    assert c.calls == 5
    assert samples == [2.0, 2.0]


def test_defaults_are_three_warmup_calls_and_ten_samples(clock):
    c = clock([0.0] * 13)
    time_call(c.work, "cpu")
    assert c.calls == 13


def test_real_clock_on_the_cpu():
    calls = []
    seconds = time_call(lambda: calls.append(torch.ones(64).sum()), "cpu", repeats=3, warmup=1)
    assert len(calls) == 4
    assert 0.0 <= seconds < 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(repeats=0), "repeats must be >= 1"),
    (dict(warmup=-1), "warmup must be >= 0"),
    (dict(inner=0), "inner must be >= 1"),
])
def test_bad_counts_are_refused_before_any_call(kwargs, message):
    calls = []
    with pytest.raises(ValueError, match=message):
        time_call(lambda: calls.append(1), "cpu", **kwargs)
    assert calls == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(repeats=0), "repeats must be >= 1"),
    (dict(warmup=-1), "warmup must be >= 0"),
    (dict(copies=0), "copies must be >= 1"),
    (dict(capture_warmup=-1), "warmup must be >= 0"),
])
def test_bad_graph_counts_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        time_graph(lambda: None, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_gpu_is_an_error():
    with pytest.raises(ValueError, match="needs CUDA"):
        time_call(lambda: None, "cuda")
    with pytest.raises(ValueError, match="CUDA graphs need CUDA"):
        capture_graph(lambda: None)
    with pytest.raises(ValueError, match="CUDA graphs need CUDA"):
        time_graph(lambda: None)


def test_tune_time_call_is_this_one():
    from laudnet.deploy.tune import time_call as tune_time_call

    assert tune_time_call is time_call


@pytest.mark.gpu
def test_cuda_events_time_each_call():
    x = torch.zeros(1 << 20, device="cuda")
    calls, samples = [], []
    seconds = time_call(lambda: calls.append(x.add_(1.0)), "cuda", repeats=4, warmup=2, inner=3, samples=samples)
    assert len(calls) == 2 + 4 * 3
    assert len(samples) == 4 and seconds > 0


@pytest.mark.gpu
def test_graph_replays_do_not_call_python():
    x = torch.zeros(1 << 20, device="cuda")
    calls, samples = [], []
    seconds = time_graph(lambda: calls.append(x.add_(1.0)), repeats=5, warmup=2, capture_warmup=1, copies=4,
                         samples=samples)
    assert len(calls) == 1 + 4  # the warm-up call and the captured copies; replays run the graph only
    assert len(samples) == 5 and seconds > 0
    graph, out = capture_graph(lambda: x.add_(1.0), warmup=0)
    before = x.clone()
    graph.replay()
    torch.testing.assert_close(x, before + 1)
    assert out.data_ptr() == x.data_ptr()
