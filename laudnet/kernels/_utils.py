"""Helpers shared by every kernel module: Triton availability, lazy `triton.jit`, launch configurations (the tile
type, the named tile lists and the choice among them, grids) and the input checks of the launchers.

Kernels are decorated lazily (`LazyKernel`) rather than at import time because `triton.jit` decides once, when it
decorates, whether the function runs compiled or under the CPU interpreter (`TRITON_INTERPRET=1`). Deciding at the
first launch instead lets the same process run interpreter tests on CPU tensors and compiled kernels on CUDA, whatever
the import order of the test modules.

Kernels must not call Triton's `@jit` standard-library helpers (`tl.cdiv`, `tl.zeros`, ...): those are decorated
when triton is imported, so without `TRITON_INTERPRET=1` at that moment they cannot run under the interpreter. Plain
integer arithmetic and `tl.full` do the same job.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch


@functools.cache
def triton_available() -> bool:
    """True when `triton` imports (it may still lack a GPU: see `interpreter_enabled`)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import
        return False
    return True


def interpreter_enabled() -> bool:
    """True when `TRITON_INTERPRET=1`: Triton kernels then run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _jitted_helper(fn: Callable[..., Any], mode: bool) -> Any:
    import triton

    return triton.jit(fn)


class LazyKernel:
    """A Triton kernel decorated on first use, once per mode (compiled / interpreted).

    Used as `_my_kernel = LazyKernel(_my_kernel_src)` then `_my_kernel[grid](...)` exactly like a `triton.jit`
    function. `helpers`: plain functions the kernel calls (by their module-level names), decorated in the same mode
    as the kernel and seen only by it.
    """

    def __init__(self, fn: Callable[..., Any], helpers: tuple[Callable[..., Any], ...] = ()):
        self.fn = fn
        self.helpers = tuple(helpers)
        self._jitted: dict[bool, Any] = {}

    def _get(self) -> Any:
        mode = interpreter_enabled()
        if mode not in self._jitted:
            import triton

            fn = self.fn
            if self.helpers:  # the kernel's own copy of its module scope, the helpers decorated in this mode
                scope = dict(fn.__globals__)
                scope.update({h.__name__: _jitted_helper(h, mode) for h in self.helpers})
                fn = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
                for attr in ("__module__", "__qualname__", "__doc__", "__annotations__", "__kwdefaults__"):
                    setattr(fn, attr, getattr(self.fn, attr))
            self._jitted[mode] = triton.jit(fn)
        return self._jitted[mode]

    def __getitem__(self, grid: Any) -> Any:
        return self._get()[grid]


def check_nhwc(t: torch.Tensor, name: str, channels: int | None = None) -> None:
    """Raise ValueError unless `t` is a 4-D tensor whose (N, H, W, C) memory is contiguous (with `channels` C)."""
    if t.dim() != 4:
        raise ValueError(f"{name} must be a 4-D NHWC tensor [N, H, W, C], got shape {tuple(t.shape)}")
    if channels is not None and t.shape[3] != channels:
        raise ValueError(f"{name} must have {channels} channels (last dim), got {t.shape[3]}")
    if not t.is_contiguous():
        raise ValueError(
            f"{name} must be contiguous NHWC (a channels_last NCHW tensor viewed with .permute(0, 2, 3, 1)); "
            f"got strides {t.stride()} for shape {tuple(t.shape)}"
        )


def check_bias(bias: torch.Tensor | None, cout: int, name: str = "bias") -> None:
    """Raise ValueError unless `bias` is None or a `[cout]` vector."""
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"{name} must be [Cout] = [{cout}], got shape {tuple(bias.shape)}")


def check_count(count: torch.Tensor | None, device: torch.device) -> None:
    """Raise ValueError unless `count` (a list's device-side length) is None or an int32 `[1]` tensor on `device`."""
    if count is not None and (count.dtype != torch.int32 or count.numel() != 1 or count.device != device):
        raise ValueError(
            f"count must be an int32 tensor of one element on {device}, "
            f"got dtype {count.dtype} shape {tuple(count.shape)} on {count.device}"
        )


def check_patch_idx(patch_idx: torch.Tensor, device: torch.device) -> None:
    """Raise ValueError unless `patch_idx` is an int32 [P, 3] tensor on `device`."""
    if patch_idx.dtype != torch.int32 or patch_idx.dim() != 2 or patch_idx.shape[1] != 3:
        raise ValueError(
            f"patch_idx must be an int32 tensor [P, 3] of (sample, patch_row, patch_col), "
            f"got dtype {patch_idx.dtype} shape {tuple(patch_idx.shape)}"
        )
    if patch_idx.device != device:
        raise ValueError(f"patch_idx is on {patch_idx.device} but the feature map is on {device}")


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints (grid sizes)."""
    return -(-a // b)


def fit_tile(block: int, extent: int) -> int:
    """Shrink a tile side to the problem: at most `block`, a power of two, at least 16 (tl.dot's narrowest)."""
    return max(16, min(block, next_power_of_2(extent)))


# ---------------------------------------------------------------------------------------------------------------
# launch configurations of the GEMM kernels


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """Tile shape and launch parameters of one GEMM kernel."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3

    def fit(self, m: int, k: int, n: int) -> GemmConfig:
        """These tiles shrunk to an M x K x N problem (`fit_tile` on each side)."""
        return dataclasses.replace(self, block_m=fit_tile(self.block_m, m), block_n=fit_tile(self.block_n, n),
                                   block_k=fit_tile(self.block_k, k))


# Named config lists (Triton tutorial 03 style); the benchmarks sweep them, `pick_config` chooses among them by shape.
CONV3X3_CONFIGS: dict[str, GemmConfig] = {
    "m128_n64_k64_w4_s3": GemmConfig(128, 64, 64, 4, 3),
    "m128_n128_k64_w8_s3": GemmConfig(128, 128, 64, 8, 3),
    "m64_n64_k64_w4_s4": GemmConfig(64, 64, 64, 4, 4),
    "m128_n64_k32_w4_s4": GemmConfig(128, 64, 32, 4, 4),
    "m64_n128_k64_w4_s3": GemmConfig(64, 128, 64, 4, 3),
    "m128_n256_k64_w8_s3": GemmConfig(128, 256, 64, 8, 3),
    "m128_n128_k64_w8_s4": GemmConfig(128, 128, 64, 8, 4),
    "m256_n128_k64_w8_s3": GemmConfig(256, 128, 64, 8, 3),
}
CONV1X1_CONFIGS: dict[str, GemmConfig] = {
    "m128_n128_k64_w8_s3": GemmConfig(128, 128, 64, 8, 3),
    "m128_n256_k64_w8_s3": GemmConfig(128, 256, 64, 8, 3),
    "m128_n64_k64_w4_s3": GemmConfig(128, 64, 64, 4, 3),
    "m64_n128_k64_w4_s4": GemmConfig(64, 128, 64, 4, 4),
    "m64_n64_k64_w4_s3": GemmConfig(64, 64, 64, 4, 3),
    "m128_n64_k64_w4_s2": GemmConfig(128, 64, 64, 4, 2),
}
# The channel-skipping kernels (one GEMM per sample, `channel.py`): the largest tiles, each shrunk to the problem
# (`GemmConfig.fit`); the fastest of tile sweeps at ResNet stages 2 and 3.
CHANNEL_CONFIGS: dict[str, GemmConfig] = {
    "channel_conv1x1_out": GemmConfig(128, 64, 64, 4, 3),
    "channel_conv3x3": GemmConfig(128, 64, 32, 4, 3),
    "channel_conv1x1_in": GemmConfig(64, 128, 64, 4, 3),
}
# Small tiles under the interpreter: it runs numpy per program, so fewer, smaller blocks are faster to test.
_INTERPRET_CONFIG = GemmConfig(32, 16, 16, 1, 1)
_INTERPRET_CHANNEL_CONFIG = GemmConfig(16, 16, 16, 1, 1)


def pick_config(kind: str, m: int, k: int, n: int, whole_maps: bool = False) -> GemmConfig:
    """Default tile config for a GEMM of M x K x N.

    Args:
        kind: "conv3x3", "scatter" or "conv1x1" (`spatial.py`, `rows.py`), or a key of `CHANNEL_CONFIGS`.
        m, k, n: the GEMM's rows, reduction and columns (for the channel kernels: pixels per sample, and the
            compacted channels `Kmax` or the full width on the other sides).
        whole_maps: the rows are whole feature maps per sample (layer skipping; a patch covering the map), which
            favours other tiles at some stages (chosen by a tile sweep).
    """
    if kind in CHANNEL_CONFIGS:
        return _INTERPRET_CHANNEL_CONFIG if interpreter_enabled() else CHANNEL_CONFIGS[kind].fit(m, k, n)
    if kind not in ("conv3x3", "scatter", "conv1x1"):
        raise ValueError(f"unknown GEMM kind {kind!r}")
    if interpreter_enabled():
        return _INTERPRET_CONFIG
    if kind == "conv3x3":
        # N = Cout is 64..256 in ResNet stages 1-3. A sweep at S=4, rate 0.5 found
        # 128x64 tiles best for Cout = 64, 128x128 with 8 warps for Cout = 128 and 256.
        cfg = CONV3X3_CONFIGS["m128_n128_k64_w8_s3"] if n >= 128 else CONV3X3_CONFIGS["m128_n64_k64_w4_s3"]
        if whole_maps and n == 256:  # ResNet stage 3 (14 x 14 maps): faster than 128 x 128 tiles
            cfg = CONV3X3_CONFIGS["m128_n64_k64_w4_s3"]
    elif kind == "scatter":
        # K = width is short (64-256), N = 4*width long: the epilogue (residual read + write) dominates, and
        # 128x64 tiles with 4 warps beat 128x128/128x256 on all three stages.
        cfg = CONV1X1_CONFIGS["m128_n64_k64_w4_s3"]
    else:
        cfg = CONV1X1_CONFIGS["m128_n128_k64_w8_s3"] if n >= 128 else CONV1X1_CONFIGS["m128_n64_k64_w4_s3"]
    # Fewer rows than ~1 wave of 128-row tiles on 132 SMs: halve BLOCK_M to fill the machine. Whole maps at stage 4
    # (batch 128, 6 272 rows of capacity) measured faster unhalved, so there only very short lists (batch 1) halve.
    if m <= (32 if whole_maps else 64) * 132:
        cfg = GemmConfig(64, cfg.block_n, cfg.block_k, 4, cfg.num_stages)
    return dataclasses.replace(cfg, block_k=fit_tile(cfg.block_k, k))


_CONFIG_KEYS = {"BM": "block_m", "BN": "block_n", "BK": "block_k"}


def resolve_config(config: GemmConfig | Mapping[str, int] | None, default: GemmConfig) -> GemmConfig:
    """A launcher's tiles: `config` itself, `default` when None, or `default` with the fields a mapping overrides
    (`BM`/`block_m`, `BN`/`block_n`, `BK`/`block_k`, `num_warps`, `num_stages`: the benchmarks' sweep form)."""
    if config is None:
        return default
    if isinstance(config, GemmConfig):
        return config
    return dataclasses.replace(default, **{_CONFIG_KEYS.get(key, key): value for key, value in config.items()})


def gemm_grid(m: int, n: int, cfg: GemmConfig) -> tuple[int]:
    """One program per (BLOCK_M x BLOCK_N) output tile of an M x N GEMM, a flat grid (the kernel splits the id)."""
    return (cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n),)
