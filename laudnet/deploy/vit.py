"""Batched inference for LAUD-ViTs: skipped tokens, heads and sub-blocks are not computed.

`deploy_vit(model)` (also reached through `laudnet.deploy`) turns a trained `LaudViT` into an inference module that
computes the eval-mode function of the model with hard decisions (maskers in fp32):

- **layer skipping**: each sub-block (attention, MLP) runs on the compacted list of the samples that execute it;
- **token skipping**: the attention gathers each sample's kept tokens (class token first, token order kept) into a
  (samples, K, C) batch, K the largest kept count rounded up to a multiple of ``token_bucket`` (at most N); padded
  positions are masked out as keys (`scaled_dot_product_attention` with a key-padding mask) and dropped as queries.
  The MLP runs on the packed kept tokens of the executing samples (no padding). Results are added back into the
  residual stream at the kept positions only;
- **head skipping**: attention runs on (sample, kept head) pairs: each pair's q, k, v come from its head's slice of
  the qkv weight and its output goes through that head's columns of the projection, so skipped heads cost nothing.

Everything is pure PyTorch; per-sample counts are read on the host (one synchronisation per block), so the module is
not CUDA-graph capturable. Compared with the training form (attention over all N tokens with dropped keys at weight
zero, outputs multiplied by the masks), only the order of floating-point sums differs.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laudnet.blocks.vit import DynamicViTBlock
from laudnet.masks import _Masker
from laudnet.models.vit import LaudViT


class DeployedViTBlock(nn.Module):
    """One ViT block in inference form (see the module docstring).

    Args:
        block: the trained block (its layers are copied).
        token_bucket: padded token counts are multiples of this (1: pad to the largest count exactly).
    """

    def __init__(self, block: DynamicViTBlock, token_bucket: int = 8) -> None:
        super().__init__()
        self.parts = block.parts
        self.paradigm = block.paradigm
        self.token_bucket = token_bucket
        self.num_heads, self.head_dim, self.dim = block.num_heads, block.head_dim, block.dim
        self.scale = float(block.attn.scale)
        self.norm1, self.norm2 = copy.deepcopy(block.norm1), copy.deepcopy(block.norm2)
        self.ls1, self.ls2, self.mlp = copy.deepcopy(block.ls1), copy.deepcopy(block.ls2), copy.deepcopy(block.mlp)
        self.q_norm, self.k_norm = copy.deepcopy(block.attn.q_norm), copy.deepcopy(block.attn.k_norm)
        qkv, proj = block.attn.qkv, block.attn.proj
        h, d, c = self.num_heads, self.head_dim, self.dim
        qkv_bias = qkv.bias if qkv.bias is not None else torch.zeros(qkv.out_features)
        proj_bias = proj.bias if proj.bias is not None else torch.zeros(proj.out_features)
        # Dense layouts, and per-head slices for head skipping: qkv rows are (3, H, d), projection columns (H, d).
        self.register_buffer("qkv_w", qkv.weight.detach().clone())
        self.register_buffer("qkv_b", qkv_bias.detach().clone())
        self.register_buffer("proj_w", proj.weight.detach().clone())
        self.register_buffer("proj_b", proj_bias.detach().clone())
        self.register_buffer("qkv_w_heads", qkv.weight.detach().view(3, h, d, c).transpose(0, 1).reshape(h, 3 * d, c))
        self.register_buffer("qkv_b_heads", qkv_bias.detach().view(3, h, d).transpose(0, 1).reshape(h, 3 * d))
        self.register_buffer("proj_w_heads", proj.weight.detach().view(proj.out_features, h, d).permute(1, 2, 0))
        for name in ("token_masker", "head_masker", "layer_masker"):
            if hasattr(block, name):
                masker = copy.deepcopy(getattr(block, name))
                masker.override = None
                setattr(self, name, masker)
        self.last_density: dict[str, Tensor] = {}
        # Decisions to impose instead of the maskers' (token (B, N), head (B, H), sub-block (B, 2) booleans, None
        # for a part the paradigm does not skip): for benchmarks at chosen rates, and for low-precision tests where
        # rounding could flip a borderline decision.
        self.forced: tuple[Tensor | None, Tensor | None, Tensor | None] | None = None

    # --- decisions ------------------------------------------------------------------------------------------------
    def decide(self, y: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Boolean token (B, N), head (B, H) and sub-block (B, 2) decisions, computed in fp32."""
        y = y.float()
        tokens = self.token_masker(y) > 0.5 if "token" in self.parts else None
        pooled = y.mean(1) if self.parts & {"head", "layer"} else None
        heads = self.head_masker(pooled) > 0.5 if "head" in self.parts else None
        layers = self.layer_masker(pooled) > 0.5 if "layer" in self.parts else None
        return tokens, heads, layers

    # --- attention ------------------------------------------------------------------------------------------------
    def _heads(self, yk: Tensor, heads: Tensor | None, valid: Tensor | None) -> Tensor:
        """Attention of tokens yk (S, K, C) with key-padding mask valid (S, K), projection included."""
        s, k, _ = yk.shape
        h, d = self.num_heads, self.head_dim
        if heads is None:
            qkv = F.linear(yk, self.qkv_w, self.qkv_b).view(s, k, 3, h, d).permute(2, 0, 3, 1, 4)
            q, kk, v = qkv.unbind(0)
            mask = valid[:, None, None, :] if valid is not None else None
            o = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(kk), v, attn_mask=mask, scale=self.scale)
            return F.linear(o.transpose(1, 2).reshape(s, k, h * d), self.proj_w, self.proj_b)
        out = self.proj_b.expand(s, k, -1).clone()  # a sample without heads gets the projection bias only
        sample, head = heads.nonzero(as_tuple=True)
        if sample.numel() == 0:
            return out
        qkv = torch.baddbmm(self.qkv_b_heads[head][:, None, :], yk[sample], self.qkv_w_heads[head].transpose(1, 2))
        q, kk, v = qkv.split(d, dim=-1)  # (P, K, d) each
        mask = valid[sample][:, None, :] if valid is not None else None
        o = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(kk), v, attn_mask=mask, scale=self.scale)
        return out.index_add_(0, sample, torch.bmm(o, self.proj_w_heads[head]))

    def _attention(self, x: Tensor, y: Tensor, tokens: Tensor | None, heads: Tensor | None,
                   run: Tensor | None) -> Tensor:
        b, n, c = x.shape
        rows = torch.arange(b, device=x.device)
        if run is not None:  # sample compaction
            rows = run.nonzero().squeeze(1)
            if rows.numel() == 0:
                return x
            if rows.numel() < b:
                y = y[rows]
                tokens = tokens[rows] if tokens is not None else None
                heads = heads[rows] if heads is not None else None
        if tokens is None:
            pos, valid, yk = torch.arange(n, device=x.device).expand(rows.numel(), n), None, y
        else:
            counts = tokens.sum(1)
            k = min(n, math.ceil(int(counts.max()) / self.token_bucket) * self.token_bucket)
            # Kept tokens first, each group in token order (a stable sort), so position 0 is the class token.
            pos = torch.argsort((~tokens).to(torch.uint8), dim=1, stable=True)[:, :k]
            valid = torch.arange(k, device=x.device) < counts[:, None]
            yk = y.gather(1, pos[..., None].expand(-1, -1, c))
        branch = self.ls1(self._heads(yk, heads, valid))
        if valid is None and rows.numel() == b:  # every token of every sample: a plain residual add
            return x + branch
        flat_pos = rows[:, None] * n + pos
        if valid is not None:
            flat_pos, branch = flat_pos[valid], branch[valid]
        return x.reshape(b * n, c).index_add(0, flat_pos.reshape(-1), branch.reshape(-1, c)).view(b, n, c)

    def _mlp(self, x: Tensor, tokens: Tensor | None, run: Tensor | None) -> Tensor:
        if tokens is None and run is None:
            return x + self.ls2(self.mlp(self.norm2(x)))
        b, n, c = x.shape
        sel = tokens if tokens is not None else torch.ones(b, n, dtype=torch.bool, device=x.device)
        if run is not None:
            sel = sel & run[:, None]
        pos = sel.reshape(-1).nonzero().squeeze(1)
        flat = x.reshape(b * n, c)
        if pos.numel() == 0:
            return x
        return flat.index_add(0, pos, self.ls2(self.mlp(self.norm2(flat[pos])))).view(b, n, c)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        tokens, heads, layers = self.decide(y) if self.forced is None else self.forced
        run_attn, run_mlp = (layers[:, 0], layers[:, 1]) if layers is not None else (None, None)
        x = self._attention(x, y, tokens, heads, run_attn)
        x = self._mlp(x, tokens, run_mlp)
        self.last_density = {
            name: t.float().mean()
            for name, t in (("token", tokens), ("head", heads), ("attn", run_attn), ("mlp", run_mlp))
            if t is not None
        }
        return x


class DeployedViT(nn.Module):
    """Embedding → deployed blocks → final norm, pooling and classifier, computing in `dtype`."""

    def __init__(self, model: LaudViT, dtype: torch.dtype, token_bucket: int) -> None:
        super().__init__()
        self.dtype = dtype
        self.img_size, self.patch_size, self.in_chans = model.img_size, model.patch_size, model.in_chans
        self.global_pool = model.global_pool
        self.patch_embed = copy.deepcopy(model.patch_embed)
        self.register_buffer("cls_token", model.cls_token.detach().clone())
        self.register_buffer("pos_embed", model.pos_embed.detach().clone())
        self.blocks = nn.Sequential(*[DeployedViTBlock(b, token_bucket) for b in model.blocks])
        self.norm, self.fc_norm, self.head = (copy.deepcopy(m) for m in (model.norm, model.fc_norm, model.head))

    def forward_features(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"expected an input of shape (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got {tuple(x.shape)}"
            )
        x = self.patch_embed(x.to(self.dtype))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(1)
        return self.head(self.fc_norm(x))

    def densities(self) -> list[dict[str, float]]:
        """Per-block batch-mean rates of the last forward: kept tokens, kept heads, executed attention and MLP."""
        return [{k: float(v) for k, v in b.last_density.items()} for b in self.blocks]


def deploy_vit(
    model: LaudViT,
    dtype: torch.dtype = torch.bfloat16,
    *,
    device: torch.device | str | None = None,
    token_bucket: int = 8,
) -> DeployedViT:
    """Turn a trained LAUD-ViT into an inference module; the model itself is left unchanged.

    Args:
        model: a `LaudViT` (any paradigm).
        dtype: compute dtype (bf16 on GPU; fp32 for exact comparisons). Maskers stay fp32.
        device: where the deployed model lives (default: the model's device).
        token_bucket: padded kept-token counts are rounded up to a multiple of this.

    Returns:
        A `DeployedViT` in eval mode computing the eval-mode function of `model`.
    """
    if not isinstance(model, LaudViT):
        raise TypeError(f"deploy_vit expects a LAUD-ViT, got {type(model).__name__}")
    if isinstance(token_bucket, bool) or not isinstance(token_bucket, int) or token_bucket < 1:
        raise ValueError(f"token_bucket must be a positive integer, got {token_bucket!r}")
    device = device if device is not None else next(model.parameters()).device
    deployed = DeployedViT(model, dtype, token_bucket).to(device=device).eval()
    maskers = {id(p) for m in deployed.modules() if isinstance(m, _Masker) for p in m.parameters()}
    for p in deployed.parameters():
        p.requires_grad_(False)
        if id(p) not in maskers:
            p.data = p.data.to(dtype)
    for name, buf in deployed.named_buffers():
        if buf.is_floating_point():
            module, _, attr = name.rpartition(".")
            setattr(deployed.get_submodule(module) if module else deployed, attr, buf.to(dtype))
    return deployed
