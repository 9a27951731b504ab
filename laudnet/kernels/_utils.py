"""Small helpers shared by the kernels: input checks, Triton availability and lazy `triton.jit`.

Kernels are decorated lazily (`LazyKernel`) rather than at import time because `triton.jit` decides once, when it
decorates, whether the function runs compiled or under the CPU interpreter (`TRITON_INTERPRET=1`). Deciding at the
first launch instead lets the same process run interpreter tests on CPU tensors and compiled kernels on CUDA, whatever
the import order of the test modules.

Kernels must not call Triton's `@jit` standard-library helpers (`tl.cdiv`, `tl.zeros`, ...): those are decorated
when triton is imported, so without `TRITON_INTERPRET=1` at that moment they cannot run under the interpreter. Plain
integer arithmetic and `tl.full` do the same job.
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Callable
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


def check_nhwc(t: torch.Tensor, name: str) -> None:
    """Raise ValueError unless `t` is a 4-D tensor whose (N, H, W, C) memory is contiguous."""
    if t.dim() != 4:
        raise ValueError(f"{name} must be a 4-D NHWC tensor [N, H, W, C], got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(
            f"{name} must be contiguous NHWC (a channels_last NCHW tensor viewed with .permute(0, 2, 3, 1)); "
            f"got strides {t.stride()} for shape {tuple(t.shape)}"
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
