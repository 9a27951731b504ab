"""Token, head and layer skipping in a timm Vision Transformer block (LAUDNet's ViT extension, after AdaViT, Meng et
al., CVPR 2022).

`DynamicViTBlock` takes over the layers of timm's pre-norm `Block` (norm1 → attention → norm2 → MLP, with residuals),
so parameter names stay timm's; the maskers are the only new parameters.

Modifications of timm's `Block.forward`:
- every masker reads the block input after `norm1` (the features the attention reads): a per-token linear gives the
  token keep decisions (the class token is always kept), a linear on the token mean the per-head decisions, and another
  the two sub-block decisions (attention, MLP);
- a dropped token is excluded from attention as a key (its attention weights are exact zeros: the softmax is
  renormalised over the kept keys) and as a query, and it skips the MLP: it leaves the block unchanged. Batched
  inference (`laudnet.deploy.vit`) gathers the kept tokens out and computes the same function;
- a skipped head's attention output is multiplied by zero before the projection, so it contributes exactly nothing;
- a skipped sub-block adds nothing to the residual stream.

Decisions are straight-through Gumbel samples in training and deterministic in eval (`laudnet.masks.gumbel_gate`).
FLOPs (multiply-accumulates, per sample) follow the decisions: with k kept tokens (class token included) and head rate
r, the attention sub-block costs r·(k·C·3A + 2·k²·A + k·A·C) and the MLP 2·k·C·M (A = heads × head width, M the MLP
width); norms, softmax and activations are free, as in the published totals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laudnet.info import DynamicInfo
from laudnet.masks import SPATIAL_EXECUTE_BIAS, _Masker, gumbel_gate
from laudnet.paradigms import parse_vit_paradigm as parse_vit_paradigm


def check_keep_ratio(keep_ratio: float | None) -> float | None:
    """A fixed token keep ratio must be a number in (0, 1]; None means learned per-token decisions."""
    if keep_ratio is None:
        return None
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, int | float) or not 0 < keep_ratio <= 1:
        raise ValueError(f"token keep ratio must be a number in (0, 1], got {keep_ratio!r}")
    return float(keep_ratio)


def _init_execute_bias(bias: Tensor, n: int) -> None:
    # Start as the static network (P(execute) = sigmoid(5) ≈ 0.993), as the CNN maskers do.
    with torch.no_grad():
        bias[:n].fill_(SPATIAL_EXECUTE_BIAS)
        bias[n:].zero_()


class TokenMasker(_Masker):
    """Per-token keep decisions from a linear on each (normalised) token; the class token (index 0) is always kept.

    Args:
        dim: token width.
        keep_ratio: None for learned per-token decisions, or a fixed fraction of the patch tokens to keep: the
            ⌈ratio·(N−1)⌉ highest-scoring patch tokens of each sample (a fixed-ratio token-reduction baseline; in
            training the gradient reaches the scores through a straight-through sigmoid).
    """

    def __init__(self, dim: int, keep_ratio: float | None = None) -> None:
        super().__init__()
        self.keep_ratio = check_keep_ratio(keep_ratio)
        self.fc = nn.Linear(dim, 2)
        _init_execute_bias(self.fc.bias, 1)

    def n_keep(self, n_patches: int) -> int:
        """Patch tokens kept per sample with a fixed keep ratio."""
        return max(1, math.ceil(self.keep_ratio * n_patches - 1e-9)) if self.keep_ratio is not None else n_patches

    def forward(self, y: Tensor) -> Tensor:
        """Keep mask (B, N) of zeros and ones for tokens y (B, N, C)."""
        logits = self.fc(y).transpose(1, 2)  # (B, 2, N)
        if self.override is not None:
            mask = torch.full_like(logits[:, 0], float(self.override))
        elif self.keep_ratio is None:
            mask = gumbel_gate(logits, self.temperature, self.training, self.noise)
        else:
            score = logits[:, 0, 1:] - logits[:, 1, 1:]
            top = score.topk(self.n_keep(score.shape[1]), dim=1).indices
            hard = torch.zeros_like(score).scatter_(1, top, 1.0)
            if self.training:
                soft = torch.sigmoid(score / self.temperature)
                hard = hard + soft - soft.detach()
            mask = F.pad(hard, (1, 0))  # the class token's place, set below
        return torch.cat([torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)

    def flops(self, dim: int, n_tokens: int) -> float:
        return n_tokens * dim * 2


class HeadMasker(_Masker):
    """Per-head decisions (B, H) from a linear on the mean token."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.fc = nn.Linear(dim, 2 * num_heads)
        _init_execute_bias(self.fc.bias, num_heads)

    def forward(self, pooled: Tensor) -> Tensor:
        return self._decide(self.fc(pooled).view(pooled.shape[0], 2, self.num_heads))

    def flops(self, dim: int) -> float:
        return dim * 2 * self.num_heads


class SubBlockMasker(_Masker):
    """Layer skipping: two decisions per sample (B, 2), for the attention and the MLP sub-block, from the mean token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 4)
        _init_execute_bias(self.fc.bias, 2)

    def forward(self, pooled: Tensor) -> Tensor:
        return self._decide(self.fc(pooled).view(pooled.shape[0], 2, 2))

    def flops(self, dim: int) -> float:
        return dim * 4


def masked_softmax(logits: Tensor, keep: Tensor) -> Tensor:
    """Softmax over the kept keys only; dropped keys get exact zeros and still pass a gradient to `keep`.

    Args:
        logits: (..., Nq, Nk) attention logits.
        keep: (..., 1, Nk) key mask of zeros and ones (at least one kept key per row: the class token).
    """
    shift = logits.masked_fill(keep == 0, float("-inf")).amax(-1, keepdim=True).detach()
    # Dropped keys above the kept maximum are clamped to exp(0): their weight is zero anyway, the clamp keeps the
    # gradient to `keep` bounded.
    e = torch.exp((logits - shift).clamp(max=0)) * keep
    return e / e.sum(-1, keepdim=True)


class DynamicViTBlock(nn.Module):
    """timm's pre-norm ViT `Block` with token, head and layer skipping (see the module docstring).

    Args:
        block: a timm `vision_transformer.Block` with standard `Attention` (no gate, no scale norm); its layers are
            taken over.
        paradigm: ``static`` or a ``+``-combination of ``token``, ``head``, ``layer``.
        keep_ratio: fixed token keep ratio (token paradigm only), see `TokenMasker`.
    """

    def __init__(self, block: nn.Module, paradigm: str, keep_ratio: float | None = None) -> None:
        super().__init__()
        attn = block.attn
        if getattr(attn, "gate", None) is not None or not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
            raise ValueError("gated attention and attention scale norms are not supported (a skipped head must add 0)")
        for name in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
            setattr(self, name, getattr(block, name))
        self.paradigm, self.parts = parse_vit_paradigm(paradigm)
        keep_ratio = check_keep_ratio(keep_ratio)
        if keep_ratio is not None and "token" not in self.parts:
            raise ValueError(f"a token keep ratio needs the token paradigm, got paradigm {paradigm!r}")
        self.dim = attn.qkv.in_features
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.attn_dim = self.num_heads * self.head_dim
        self.hidden = self.mlp.fc1.out_features
        self.info: DynamicInfo | None = None
        if "token" in self.parts:
            self.token_masker = TokenMasker(self.dim, keep_ratio)
        if "head" in self.parts:
            self.head_masker = HeadMasker(self.dim, self.num_heads)
        if "layer" in self.parts:
            self.layer_masker = SubBlockMasker(self.dim)

    # --- FLOPs ----------------------------------------------------------------------------------------------------
    def flops_terms(self, n_tokens: int) -> dict[str, float]:
        """Dense per-image MACs of each part of the block for n_tokens tokens."""
        n = n_tokens
        return {
            "qkv": n * self.dim * 3 * self.attn_dim,
            "attn": 2 * n * n * self.attn_dim,  # q·kᵀ and weights·v
            "proj": n * self.attn_dim * self.dim,
            "mlp": n * self.dim * self.hidden + n * self.hidden * self.mlp.fc2.out_features,
        }

    def dense_flops(self, n_tokens: int) -> float:
        """MACs of the static block (no maskers) per image."""
        return sum(self.flops_terms(n_tokens).values())

    def masker_flops(self, n_tokens: int) -> float:
        flops = 0.0
        if "token" in self.parts:
            flops += self.token_masker.flops(self.dim, n_tokens)
        if self.parts & {"head", "layer"}:
            flops += n_tokens * self.dim  # the token mean
        if "head" in self.parts:
            flops += self.head_masker.flops(self.dim)
        if "layer" in self.parts:
            flops += self.layer_masker.flops(self.dim)
        return flops

    # --- forward --------------------------------------------------------------------------------------------------
    def decide(self, y: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Token (B, N), head (B, H) and sub-block (B, 2) decisions from the normalised block input y (B, N, C);
        None for a part the paradigm does not skip."""
        tokens = self.token_masker(y) if "token" in self.parts else None
        pooled = y.mean(1) if self.parts & {"head", "layer"} else None
        heads = self.head_masker(pooled) if "head" in self.parts else None
        layers = self.layer_masker(pooled) if "layer" in self.parts else None
        return tokens, heads, layers

    def _attention(self, y: Tensor, tokens: Tensor | None, heads: Tensor | None) -> Tensor:
        attn = self.attn
        b, n, _ = y.shape
        qkv = attn.qkv(y).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if tokens is None:
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if self.training else 0.0)
        else:
            weights = masked_softmax((q * attn.scale) @ k.transpose(-2, -1), tokens[:, None, None, :])
            o = attn.attn_drop(weights) @ v
        if heads is not None:
            o = o * heads[:, :, None, None].to(o.dtype)
        o = o.transpose(1, 2).reshape(b, n, self.attn_dim)
        return attn.proj_drop(attn.proj(attn.norm(o)))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[2] != self.dim:
            raise ValueError(f"{type(self).__name__} expects tokens (B, N, {self.dim}), got {tuple(x.shape)}")
        b, n, _ = x.shape
        y = self.norm1(x)
        tokens, heads, layers = self.decide(y)
        # Residual gates per sub-block: (B, N, 1) or None (everything executes).
        gate_attn = gate_mlp = tokens[:, :, None] if tokens is not None else None
        if layers is not None:
            la, lm = layers[:, 0, None, None], layers[:, 1, None, None]
            gate_attn = la if gate_attn is None else gate_attn * la
            gate_mlp = lm if gate_mlp is None else gate_mlp * lm
        branch = self.drop_path1(self.ls1(self._attention(y, tokens, heads)))
        x = x + (branch if gate_attn is None else branch * gate_attn.to(branch.dtype))
        branch = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        x = x + (branch if gate_mlp is None else branch * gate_mlp.to(branch.dtype))
        self.info = self._record(x, n, tokens, heads, layers)
        return x

    def _record(self, x: Tensor, n: int, tokens: Tensor | None, heads: Tensor | None,
                layers: Tensor | None) -> DynamicInfo:
        terms = self.flops_terms(n)
        dense = sum(terms.values())
        b = x.shape[0]
        one = x.new_ones(b, dtype=torch.float32)
        kept = tokens.float().sum(1) if tokens is not None else one * n  # class token included
        head_rate = heads.float().mean(1) if heads is not None else one
        run_attn = layers[:, 0].float() if layers is not None else one
        run_mlp = layers[:, 1].float() if layers is not None else one
        frac = kept / n
        attn_flops = (terms["qkv"] + terms["proj"]) * frac + terms["attn"] * frac * frac
        flops = run_attn * head_rate * attn_flops + run_mlp * terms["mlp"] * frac + self.masker_flops(n)
        masks: dict[str, Tensor] = {}
        density: dict[str, Tensor] = {}
        if tokens is not None:
            masks["token"] = tokens
            density["token"] = frac.mean()
        if heads is not None:
            masks["head"] = heads
            density["head"] = head_rate.mean()
        if layers is not None:
            masks["layer"] = layers
            density["attn"] = run_attn.mean()
            density["mlp"] = run_mlp.mean()
        return DynamicInfo(paradigm=self.paradigm, dense_flops=dense, flops=flops, masks=masks, density=density)
