"""Hardware description for the analytic latency predictor (LAUDNet, Han et al., TPAMI 2024, Sec. "latency predictor").

The paper models a GPU as `n_pes` processing engines (SMs) of `pe_fp32s` FP32 lanes each, clocked at `frequency`, fed by
DRAM (`mem_bandwidth`) through an L2 that is `l2_speed_frac` times faster. Every kernel pays `launch_time`. A tile of
outputs keeps an engine busy only in multiples of `pe_fp32s * fp32_cycles` outputs, and memory requests are served in
sectors of `mem_concurrent` elements. Compute and memory latency compose by `add` (every paper preset) or `max`.

Beyond the paper, a spec may carry the tensor-core throughput (`tc_macs_per_pe_cycle`, dense bf16/fp16 MACs per SM and
cycle, from the datasheet's dense TFLOPS) so that `precision="bf16"` predictions mean something on current GPUs.
The paper's devices default to `precision="fp32"`, which is the paper's model.

Presets: the paper's numbers (V100, RTX 3090, RTX 3060, Jetson TX2, Jetson Nano, from the official simulator's
`eval_example.py`) and A100 / H100 / H200 from NVIDIA's datasheets. `load_hardware` also reads a JSON or YAML file,
such as the one `laudnet calibrate` writes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class HardwareSpec:
    """One device as the latency model sees it.

    Args:
        name: short identifier (preset name or file stem).
        n_pes: processing engines (SMs on a GPU, cores on a CPU).
        pe_fp32s: FP32 lanes per engine (one MAC per lane and cycle).
        frequency: clock in Hz.
        mem_bandwidth: DRAM bandwidth in bytes/s.
        l2_speed_frac: L2 bandwidth as a multiple of DRAM bandwidth.
        fp32_cycles: cycles of work an engine needs in flight to be full (the paper's 4).
        mem_concurrent_bytes: bytes per memory request (a 32-byte sector); requests narrower than this waste bandwidth.
        launch_time: seconds of fixed cost per kernel launched from the host (eager execution).
        graph_launch_time: seconds of fixed cost per kernel inside a CUDA-graph replay (how laudnet's deployed
            engine runs), or None to use `launch_time`. `laudnet calibrate` measures it on a GPU.
        latency_mode: "add" (compute + memory) or "max" (perfect overlap).
        batch: default batch size for this device (128 for data-centre GPUs, 1 for embedded ones).
        tc_macs_per_pe_cycle: dense tensor-core MACs per engine and cycle at 16-bit precision, or None when the device
            has no tensor cores (or they are not modelled). TF32 runs at half this rate.
        precision: default precision of predictions on this device.
        conv_efficiency: achieved throughput of a k x k convolution (k > 1) relative to a matrix product of the same
            MACs (implicit-GEMM and Winograd overheads); 1 in the paper's model, measured by `laudnet calibrate`.
            Not used in compat mode.
        description: free text (source of the numbers).
    """

    name: str
    n_pes: int
    pe_fp32s: float
    frequency: float
    mem_bandwidth: float
    l2_speed_frac: float = 4.0
    fp32_cycles: int = 4
    mem_concurrent_bytes: float = 32.0
    launch_time: float = 8e-6
    graph_launch_time: float | None = None
    latency_mode: str = "add"
    batch: int = 1
    tc_macs_per_pe_cycle: float | None = None
    precision: str = "fp32"
    conv_efficiency: float = 1.0
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for key in ("n_pes", "pe_fp32s", "frequency", "mem_bandwidth", "l2_speed_frac", "fp32_cycles",
                    "mem_concurrent_bytes", "batch", "conv_efficiency"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"hardware {self.name!r}: {key} must be a positive number, got {value!r}")
        if self.launch_time < 0:
            raise ValueError(f"hardware {self.name!r}: launch_time must be >= 0, got {self.launch_time!r}")
        if self.graph_launch_time is not None and (not isinstance(self.graph_launch_time, (int, float))
                                                   or self.graph_launch_time < 0):
            raise ValueError(f"hardware {self.name!r}: graph_launch_time must be >= 0 or null, "
                             f"got {self.graph_launch_time!r}")
        if self.latency_mode not in ("add", "max"):
            raise ValueError(f"hardware {self.name!r}: latency_mode must be 'add' or 'max', got {self.latency_mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"hardware {self.name!r}: precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.tc_macs_per_pe_cycle is not None and self.tc_macs_per_pe_cycle <= 0:
            raise ValueError(f"hardware {self.name!r}: tc_macs_per_pe_cycle must be positive or null")
        if self.precision != "fp32" and self.tc_macs_per_pe_cycle is None:
            raise ValueError(f"hardware {self.name!r}: precision {self.precision!r} needs tc_macs_per_pe_cycle")

    # ---- derived quantities -------------------------------------------------------------------------------------
    @property
    def bytes_per_element(self) -> int:
        return _BYTES[self.precision]

    @property
    def mem_elem_bandwidth(self) -> float:
        """DRAM bandwidth in elements/s at this precision (the paper's fp32/s for fp32)."""
        return self.mem_bandwidth / self.bytes_per_element

    @property
    def l2_elem_bandwidth(self) -> float:
        return self.mem_elem_bandwidth * self.l2_speed_frac

    @property
    def mem_concurrent(self) -> float:
        """Elements per memory request (the paper's `mem_concurrent_fp32` = 32 B / 4 B = 8 for fp32)."""
        return self.mem_concurrent_bytes / self.bytes_per_element

    @property
    def matmul_lanes(self) -> float:
        """MACs per engine and cycle for convolutions and matrix products at this precision."""
        if self.precision == "fp32":
            return self.pe_fp32s
        assert self.tc_macs_per_pe_cycle is not None  # checked in __post_init__
        return self.tc_macs_per_pe_cycle / 2 if self.precision == "tf32" else self.tc_macs_per_pe_cycle

    @property
    def matmul_fill(self) -> float:
        """Outputs a tile needs to keep an engine's matrix units busy.

        FP32 (the paper): one output per lane for `fp32_cycles` cycles. Tensor cores reduce `k` = 8 (tf32) or 16
        (bf16/fp16) products into each output per instruction (mma m16n8k8 / m16n8k16), so they need k times fewer
        outputs in flight for the same MAC rate.
        """
        k = {"fp32": 1, "tf32": 8}.get(self.precision, 16)
        return self.matmul_lanes * self.fp32_cycles / k

    @property
    def peak_macs(self) -> float:
        """Peak matrix MACs/s of the whole device at this precision."""
        return self.n_pes * self.matmul_lanes * self.frequency

    def with_precision(self, precision: str) -> HardwareSpec:
        """The same device at another precision (ValueError if it has no tensor cores for it)."""
        return dataclasses.replace(self, precision=precision)

    def graphed(self) -> HardwareSpec:
        """The spec for kernels replayed from a CUDA graph: `launch_time` replaced by `graph_launch_time` (when set)."""
        if self.graph_launch_time is None:
            return self
        return dataclasses.replace(self, launch_time=self.graph_launch_time)

    def with_batch(self, batch: int) -> HardwareSpec:
        return dataclasses.replace(self, batch=batch)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, name: str | None = None) -> HardwareSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown hardware field(s) {unknown}; known fields: {sorted(known)}")
        data = dict(data)
        if name is not None:
            data.setdefault("name", name)
        missing = [k for k in ("name", "n_pes", "pe_fp32s", "frequency", "mem_bandwidth") if k not in data]
        if missing:
            raise ValueError(f"hardware spec lacks required field(s) {missing}")
        return cls(**data)


def _tc_rate(dense_tflops: float, n_pes: int, frequency: float) -> float:
    """Dense 16-bit tensor MACs per SM and cycle from a datasheet's dense TFLOPS (2 FLOPs per MAC)."""
    return dense_tflops * 1e12 / 2 / n_pes / frequency


# The paper's devices use the official simulator's numbers unchanged (note 3060's 3584/28 and 3090's 10496//82 lanes,
# and 3090's l2_speed_frac of 1). Launch time 8 us and the 32-byte sector are the simulator's class defaults.
PRESETS: dict[str, HardwareSpec] = {
    "v100": HardwareSpec("v100", 80, 64, 1500e6, 700e9, batch=128, tc_macs_per_pe_cycle=_tc_rate(125.0, 80, 1530e6),
                         description="Tesla V100 (paper); tensor rate from 125 TFLOPS fp16 at 1530 MHz"),
    "3090": HardwareSpec("3090", 82, 10496 // 82, 1250e6, 936e9, l2_speed_frac=1, batch=128,
                         description="GeForce RTX 3090 (paper)"),
    "3060": HardwareSpec("3060", 28, 3584 / 28, 1777e6, 360e9, batch=128, description="GeForce RTX 3060 (paper)"),
    "tx2": HardwareSpec("tx2", 2, 128, 1300e6, 59.7e9, batch=1, description="Jetson TX2 (paper)"),
    "nano": HardwareSpec("nano", 1, 128, 921e6, 25.6e9, batch=1, description="Jetson Nano (paper)"),
    # Datasheet numbers. FP32 lanes/SM and boost clocks give the datasheet FP32 TFLOPS (A100 19.5, H100 SXM 66.9);
    # tensor rates are dense bf16 TFLOPS (A100 312, H100/H200 SXM 989.4) per SM per boost cycle. The L2 ratio and
    # launch time are estimates (no datasheet gives them): `laudnet calibrate` measures both on the real device.
    "a100": HardwareSpec("a100", 108, 64, 1410e6, 2039e9, l2_speed_frac=3, launch_time=5e-6, batch=128,
                         tc_macs_per_pe_cycle=_tc_rate(312.0, 108, 1410e6), precision="bf16",
                         description="A100 SXM4 80GB datasheet: 108 SMs, 1410 MHz, 2039 GB/s, 312 TFLOPS bf16"),
    "h100": HardwareSpec("h100", 132, 128, 1980e6, 3350e9, l2_speed_frac=2, launch_time=5e-6, batch=128,
                         tc_macs_per_pe_cycle=_tc_rate(989.4, 132, 1980e6), precision="bf16",
                         description="H100 SXM5 80GB datasheet: 132 SMs, 1980 MHz, 3.35 TB/s, 989 TFLOPS bf16"),
    "h200": HardwareSpec("h200", 132, 128, 1980e6, 4800e9, l2_speed_frac=2, launch_time=5e-6, batch=128,
                         tc_macs_per_pe_cycle=_tc_rate(989.4, 132, 1980e6), precision="bf16",
                         description="H200 SXM 141GB datasheet: 132 SMs, 1980 MHz, 4.8 TB/s, 989 TFLOPS bf16"),
}
_ALIASES = {"rtx3090": "3090", "rtx3060": "3060", "jetson-tx2": "tx2", "jetson-nano": "nano"}


def list_hardware() -> list[str]:
    """Names of the built-in presets."""
    return list(PRESETS)


def load_hardware(name_or_path: str | Path | HardwareSpec) -> HardwareSpec:
    """A preset by name (case-insensitive), or a spec read from a JSON / YAML file.

    Raises:
        ValueError: unknown preset name, or a file whose content is not a valid spec.
        FileNotFoundError: a path (anything with a suffix or a separator) that does not exist.
    """
    if isinstance(name_or_path, HardwareSpec):
        return name_or_path
    text = str(name_or_path)
    key = _ALIASES.get(text.lower(), text.lower())
    if key in PRESETS:
        return PRESETS[key]
    path = Path(text)
    looks_like_file = path.suffix.lower() in (".json", ".yaml", ".yml") or "/" in text or path.exists()
    if not looks_like_file:
        raise ValueError(f"unknown hardware {text!r}; presets: {', '.join(PRESETS)} (or a .json/.yaml spec file)")
    if not path.is_file():
        raise FileNotFoundError(f"hardware spec file not found: {path}")
    raw = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(raw)
    else:
        import yaml  # only file-based specs need it

        data = yaml.safe_load(raw)
    if not isinstance(data, dict):
        raise ValueError(f"hardware spec file {path} must hold a mapping of fields, got {type(data).__name__}")
    return HardwareSpec.from_dict(data, name=path.stem)


def save_hardware(spec: HardwareSpec, path: str | Path) -> Path:
    """Write `spec` as JSON (`.json`) or YAML (`.yaml`/`.yml`) so that `load_hardware(path)` reads it back."""
    path = Path(path)
    data = spec.to_dict()
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(data, indent=2) + "\n")
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        raise ValueError(f"hardware spec file must end in .json, .yaml or .yml, got {path.name!r}")
    return path
