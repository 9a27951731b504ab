"""Pure-PyTorch reference of the layer-skipping write-back: the specification of `layer.py`.

Layer skipping with batch > 1 (LAUDNet, Han et al., TPAMI 2024): the block's residual branch runs on the compacted
sub-batch of active samples, and its result is added back into the full output, in place, at those samples' rows.
"""

from __future__ import annotations

import torch


def check_rows_args(out: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
    """Raise ValueError unless `out [N, ...]`, `y [n, ...]`, `idx [n]` (int32/int64) fit together."""
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"idx must be a 1-D int32/int64 tensor, got dtype {idx.dtype} shape {tuple(idx.shape)}")
    if y.shape[0] != idx.shape[0] or y.shape[1:] != out.shape[1:]:
        raise ValueError(
            f"y must be [len(idx), *out.shape[1:]] = {[idx.shape[0], *out.shape[1:]]}, got {list(y.shape)}"
        )
    if not out.is_contiguous() or not y.is_contiguous():
        raise ValueError("out and y must be contiguous (NHWC rows of a sample are then one contiguous block)")
    if idx.device != out.device or y.device != out.device:
        raise ValueError(f"out, y and idx must be on one device, got {out.device}, {y.device}, {idx.device}")


def rows_add_relu_ref(out: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """`out[idx] = relu(out[idx] + y)` in place (indices must be distinct); returns `out`.

    Args:
        out: `[N, ...]` contiguous, e.g. the block input x (identity) or its projection, NHWC.
        y: `[n, ...]` residual-branch output of the compacted sub-batch.
        idx: `[n]` active sample indices.
        relu: apply ReLU after the add.
    """
    check_rows_args(out, y, idx)
    if idx.numel() == 0:
        return out
    i = idx.long()
    val = out.index_select(0, i).float() + y.float()
    if relu:
        val = val.relu()
    out.index_copy_(0, i, val.to(out.dtype))
    return out
