"""measure_device on the CPU: every measurement is timed by laudnet.timing, after one warm-up call."""

import pytest

from laudnet import timing
from laudnet.latency.calibrate import fit_spec, measure_device


def test_measure_device_on_the_cpu_times_through_laudnet_timing(monkeypatch):
    seen = []

    def recording(fn, device, repeats=10, warmup=3, *, inner=1, samples=None):
        seen.append((str(device), repeats, warmup, inner))
        return real(fn, device, repeats, warmup, inner=inner, samples=samples)

    real = timing.time_call
    monkeypatch.setattr(timing, "time_call", recording)
    meas = measure_device("cpu", quick=True)
    # copy, cache copy, fp32 matmul, conv, two held-out convs, launch: 3 samples after one warm-up call each
    assert [s[3] for s in seen] == [2, 50, 2, 2, 2, 2, 200]
    assert all(s[:3] == ("cpu", 3, 1) for s in seen)
    for key in ("copy_bandwidth", "cache_bandwidth", "fp32_macs", "conv_macs", "launch_time"):
        assert meas[key] > 0, key
    assert fit_spec(meas).name


def test_measure_device_refuses_an_unknown_device():
    with pytest.raises(ValueError, match="device must be"):
        measure_device("tpu")
