"""Hardware presets, spec files and derived quantities."""

import json

import pytest

from laudnet.latency.hardware import PRESETS, HardwareSpec, list_hardware, load_hardware, save_hardware


def test_presets_load_and_are_sane():
    assert {"v100", "3090", "3060", "tx2", "nano", "a100", "h100", "h200"} <= set(list_hardware())
    for name in list_hardware():
        hw = load_hardware(name)
        assert hw.name == name
        assert hw.peak_macs > 0 and hw.mem_elem_bandwidth > 0
    assert load_hardware("V100") is PRESETS["v100"]
    assert load_hardware("jetson-tx2") is PRESETS["tx2"]


def test_paper_presets_are_fp32_and_match_the_simulator():
    v100 = load_hardware("v100")
    assert (v100.n_pes, v100.pe_fp32s, v100.frequency, v100.mem_bandwidth, v100.batch) == (80, 64, 1.5e9, 700e9, 128)
    assert v100.precision == "fp32" and v100.mem_concurrent == 8 and v100.launch_time == 8e-6
    assert load_hardware("3090").l2_speed_frac == 1 and load_hardware("tx2").batch == 1
    for name in ("v100", "3090", "3060", "tx2", "nano"):
        assert load_hardware(name).precision == "fp32"


def test_datasheet_presets_reproduce_datasheet_throughput():
    h100 = load_hardware("h100")
    assert h100.precision == "bf16"
    assert 2 * h100.peak_macs / 1e12 == pytest.approx(989.4, rel=1e-6)
    assert 2 * h100.with_precision("fp32").peak_macs / 1e12 == pytest.approx(66.9, rel=0.01)
    assert 2 * load_hardware("a100").with_precision("fp32").peak_macs / 1e12 == pytest.approx(19.5, rel=0.01)
    assert load_hardware("h200").mem_bandwidth == 4.8e12
    # 16-bit elements double the element bandwidth and halve the sector size in elements
    assert h100.mem_elem_bandwidth == 2 * h100.with_precision("fp32").mem_elem_bandwidth


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_spec_file_round_trip(tmp_path, suffix):
    path = save_hardware(PRESETS["h100"], tmp_path / f"mine{suffix}")
    assert load_hardware(str(path)) == PRESETS["h100"]


def test_bad_hardware_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown hardware 'k80'"):
        load_hardware("k80")
    with pytest.raises(FileNotFoundError):
        load_hardware(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "n_pes": 1, "pe_fp32s": 1, "frequency": 1e9, "mem_bandwidth": 1e9,
                               "warp_size": 32}))
    with pytest.raises(ValueError, match="warp_size"):
        load_hardware(str(bad))
    bad.write_text(json.dumps({"name": "x", "n_pes": 0, "pe_fp32s": 1, "frequency": 1e9, "mem_bandwidth": 1e9}))
    with pytest.raises(ValueError, match="n_pes"):
        load_hardware(str(bad))
    with pytest.raises(ValueError, match="tc_macs_per_pe_cycle"):
        PRESETS["tx2"].with_precision("bf16")
    with pytest.raises(ValueError, match="precision"):
        HardwareSpec("x", 1, 1, 1e9, 1e9, precision="int8")
