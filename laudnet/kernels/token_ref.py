"""Pure-PyTorch reference of the ViT token masker fused into the block's first LayerNorm: the specification of
`token.py`.

A LAUD-ViT block normalises its tokens (`norm1`), and its token masker scores every normalised token with a linear of
two outputs (execute, skip); a token is kept when execute ≥ skip. Deployed, the masker is reduced to the difference
of its two outputs, evaluated in fp32 on the normalised token as the block stores it (in the compute dtype):

    y = LayerNorm(x)            (rounded to x's dtype)
    score = y·w + b             (fp32; w, b = execute-minus-skip weight and bias)
    keep = score ≥ 0            (the class token, first of each sequence, always kept)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_ln_score_args(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, score_w: torch.Tensor,
                        score_b: torch.Tensor) -> None:
    """Raise ValueError unless x is a contiguous [..., C] tensor and the other arguments are [C] (score_b: [1])."""
    c = x.shape[-1]
    if x.dim() < 2 or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous [..., C] tensor of tokens, got shape {tuple(x.shape)}")
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias), ("score_w", score_w)):
        if t.shape != (c,):
            raise ValueError(f"{name} must have shape ({c},) like the tokens' width, got {tuple(t.shape)}")
    if score_w.dtype != torch.float32 or score_b.dtype != torch.float32 or score_b.shape != (1,):
        raise ValueError("score_w ([C]) and score_b ([1]) must be fp32: decisions are made in fp32")
    if any(t.device != x.device for t in (ln_weight, ln_bias, score_w, score_b)):
        raise ValueError("x and the weights must be on one device")


def layer_norm_score_ref(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
                         score_w: torch.Tensor, score_b: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, score, keep): the LayerNorm of the tokens x [..., N, C] (x's dtype), each token's fp32 masker score
    [..., N] and its decision (bool: score ≥ 0, the first token of each sequence — the class token — always kept)."""
    check_ln_score_args(x, ln_weight, ln_bias, score_w, score_b)
    y = F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
    score = y.float() @ score_w + score_b
    keep = score >= 0
    keep[..., 0] = True
    return y, score, keep


def check_rows_layer_norm_args(src, in_idx, count, weight, bias, eps) -> tuple[int, int]:
    """Shared checks of `rows_layer_norm_ref` and its kernel; returns (R, C)."""
    if src.dim() != 2 or not src.is_contiguous():
        raise ValueError(f"src must be a contiguous (M, C) matrix, got shape {tuple(src.shape)}")
    c = src.shape[1]
    if in_idx is not None and (in_idx.dtype != torch.int32 or in_idx.dim() != 1):
        raise ValueError(f"in_idx must be int32 (R,), got {in_idx.dtype} {tuple(in_idx.shape)}")
    if count is not None and (count.dtype != torch.int32 or count.numel() != 1):
        raise ValueError(f"count must be a one-element int32 tensor, got {count.dtype} {tuple(count.shape)}")
    if tuple(weight.shape) != (c,) or tuple(bias.shape) != (c,) or not eps > 0:
        raise ValueError(f"the LayerNorm needs weight ({c},), bias ({c},) and eps > 0, got {tuple(weight.shape)}, "
                         f"{tuple(bias.shape)}, {eps}")
    return (in_idx.shape[0] if in_idx is not None else src.shape[0]), c


def rows_layer_norm_ref(src: torch.Tensor, in_idx: torch.Tensor | None, count: torch.Tensor | None,
                        weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm of the rows `src[in_idx[r]]` (every row of src when in_idx is None), r < count, packed: (R, C) in
    `src`'s dtype, computed in fp32 as `nn.LayerNorm` does (rows past count: zero here, unspecified in the kernel)."""
    r, c = check_rows_layer_norm_args(src, in_idx, count, weight, bias, eps)
    n = r if count is None else min(int(count), r)
    rows = in_idx[:n].long() if in_idx is not None else torch.arange(n, device=src.device)
    res = torch.zeros((r, c), dtype=src.dtype, device=src.device)
    res[:n] = F.layer_norm(src[rows].float(), (c,), weight.float(), bias.float(), eps).to(src.dtype)
    return res


def check_pooled_decisions_args(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Raise ValueError unless y is a contiguous [B, N, C] tensor and weight [K, C] / bias [K] are fp32."""
    if y.dim() != 3 or not y.is_contiguous():
        raise ValueError(f"y must be contiguous tokens [B, N, C], got shape {tuple(y.shape)}")
    k, c = weight.shape if weight.dim() == 2 else (-1, -1)
    if c != y.shape[2] or tuple(bias.shape) != (k,):
        raise ValueError(f"weight must be [K, {y.shape[2]}] and bias [K], got {tuple(weight.shape)} and "
                         f"{tuple(bias.shape)}")
    if weight.dtype != torch.float32 or bias.dtype != torch.float32:
        raise ValueError("weight and bias must be fp32: decisions are made in fp32")
    if weight.device != y.device or bias.device != y.device:
        raise ValueError("y and the weights must be on one device")


def pooled_decisions_ref(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The per-sample maskers' decisions (heads, sub-blocks) from the mean of a block's normalised tokens: bool
    [B, K], `weight · mean_n(y) + bias ≥ 0` in fp32 (weight, bias: execute-minus-skip rows of the maskers' linears)."""
    check_pooled_decisions_args(y, weight, bias)
    return y.mean(1, dtype=torch.float32) @ weight.t() + bias >= 0
