"""Pure-PyTorch reference of `rows.py`: a linear layer on listed rows of a token matrix, with the ViT MLP's GELU or
the residual scatter-add fused (the specification of the Triton kernel).

Used by the capturable deployed ViT (`laudnet.deploy.vit`), whose token rows are packed with a fixed capacity `R`
and a device-side count (`laudnet.deploy.packed`):

* **gather form** (`out_idx=None`): `y[r] = act(src[in_idx[r]] @ W + b)` for the rows `r < count`, a new
  `(R, Cout)` matrix (rows past `count`: unspecified, zero here). For the attention's qkv projection, `planes=3`
  lays the result out as `(3, R, Cout / 3)` (q, k and v each contiguous, as the varlen kernel takes them) and `heads`
  zeroes the columns of the heads a row's sample skips (those GEMM tiles are not computed);
* **scatter-add form** (`out_idx` given): `out[out_idx[r]] += scale * (src[in_idx[r]] @ W + b)` for the rows
  `r < count` with `keep[r]`, in place; `out_idx` entries are distinct (each output row has one writer, no atomics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTS = ("none", "gelu")


def check_rows_linear_args(src, weight_t, bias, in_idx, count, act, out, out_idx, keep, scale, planes=1,
                           heads=None) -> tuple[int, int, int]:
    """Shared checks of the reference and the Triton launcher; returns (R, Cin, Cout)."""
    if src.dim() != 2 or not src.is_contiguous():
        raise ValueError(f"src must be a contiguous (M, Cin) matrix, got shape {tuple(src.shape)}")
    cin = src.shape[1]
    if weight_t.dim() != 2 or weight_t.shape[0] != cin:
        raise ValueError(f"weight_t must be (Cin={cin}, Cout), got {tuple(weight_t.shape)}")
    cout = weight_t.shape[1]
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"bias must be ({cout},), got {tuple(bias.shape)}")
    if isinstance(planes, bool) or not isinstance(planes, int) or planes < 1 or cout % planes:
        raise ValueError(f"planes must be a positive integer dividing Cout={cout}, got {planes!r}")
    if (planes > 1 or heads is not None) and out_idx is not None:
        raise ValueError("planes and heads belong to the gather form")
    if heads is not None:
        keep_heads, tokens = heads
        if keep_heads.dtype != torch.bool or keep_heads.dim() != 2 or (cout // planes) % keep_heads.shape[1]:
            raise ValueError(f"heads must be a bool (B, H) tensor with H dividing {cout // planes} columns per "
                             f"plane, got {keep_heads.dtype} {tuple(keep_heads.shape)}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"heads' token count (source rows per sample) must be a positive integer, got {tokens!r}")
        if src.shape[0] > keep_heads.shape[0] * tokens:
            raise ValueError(f"src has {src.shape[0]} rows, more than {keep_heads.shape[0]} samples x {tokens} tokens")
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")
    for name, t in (("in_idx", in_idx), ("out_idx", out_idx)):
        if t is not None and (t.dtype != torch.int32 or t.dim() != 1):
            raise ValueError(f"{name} must be int32 (R,), got {t.dtype} {tuple(t.shape)}")
    r = in_idx.shape[0] if in_idx is not None else src.shape[0]
    if count is not None and (count.dtype != torch.int32 or count.numel() != 1):
        raise ValueError(f"count must be a one-element int32 tensor, got {count.dtype} {tuple(count.shape)}")
    if out_idx is None:
        if out is not None or keep is not None or scale is not None:
            raise ValueError("out, keep and scale belong to the scatter-add form (give out_idx)")
    else:
        if out_idx.shape[0] != r:
            raise ValueError(f"out_idx has {out_idx.shape[0]} rows, the row list has {r}")
        if out is None or out.dim() != 2 or out.shape[1] != cout or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous (M, Cout={cout}) matrix for the scatter-add form")
        if act != "none":
            raise ValueError("the scatter-add form takes no activation")
        if keep is not None and (keep.dtype != torch.bool or tuple(keep.shape) != (r,)):
            raise ValueError(f"keep must be bool ({r},), got {keep.dtype} {tuple(keep.shape)}")
        if scale is not None and tuple(scale.shape) != (cout,):
            raise ValueError(f"scale must be ({cout},), got {tuple(scale.shape)}")
    return r, cin, cout


def rows_linear_ref(
    src: torch.Tensor,
    weight_t: torch.Tensor,
    bias: torch.Tensor | None,
    in_idx: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
    act: str = "none",
    *,
    out: torch.Tensor | None = None,
    out_idx: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    planes: int = 1,
    heads: tuple[torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """Linear layer on listed rows (see the module docstring).

    Args:
        src: (M, Cin) contiguous rows.
        weight_t: (Cin, Cout), the layer's weight transposed. bias: (Cout,) or None.
        in_idx: int32 (R,) rows of `src` to read, or None for rows 0..M-1 (R = M).
        count: int32 (1,) rows of the list in use (the rest are not computed), or None for all R.
        act: "none" or "gelu" (exact, erf form); gather form only.
        out: (M', Cout) matrix updated in place (scatter-add form), with `out_idx` int32 (R,) distinct rows.
        keep: bool (R,): rows whose results are added (scatter-add form), or None for all.
        scale: (Cout,) factor of the added results (a LayerScale), or None.
        planes: gather form: the result as (planes, R, Cout / planes), column j in plane j // (Cout / planes).
        heads: gather form: (kept, tokens), `kept` bool (B, H): the heads each sample keeps, a plane's columns split
            into H equal heads; source row m belongs to sample m // tokens. Columns of skipped heads are zero.

    Returns:
        The gather form's (R, Cout) (or (planes, R, Cout / planes)) result, or `out`.
    """
    r, cin, cout = check_rows_linear_args(src, weight_t, bias, in_idx, count, act, out, out_idx, keep, scale, planes,
                                          heads)
    n = r if count is None else min(int(count), r)
    rows = in_idx[:n].long() if in_idx is not None else torch.arange(n, device=src.device)
    y = src[rows].float() @ weight_t.float()
    if bias is not None:
        y = y + bias.float()
    if out_idx is None:
        y = F.gelu(y) if act == "gelu" else y
        if heads is not None:
            kept, tokens = heads
            h = kept.shape[1]
            head_of_col = torch.arange(cout, device=src.device) % (cout // planes) // (cout // planes // h)
            y = y * kept[rows // tokens][:, head_of_col]
        res = torch.zeros((r, cout), dtype=src.dtype, device=src.device)
        res[:n] = y.to(src.dtype)
        return res if planes == 1 else res.view(r, planes, cout // planes).transpose(0, 1).contiguous()
    if scale is not None:
        y = y * scale.float()
    dst = out_idx[:n].long()
    if keep is not None:
        dst, y = dst[keep[:n]], y[keep[:n]]
    out[dst] = (out[dst].float() + y).to(out.dtype)
    return out
