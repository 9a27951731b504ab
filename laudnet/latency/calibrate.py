"""Calibration of the hardware model on the local device, and validation of block predictions against measurements.

`measure_device` times a large copy (DRAM bandwidth), a copy that fits in the cache (cache / L2 bandwidth; on a GPU
many copies replayed from one CUDA graph, so that launches do not bound it), an FP32 matrix product, a 16-bit matrix
product (CUDA only: tensor cores), a 3x3 convolution and an almost empty kernel (launch overhead: eager, and on a GPU
also per kernel of a CUDA-graph replay, which is how laudnet's deployed engine runs). On a GPU the clock is the maximum
SM clock (`max_sm_clock`), not the current one. `fit_spec` turns them into a `HardwareSpec` whose throughputs are the
achieved ones, and `save_hardware` writes it for `--hardware FILE`. `compare_blocks` checks block predictions against
measured block latencies (from the inference engine's benchmarks) and reports the median and worst relative error.

Only this module imports torch (and `laudnet.timing`, which times every measurement), and only inside the
functions that measure.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import fields, replace

from laudnet.latency.blocks import SPATIAL_CONV1, block_cost
from laudnet.latency.geometry import BlockGeometry, get_geometry
from laudnet.latency.hardware import HardwareSpec, load_hardware
from laudnet.latency.ops import get_op_model
from laudnet.paradigms import CNN_PARADIGMS


# ---- measuring -------------------------------------------------------------------------------------------------------
def max_sm_clock(nvml=None, props=None) -> tuple[float, str]:
    """The GPU's maximum SM clock in Hz, and where it came from.

    Only the product lanes x clock is constrained by the fit (`fit_spec` divides the measured MAC rate by the clock),
    so the clock must be a fixed property of the device, not the momentary clock (an idle GPU reports a few hundred
    MHz, which inflated the fitted lanes per engine and with them the tile-fill thresholds).

    Args:
        nvml: the `pynvml` module (nvidia-ml-py); imported here when None, skipped if it does not import.
        props: `torch.cuda.get_device_properties(0)`; its `clock_rate` (kHz, the peak clock) is the second choice.

    Returns:
        (hz, source): source is "nvml", "device_properties" or "fallback" (1.5 GHz, a typical data-centre boost
        clock: the fitted lanes then absorb the difference).
    """
    if nvml is None:
        try:
            import pynvml as nvml
        except Exception:
            nvml = None
    if nvml is not None:
        try:
            nvml.nvmlInit()
            try:
                mhz = nvml.nvmlDeviceGetMaxClockInfo(nvml.nvmlDeviceGetHandleByIndex(0), nvml.NVML_CLOCK_SM)
            finally:
                nvml.nvmlShutdown()
            if mhz and mhz > 0:
                return float(mhz) * 1e6, "nvml"
        except Exception:  # no driver access (containers): fall through to the device properties
            pass
    khz = getattr(props, "clock_rate", None)
    # cudaDeviceProp::clockRate is in kHz; a value that is no plausible GPU clock then (0.1-5 GHz) is not trusted
    if isinstance(khz, (int, float)) and 1e5 <= khz <= 5e6:
        return float(khz) * 1e3, "device_properties"
    return 1.5e9, "fallback"


def cache_probe_bytes(l2_bytes: int | None, gpu: bool) -> int:
    """Size of each of the two buffers of the cache-bandwidth copy: a quarter of the L2 (source and destination
    together fill half of it, so both stay resident), at most 16 MiB; 2 MiB where the L2 size is unknown (GPU) and
    64 KiB on a CPU (L1/L2)."""
    if not gpu:
        return 1 << 16
    if not l2_bytes or l2_bytes <= 0:
        return 1 << 21
    return max(1 << 16, min(int(l2_bytes) // 4, 1 << 24)) // 4096 * 4096


def _cpu_frequency() -> float:
    """Nominal clock of the first CPU from /proc/cpuinfo, or 2.5 GHz (only the lanes x clock product matters)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("cpu mhz"):
                    return float(line.split(":")[1]) * 1e6
    except (OSError, ValueError):
        pass
    return 2.5e9


def measure_device(device: str = "auto", quick: bool = True) -> dict:
    """Measure bandwidths, throughputs and launch overhead on `device` ("cpu", "cuda" or "auto").

    Returns a dict with `device`, `name`, `n_pes`, `frequency`, `copy_bandwidth` and `cache_bandwidth` (bytes/s,
    read + written), `fp32_macs` / `bf16_macs` (matrix MACs/s; bf16 only on CUDA), `conv_macs` (3x3 conv, fp32),
    `launch_time` (s) and the problem sizes used. CPU sizes are small so that this takes seconds.
    """
    import torch

    from laudnet.timing import time_call, time_graph

    def timer(fn: Callable[[], object], repeats: int, inner: int) -> float:
        """Median seconds per call of fn, `inner` calls per sample, after one warm-up call (allocations, kernel
        selection)."""
        return time_call(fn, device, repeats, warmup=1, inner=inner)

    def graph_timer(fn: Callable[[], object], copies: int, repeats: int) -> float:
        """Median seconds per call of fn, `copies` calls captured in one CUDA graph and the graph replayed: no host
        launch cost, only the device's per-kernel cost and the work (one warm-up call before the capture, one replay
        before the timing)."""
        return time_graph(fn, repeats=repeats, warmup=1, capture_warmup=1, copies=copies)

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    gpu = device == "cuda"
    repeats = 3 if quick else 10
    out: dict = {"device": device}
    if gpu:
        props = torch.cuda.get_device_properties(0)
        out["name"] = props.name
        out["n_pes"] = props.multi_processor_count
        out["frequency"], out["frequency_source"] = max_sm_clock(props=props)
        out["l2_bytes"] = getattr(props, "L2_cache_size", None)
    else:
        out["name"] = "cpu"
        out["n_pes"] = torch.get_num_threads()
        out["frequency"] = _cpu_frequency()

    big = (1 << 28 if gpu else 1 << 23) // 4  # elements: 256 MiB on GPU, 8 MiB on CPU (beyond most L2s)
    small = cache_probe_bytes(out.get("l2_bytes"), gpu) // 4
    src, dst = torch.empty(big, device=device), torch.empty(big, device=device)
    out["copy_bandwidth"] = 2 * big * 4 / timer(lambda: dst.copy_(src), repeats, 3 if gpu else 2)
    s_src, s_dst = torch.empty(small, device=device), torch.empty(small, device=device)
    if gpu:  # 50 copies per graph replay: the per-kernel launch cost is out, and the copy is several us long
        out["cache_bandwidth"] = 2 * small * 4 / graph_timer(lambda: s_dst.copy_(s_src), 50, repeats)
    else:
        out["cache_bandwidth"] = 2 * small * 4 / timer(lambda: s_dst.copy_(s_src), repeats, 50)
    out["cache_probe_bytes"] = small * 4

    n = 4096 if gpu else 384
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    if gpu:
        old_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # measure true FP32, the paper's precision
    try:
        out["fp32_macs"] = n**3 / timer(lambda: a @ b, repeats, 5 if gpu else 2)
    finally:
        if gpu:
            torch.backends.cuda.matmul.allow_tf32 = old_tf32
    out["matmul_n"] = n
    if gpu and torch.cuda.is_bf16_supported():
        a16, b16 = a.bfloat16(), b.bfloat16()
        out["bf16_macs"] = n**3 / timer(lambda: a16 @ b16, repeats, 10)

    cb, cc, hw_ = (32, 128, 28) if gpu else (1, 32, 28)
    x = torch.randn(cb, cc, hw_, hw_, device=device)
    conv = torch.nn.Conv2d(cc, cc, 3, padding=1, bias=False).to(device)
    if gpu:
        old_cudnn_tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # FP32, comparable with the FP32 matmul
    try:
        with torch.no_grad():
            out["conv_macs"] = cb * cc * cc * 9 * hw_ * hw_ / timer(lambda: conv(x), repeats, 5 if gpu else 2)
    finally:
        if gpu:
            torch.backends.cudnn.allow_tf32 = old_cudnn_tf32
    out["conv_shape"] = [cb, cc, hw_, hw_]
    # Held-out convolutions, timed only to check the fitted spec (not used by the fit): a bottleneck 1x1 and a 3x3 of
    # another shape, in the precision of the fit.
    checks = [(64, 256, 14, 3), (64, 1024, 14, 1)] if gpu else [(cb, 2 * cc, hw_ // 2, 3), (cb, 4 * cc, hw_ // 2, 1)]
    out["check_convs"] = []
    with torch.no_grad():
        for n_b, ch, side, ks in checks:
            xc = torch.randn(n_b, ch, side, side, device=device)
            cv = torch.nn.Conv2d(ch, ch, ks, padding=ks // 2, bias=False).to(device)
            if gpu:
                torch.backends.cudnn.allow_tf32 = False
            try:
                t = timer(lambda cv=cv, xc=xc: cv(xc), repeats, 5 if gpu else 2)
            finally:
                if gpu:
                    torch.backends.cudnn.allow_tf32 = old_cudnn_tf32
            out["check_convs"].append({"batch": n_b, "channels": ch, "size": side, "kernel": ks, "seconds": t})

    tiny = torch.zeros(1, device=device)
    out["launch_time"] = timer(lambda: tiny.add_(1.0), repeats, 200)
    if gpu:  # per kernel of a graph replay: what a graph-captured engine pays (`HardwareSpec.graph_launch_time`)
        out["graph_launch_time"] = graph_timer(lambda: tiny.add_(1.0), 200, repeats)
    return out


def fit_spec(meas: dict, name: str | None = None) -> HardwareSpec:
    """A `HardwareSpec` reproducing the measured throughputs (achieved, not datasheet, rates)."""
    n_pes, freq = int(meas["n_pes"]), float(meas["frequency"])
    lanes = meas["fp32_macs"] / (n_pes * freq)
    tc = meas.get("bf16_macs")
    # Count tensor cores only where 16-bit matmuls clearly beat FP32 (otherwise the device has none worth modelling).
    tc_rate = tc / (n_pes * freq) if tc and tc > 1.5 * meas["fp32_macs"] else None
    gpu = meas["device"] == "cuda"
    return HardwareSpec(
        name=name or ("local-" + meas["device"]),
        n_pes=n_pes, pe_fp32s=lanes, frequency=freq, mem_bandwidth=float(meas["copy_bandwidth"]),
        l2_speed_frac=max(1.0, meas["cache_bandwidth"] / meas["copy_bandwidth"]),
        mem_concurrent_bytes=32.0 if gpu else 64.0,  # DRAM sector on NVIDIA GPUs, cache line on CPUs
        launch_time=float(meas["launch_time"]), batch=128 if gpu else 1,
        graph_launch_time=float(meas["graph_launch_time"]) if meas.get("graph_launch_time") else None,
        tc_macs_per_pe_cycle=tc_rate, precision="bf16" if tc_rate else "fp32",
        conv_efficiency=min(1.0, meas["conv_macs"] / meas["fp32_macs"]),
        description=(f"calibrated on {meas['name']} ({meas['device']}): copy {meas['copy_bandwidth'] / 1e9:.1f} GB/s, "
                     f"fp32 matmul {meas['fp32_macs'] * 2 / 1e12:.3f} TFLOP/s, "
                     f"conv {meas['conv_macs'] * 2 / 1e12:.3f} TFLOP/s, launch {meas['launch_time'] * 1e6:.1f} us"),
    )


def reclock(spec: HardwareSpec, frequency: float) -> HardwareSpec:
    """The same fitted device described at another clock: lanes and tensor-core rate rescaled so that lanes x clock
    (what the calibration measured) is unchanged. Use it to correct a spec fitted with a wrong clock."""
    if not frequency > 0:
        raise ValueError(f"frequency must be positive, got {frequency!r}")
    k = spec.frequency / frequency
    tc = None if spec.tc_macs_per_pe_cycle is None else spec.tc_macs_per_pe_cycle * k
    return replace(spec, frequency=float(frequency), pe_fp32s=spec.pe_fp32s * k, tc_macs_per_pe_cycle=tc)


def check_ops(meas: dict, hw: HardwareSpec) -> list[dict]:
    """Predicted against measured latency of the calibration's matmul (fitted, so only a consistency check) and of
    the held-out convolutions (a real check)."""
    fp32 = hw.with_precision("fp32")
    op = get_op_model(fp32, 1)
    n = meas["matmul_n"]
    rows = [{"op": f"matmul {n}^3 fp32", "measured_ms": n**3 / meas["fp32_macs"] * 1e3,
             "predicted_ms": op.fc(n, n, rows=n).latency * 1e3}]
    for c in meas.get("check_convs", []):
        k, ch, s = c["kernel"], c["channels"], c["size"]
        conv = get_op_model(fp32, c["batch"]).conv(ch, ch, s, s, k)
        rows.append({"op": f"conv{k}x{k} {c['batch']}x{ch}x{s}x{s} fp32", "measured_ms": c["seconds"] * 1e3,
                     "predicted_ms": conv.latency * 1e3})
    for r in rows:
        r["rel_error"] = abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
    return rows


# ---- validating blocks -----------------------------------------------------------------------------------------------
_GEOMETRY_FIELDS = {f.name for f in fields(BlockGeometry)}


def _block_of(m: dict) -> BlockGeometry:
    if "model" in m:
        blocks = get_geometry(m["model"]).blocks()
        stage, index = int(m.get("stage", -1)), int(m.get("index", -1))
        found = [b for b in blocks if b.stage == stage and b.index == index]
        if not found:
            raise ValueError(f"measurement {m!r}: {m['model']} has no block stage={stage} index={index} "
                             "(stage and index are 0-based)")
        return found[0]
    need = {"in_channels", "out_channels", "width", "in_size", "stride"}
    missing = sorted(need - set(m))
    if missing:
        raise ValueError(f"measurement {m!r} needs either model/stage/index or the block geometry; missing {missing}")
    geo = {k: m[k] for k in _GEOMETRY_FIELDS if k in m}
    geo.setdefault("stage", 0)
    geo.setdefault("index", 0)
    geo.setdefault("groups", 1)
    geo.setdefault("se_squeeze", 0)
    geo.setdefault("projection", geo["stride"] != 1 or geo["in_channels"] != geo["out_channels"])
    return BlockGeometry(**geo)


def compare_blocks(measurements: Sequence[dict], hw: str | HardwareSpec, compat: str | None = None) -> dict:
    """Compare predicted with measured block latencies.

    Args:
        measurements: dicts with the block (`model`, 0-based `stage` and `index`, or the geometry fields of
            `BlockGeometry`), `paradigm` (static/spatial/channel/layer), `granularity` (S or G; optional otherwise),
            `density`, `batch` and `measured_ms` (latency of the block for the whole batch, ms); optional `precision`,
            `graphed` (true: timed as CUDA-graph replays, so kernels cost the spec's `graph_launch_time`) and
            `spatial_conv1` ("dense" or "sparse": the engine's conv1 mode of a spatial block) and `masker` (false: the
            block was timed with its masks given, so the masker network is not predicted either) and `index_lists`
            (false: the block was timed with its index lists prebuilt).
        hw: device (preset name, spec file or `HardwareSpec`).
        compat: None or "paper".

    Returns:
        `{"n", "median_rel_error", "worst_rel_error", "median_signed_error", "worst", "rows"}`; each row is the
        measurement with `predicted_ms` and `rel_error` = |predicted - measured| / measured added.

    Raises:
        ValueError: an empty list, or a measurement that lacks a field or has a bad value.
    """
    if not measurements:
        raise ValueError("compare_blocks needs at least one measurement")
    hw = load_hardware(hw)
    rows = []
    for m in measurements:
        paradigm = m.get("paradigm", "static")
        if paradigm not in CNN_PARADIGMS:
            raise ValueError(f"measurement {m!r}: unknown paradigm {paradigm!r}")
        measured = m.get("measured_ms")
        if not isinstance(measured, (int, float)) or measured <= 0:
            raise ValueError(f"measurement {m!r}: measured_ms must be a positive number")
        density = float(m.get("density", 1.0))
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"measurement {m!r}: density must lie in [0, 1]")
        batch = int(m.get("batch", hw.batch))
        gran = int(m.get("granularity") or (1 if paradigm == "channel" else 0))
        if paradigm == "spatial" and gran < 1:
            raise ValueError(f"measurement {m!r}: spatial skipping needs a granularity (patch size S)")
        block = _block_of(m)
        if paradigm == "spatial" and block.out_size % gran:
            raise ValueError(f"measurement {m!r}: S={gran} does not divide the block output size {block.out_size}")
        dev = hw.with_precision(m["precision"]) if "precision" in m else hw
        if compat == "paper" and dev.precision != "fp32":
            dev = dev.with_precision("fp32")
        if m.get("graphed") and compat != "paper":  # compat keeps the paper's single launch time
            dev = dev.graphed()
        conv1 = m.get("spatial_conv1", "dense")
        if conv1 not in SPATIAL_CONV1:
            raise ValueError(f"measurement {m!r}: spatial_conv1 must be one of {SPATIAL_CONV1}")
        op = get_op_model(dev, batch, compat == "paper")
        predicted = block_cost(op, block, paradigm, density, gran, spatial_conv1=conv1,
                               masker=bool(m.get("masker", True)), index=bool(m.get("index_lists", True))).latency * 1e3
        signed = (predicted - measured) / measured
        rows.append({**m, "predicted_ms": predicted, "rel_error": abs(signed), "signed_error": signed})
    worst = max(rows, key=lambda r: r["rel_error"])
    return {
        "n": len(rows),
        "median_rel_error": statistics.median(r["rel_error"] for r in rows),
        "worst_rel_error": worst["rel_error"],
        "median_signed_error": statistics.median(r["signed_error"] for r in rows),
        "worst": worst,
        "rows": rows,
    }
