"""Default-mode block costs composed as laudnet's engine runs the dynamic blocks (`laudnet.latency.blocks`), and the
calibration's pure parts (clock source, cache-probe size, re-clocking, graph launch time): CPU only, no torch."""

import json
import math
import types
from pathlib import Path

import pytest

from laudnet.latency.blocks import (
    block_cost,
    conv1_region_fraction,
    layer_block,
    spatial_block,
    spatial_parts,
    static_block,
)
from laudnet.latency.calibrate import cache_probe_bytes, fit_spec, max_sm_clock, reclock
from laudnet.latency.geometry import get_geometry
from laudnet.latency.hardware import HardwareSpec, load_hardware, save_hardware
from laudnet.latency.ops import get_op_model

ROOT = Path(__file__).resolve().parents[2]
DENSITIES = [i / 8 for i in range(9)]


def _plain_blocks():
    """ResNet-50 bottlenecks: the first (projecting, stride 1), a stride-2 one, and non-first blocks."""
    blocks = get_geometry("resnet50").blocks()
    return [blocks[0], blocks[1], blocks[3], blocks[4], blocks[8]]


@pytest.mark.parametrize("hw", ["h100", "v100"])
@pytest.mark.parametrize("paradigm,gran,conv1", [("spatial", 1, "dense"), ("spatial", 4, "dense"),
                                                 ("spatial", 2, "sparse"), ("spatial", 7, "sparse"),
                                                 ("channel", 1, "dense"), ("channel", 16, "dense"),
                                                 ("layer", 0, "dense")])
def test_engine_block_costs_are_monotone_in_density(hw, paradigm, gran, conv1):
    op = get_op_model(load_hardware(hw), 128)
    for b in _plain_blocks():
        if paradigm == "spatial" and b.out_size % gran:
            continue
        lat = [block_cost(op, b, paradigm, d, gran, spatial_conv1=conv1).latency for d in DENSITIES]
        assert all(x <= y * (1 + 1e-12) for x, y in zip(lat[:-1], lat[1:], strict=True)), (b, lat)
        assert lat[-1] > lat[0] > 0


def test_conv1_region_fraction():
    assert conv1_region_fraction(56, 56, 4, 1, 0.0) == 0.0
    assert conv1_region_fraction(56, 56, 4, 1, 1.0) == pytest.approx(1.0)
    assert conv1_region_fraction(56, 28, 2, 2, 1.0) == pytest.approx(1.0)  # stride 2: every input pixel is read
    # S = 1 on a large map: almost every pixel is covered by its 3x3 neighbourhood of 9 patches
    inner = 1 - 0.5**9
    assert conv1_region_fraction(200, 200, 1, 1, 0.5) == pytest.approx(inner, rel=0.02)
    # the halo grows the region beyond the density, less for bigger patches
    f = [conv1_region_fraction(56, 56, s, 1, 0.25) for s in (1, 2, 4, 8)]
    assert f[0] > f[1] > f[2] > f[3] > 0.25
    with pytest.raises(ValueError, match="density"):
        conv1_region_fraction(56, 56, 4, 1, 1.5)


def test_conv1_region_matches_the_benchmarks_masks():
    # bench_spatial recorded the conv1 region of its random masks (exact active-patch counts); the expectation under
    # independent patches must agree
    data = json.loads((ROOT / "benchmarks" / "results" / "bench_spatial_h100_9198376.json").read_text())
    sizes = {1: 56, 2: 28, 3: 14}
    checked = 0
    for r in data["spatial"]:
        size = sizes[r["stage"]]
        pred = conv1_region_fraction(size, size, r["S"], 1, r["pixel_rate"])
        assert pred == pytest.approx(r["conv1_region"], abs=0.05), r
        checked += 1
    assert checked >= 40


def test_engine_composition_parts():
    op = get_op_model(load_hardware("h100"), 128)
    b = get_geometry("resnet50").blocks()[1]
    dense = spatial_parts(op, b, 4, 0.5)
    sparse = spatial_parts(op, b, 4, 0.5, conv1="sparse")
    assert set(dense) == {"masker", "patch_list", "conv1", "conv2", "conv3"}  # no separate scatter-add pass
    assert set(sparse) == set(dense) | {"conv1_list"}
    assert sparse["conv1"].latency < dense["conv1"].latency  # conv1 only on the union of the halos
    full = spatial_block(op, b, 4, 0.5).latency
    no_masker = spatial_block(op, b, 4, 0.5, masker=False).latency
    no_lists = spatial_block(op, b, 4, 0.5, masker=False, index=False).latency
    assert full - no_masker == pytest.approx(dense["masker"].latency)
    assert no_masker - no_lists == pytest.approx(dense["patch_list"].latency)
    with pytest.raises(ValueError, match="conv1"):
        spatial_parts(op, b, 4, 0.5, conv1="halo")
    # layer skipping: the three kernels launch even when no sample executes; all samples cost about a dense block
    zero = layer_block(op, b, 0.0, masker=False, index=False)
    assert zero.launches == 3 and zero.latency == pytest.approx(3 * op.launch)
    assert layer_block(op, b, 1.0).latency < 3 * static_block(op, b).latency
    # batch 1: the expected cost, linear in the density between "never runs" and "always runs"
    op1 = get_op_model(load_hardware("h100"), 1)
    lo, hi = layer_block(op1, b, 0.0).latency, layer_block(op1, b, 1.0).latency
    assert layer_block(op1, b, 0.25).latency == pytest.approx(lo + 0.25 * (hi - lo))


def test_grouped_and_se_blocks_keep_the_paper_composition():
    op = get_op_model(load_hardware("tx2"), 1)
    b = next(b for b in get_geometry("regnety_400mf").blocks() if b.out_size % 2 == 0)
    assert b.groups > 1 and b.se_squeeze
    # masker and index flags only apply to the engine composition
    assert spatial_block(op, b, 2, 0.5, masker=False).latency == spatial_block(op, b, 2, 0.5).latency


# ---- calibration, pure parts -----------------------------------------------------------------------------------------
def _nvml(mhz=1980, fail=False):
    def max_clock(handle, kind):
        if fail:
            raise RuntimeError("NVML_ERROR_NO_PERMISSION")
        assert handle == "gpu0" and kind == "SM"
        return mhz

    return types.SimpleNamespace(nvmlInit=lambda: None, nvmlShutdown=lambda: None, NVML_CLOCK_SM="SM",
                                 nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}", nvmlDeviceGetMaxClockInfo=max_clock)


def test_max_sm_clock_sources():
    props = types.SimpleNamespace(clock_rate=1_755_000)  # kHz
    assert max_sm_clock(_nvml(1980), props) == (1.98e9, "nvml")
    assert max_sm_clock(_nvml(fail=True), props) == (1.755e9, "device_properties")
    assert max_sm_clock(_nvml(0), types.SimpleNamespace()) == (1.5e9, "fallback")
    assert max_sm_clock(_nvml(0), types.SimpleNamespace(clock_rate=1755)) == (1.5e9, "fallback")  # MHz, not kHz


def test_cache_probe_bytes():
    assert cache_probe_bytes(50 * 2**20, gpu=True) == 50 * 2**20 // 4  # H100: 12.5 MiB per buffer, 25 of 50 MiB
    assert cache_probe_bytes(256 * 2**20, gpu=True) == 2**24  # capped
    assert cache_probe_bytes(None, gpu=True) == 2**21
    assert cache_probe_bytes(50 * 2**20, gpu=False) == 2**16
    assert cache_probe_bytes(6 * 2**20, gpu=True) % 4096 == 0


def test_reclock_keeps_the_fitted_rates():
    spec = load_hardware(ROOT / "benchmarks" / "results" / "h100_calibrated_1e74193.yaml")
    moved = reclock(spec, 1.0e9)
    assert moved.frequency == 1.0e9
    assert moved.pe_fp32s * moved.frequency == pytest.approx(spec.pe_fp32s * spec.frequency)
    assert moved.peak_macs == pytest.approx(spec.peak_macs)
    with pytest.raises(ValueError, match="frequency"):
        reclock(spec, 0)


def test_fit_spec_graph_launch_time_and_graphed(tmp_path):
    meas = {"device": "cuda", "name": "gpu", "n_pes": 132, "frequency": 1.98e9, "copy_bandwidth": 2.8e12,
            "cache_bandwidth": 7e12, "fp32_macs": 25e12, "bf16_macs": 330e12, "conv_macs": 20e12,
            "launch_time": 8e-6, "graph_launch_time": 2e-6, "matmul_n": 4096}
    spec = fit_spec(meas)
    assert spec.graph_launch_time == 2e-6 and spec.launch_time == 8e-6
    assert spec.l2_speed_frac == pytest.approx(2.5)
    assert spec.graphed().launch_time == 2e-6
    assert load_hardware(save_hardware(spec, tmp_path / "s.yaml")).graph_launch_time == 2e-6
    assert fit_spec({**meas, "graph_launch_time": None}).graphed().launch_time == 8e-6
    op, op_g = get_op_model(spec, 128), get_op_model(spec.graphed(), 128)
    b = get_geometry("resnet50").blocks()[1]
    diff = spatial_block(op, b, 4, 0.5).latency - spatial_block(op_g, b, 4, 0.5).latency
    assert diff == pytest.approx(spatial_block(op, b, 4, 0.5).launches * 6e-6)
    with pytest.raises(ValueError, match="graph_launch_time"):
        HardwareSpec("x", 1, 1, 1e9, 1e9, graph_launch_time=-1.0)
    assert math.isfinite(spec.peak_macs)
