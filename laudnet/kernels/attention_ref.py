"""Reference of `attention.py`: attention within packed sequences, with (sequence, head) pairs that are skipped.

Rows are packed sequences (``cu``: the sequences' start rows and, last, their end, int32 `[S + 1]`); q, k and v are
`[R, H, d]`. A row attends to the rows of its own sequence only. With `heads` (bool `[S, H]`), a pair whose entry is
false is not computed and outputs zero (a skipped attention head of that sample).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_varlen_args(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_len: int, heads: Tensor | None) -> None:
    """Raise ValueError naming the problem: shapes, dtypes, devices, a head mask of the wrong shape."""
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k and v must be [rows, heads, head_dim] of one shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
        raise ValueError("varlen attention needs contiguous q, k and v")
    if cu.dim() != 1 or cu.numel() < 1 or cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu must be an int32/int64 vector of sequence starts and the end, got {cu.dtype} "
                         f"{tuple(cu.shape)}")
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    if heads is not None and (heads.dtype != torch.bool or tuple(heads.shape) != (cu.numel() - 1, q.shape[1])):
        raise ValueError(f"heads must be a bool [sequences, heads] = [{cu.numel() - 1}, {q.shape[1]}] mask, got "
                         f"{heads.dtype} {tuple(heads.shape)}")
    for name, t in (("k", k), ("v", v), ("cu", cu), ("heads", heads)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")


def varlen_attention_ref(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_len: int, scale: float,
                         heads: Tensor | None = None) -> Tensor:
    """Attention within each packed sequence, without host synchronisation: the rows are scattered into a
    (S, max_len) padded batch, attended with a key-padding mask and gathered back. Rows past ``cu[-1]`` give 0, and
    so do the pairs that `heads` skips. Sequences longer than `max_len` are cut to it."""
    check_varlen_args(q, k, v, cu, max_len, heads)
    r, h, d = q.shape
    s = cu.numel() - 1
    if s == 0 or max_len == 0 or r == 0:
        return q.new_zeros(q.shape)
    cu = cu.long()
    row = torch.arange(r, device=q.device)
    seq = torch.searchsorted(cu[1:], row, right=True)  # s for rows past the last sequence
    off = row - cu[seq.clamp(max=s - 1)]
    ok = (seq < s) & (off < max_len)
    slot = torch.where(ok, seq * max_len + off, s * max_len + row)  # unused rows go to their own spare slots

    def padded(t: Tensor) -> Tensor:
        buf = t.new_zeros(s * max_len + r, h, d)
        buf[slot] = t
        return buf[: s * max_len].view(s, max_len, h, d).transpose(1, 2)

    lengths = cu[1:] - cu[:-1]
    key_ok = torch.arange(max_len, device=q.device) < lengths[:, None]
    key_ok[:, 0] = True  # an empty sequence attends to a zero row (no query of it is read back) rather than to nothing
    o = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=key_ok[:, None, None, :],
                                       scale=scale)
    o = o.transpose(1, 2).reshape(s * max_len, h, d)
    keep = ok[:, None]
    if heads is not None:
        keep = keep & heads[seq.clamp(max=s - 1)]
    return torch.where(keep[:, :, None], o[slot.clamp(max=s * max_len - 1)], 0)
