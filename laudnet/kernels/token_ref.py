"""Pure-PyTorch reference of the ViT token masker fused into the block's first LayerNorm: the specification of
`token.py`.

A LAUD-ViT block normalises its tokens (`norm1`), and its token masker scores every normalised token with a linear of
two outputs (execute, skip); a token is kept when execute ≥ skip. Deployed, the masker is reduced to the difference
of its two outputs, evaluated in fp32 on the normalised token as the block stores it (in the compute dtype):

    y = LayerNorm(x)            (rounded to x's dtype)
    score = y·w + b             (fp32; w, b = execute-minus-skip weight and bias)
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
                         score_w: torch.Tensor, score_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, score): the LayerNorm of the tokens x [..., C] (x's dtype) and each token's fp32 masker score [...]."""
    check_ln_score_args(x, ln_weight, ln_bias, score_w, score_b)
    y = F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
    return y, y.float() @ score_w + score_b
