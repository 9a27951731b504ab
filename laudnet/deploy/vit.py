"""Batched inference for LAUD-ViTs: skipped tokens, heads and sub-blocks are not computed.

`deploy_vit(model)` (also reached through `laudnet.deploy`) turns a trained `LaudViT` into an inference module that
computes the eval-mode function of the model with hard decisions (maskers in fp32):

- **layer skipping**: each sub-block (attention, MLP) runs on the compacted list of the samples that execute it;
- **token skipping**, ``attention="bucket"`` (default): the attention gathers each sample's kept tokens (class token
  first, token order kept) into a (samples, K, C) batch, K the largest kept count rounded up to a multiple of
  ``token_bucket`` (at most N); padded positions are masked out as keys (`scaled_dot_product_attention` with a
  key-padding mask) and dropped as queries. ``attention="varlen"``: no padding at all: the kept tokens of the
  executing samples are packed into one (T, C) list (`laudnet.deploy.packed`), the qkv and output projections run on
  those T rows and the attention is flash-attention's variable-length kernel (`torch.nn.attention.varlen`), one
  sequence per sample. In both modes the MLP runs on the packed kept tokens of the executing samples, and results
  are added back into the residual stream at the kept positions only;
- **head skipping**: with ``bucket``, attention runs on (sample, kept head) pairs: each pair's q, k, v come from its
  head's slice of the qkv weight and its output goes through that head's columns of the projection. With ``varlen``
  each (head, sample) pair is one sequence of the varlen kernel, its q, k, v from per-head GEMMs on that head's
  packed rows; the projection then runs once on the kept tokens with the skipped heads' inputs at zero (one GEMM
  over C columns is faster than H thin ones). Either way a skipped head's q, k, v and attention are not computed.
  With ``capturable`` and fused rows (the default there), varlen head skipping is one qkv row GEMM whose tiles
  without a kept head are not computed, then laudnet's varlen attention kernel, which skips the (sample, head)
  pairs that are not kept (`laudnet.kernels.varlen_attention`; PyTorch's varlen flash attention would run over
  every head), and the projection as without head skipping.

By default (``fuse_token_masker``) each block's token masker runs inside its first LayerNorm (`laudnet.kernels.
layer_norm_score`): the normalised tokens and each token's fp32 score (execute minus skip logit) in one pass.

With ``capturable=False`` the per-sample counts are read on the host (a few synchronisations per block). With
``capturable=True`` nothing is read on the host: every index list has a fixed capacity (B·N token rows, B samples,
H heads) and carries its count on the device; the GEMMs on packed rows run as Triton kernels that read the count and
skip the tiles past it (`laudnet.kernels.pixel_conv1x1`; PyTorch on CPU), the varlen attention skips what lies past
each sequence's end, and bucket attention pads every sample to N tokens and computes every head (masks zero what is
skipped). The module can then be captured as one CUDA graph (`DeployedViT.graphed`).

Compared with the training form (attention over all N tokens with dropped keys at weight zero, outputs multiplied
by the masks), only the order of floating-point sums differs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laudnet.blocks.vit import DynamicViTBlock
from laudnet.deploy.graphs import GraphedModel, capturing_conditionally, if_node
from laudnet.deploy.packed import (
    PackedRows,
    _triton_rows,
    add_rows,
    check_varlen_support,
    compact_positions,
    pack_rows,
    rows_linear,
    rows_linears,
    scatter_rows,
    selection,
    varlen_attention,
)
from laudnet.kernels import dispatch
from laudnet.kernels.rows import HEAD_TILE_MIN
from laudnet.masks import _Masker
from laudnet.models.vit import LaudViT


def _layer_scale(ls: nn.Module) -> Tensor | None | bool:
    """A residual branch's LayerScale as the fused row kernels take it: None (identity), its gamma, or False (a
    module they cannot fuse)."""
    if isinstance(ls, nn.Identity):
        return None
    gamma = getattr(ls, "gamma", None)
    return gamma if isinstance(gamma, Tensor) and gamma.dim() == 1 else False


def _execute_minus_skip(fc: nn.Linear) -> tuple[Tensor, Tensor]:
    """A head or sub-block masker's linear (execute outputs, then skip outputs) as one fp32 execute-minus-skip
    linear: a decision is `w · pooled + b ≥ 0` (execute logit ≥ skip logit, as `gumbel_gate` takes them, up to
    rounding)."""
    w, b = fc.weight.detach().float(), fc.bias.detach().float()
    k = w.shape[0] // 2
    return w[:k] - w[k:], b[:k] - b[k:]


class DeployedViTBlock(nn.Module):
    """One ViT block in inference form (see the module docstring).

    Args:
        block: the trained block (its layers are copied).
        token_bucket: padded token counts are multiples of this (1: pad to the largest count exactly); bucket
            attention without `capturable` only.
        attention: ``bucket`` (padded batches with key-padding masks) or ``varlen`` (packed rows, varlen kernel).
        capturable: build every index list on the device with a fixed capacity: no host synchronisation.
        fuse_token_masker: see `deploy_vit`.
        fuse_rows: with `capturable`, the fused row kernels (see `deploy_vit`); None (default): whenever
            `capturable`.
    """

    def __init__(self, block: DynamicViTBlock, token_bucket: int = 8, attention: str = "bucket",
                 capturable: bool = False, fuse_token_masker: bool | None = None,
                 fuse_rows: bool | None = None) -> None:
        super().__init__()
        if fuse_rows and not capturable:
            raise ValueError("fuse_rows fuses the capturable row GEMMs: it needs capturable=True")
        self.fuse_rows = capturable if fuse_rows is None else bool(fuse_rows)
        # The block may update its input in place (the residual adds of the fused row kernels) when its caller
        # never reads that tensor again: `DeployedViT` sets this for its blocks, whose inputs it makes itself.
        self.owns_input = False
        self.parts = block.parts
        self.paradigm = block.paradigm
        self.token_bucket = token_bucket
        self.attention = attention
        self.capturable = capturable
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
        if capturable:
            if not all(hasattr(self.mlp, a) for a in ("fc1", "act", "drop1", "norm", "fc2", "drop2")):
                raise ValueError(f"capturable=True needs timm's Mlp (fc1, act, fc2), got {type(self.mlp).__name__}")
            # (Cin, Cout) copies of the weights that the Triton row GEMMs read; q, k and v apart (contiguous outputs
            # for the varlen kernel), also per head: qkv_wt_heads[j, i] is head i's (C, d) slice of q, k or v.
            for name, w in (("proj", proj.weight), ("fc1", self.mlp.fc1.weight), ("fc2", self.mlp.fc2.weight)):
                self.register_buffer(f"{name}_wt", w.detach().t().contiguous())
            self.register_buffer("qkv_wt", qkv.weight.detach().view(3, c, c).transpose(1, 2).contiguous())
            self.register_buffer("qkv_wt_cat", qkv.weight.detach().t().contiguous())
            self.register_buffer("qkv_wt_heads", qkv.weight.detach().view(3, h, d, c).transpose(2, 3).contiguous())
        if hasattr(block, "token_masker"):
            self.token_masker = copy.deepcopy(block.token_masker)
            self.token_masker.override = None
        # The head and sub-block maskers, linears on the token mean, stacked into one execute-minus-skip linear: their
        # decisions come out of one pass over the tokens (`laudnet.kernels.pooled_decisions`), not 4-7 launches.
        pooled = [_execute_minus_skip(getattr(block, n).fc) for n in ("head_masker", "layer_masker")
                  if hasattr(block, n)]
        if pooled:
            self.register_buffer("masker_pool_w", torch.cat([w for w, _ in pooled]).contiguous())
            self.register_buffer("masker_pool_b", torch.cat([b for _, b in pooled]).contiguous())
        n1 = self.norm1
        affine_ln = isinstance(n1, nn.LayerNorm) and n1.weight is not None and n1.bias is not None
        if fuse_token_masker and "token" in self.parts and not affine_ln:
            raise ValueError(f"fuse_token_masker needs norm1 to be an affine nn.LayerNorm, got {n1}")
        fuse = affine_ln if fuse_token_masker is None else fuse_token_masker  # None: wherever it can be
        self.fuse_token_masker = "token" in self.parts and fuse
        if self.fuse_token_masker:
            fc = block.token_masker.fc  # execute iff (w_e − w_s)·y + (b_e − b_s) ≥ 0, in fp32
            self.register_buffer("token_score_w", (fc.weight[0] - fc.weight[1]).detach().float().clone())
            self.register_buffer("token_score_b", (fc.bias[:1] - fc.bias[1:]).detach().float().clone())
        self.last_decisions: dict[str, Tensor] = {}
        # "sparse": skipped work is not computed; "dense": every token, head and sub-block is computed and the
        # decisions are applied as masks (no data-dependent shapes, no custom kernels: see `deploy_dense_masked`)
        self.path = "sparse"
        # Decisions to impose instead of the maskers' (token (B, N), head (B, H), sub-block (B, 2) booleans, None
        # for a part the paradigm does not skip): for benchmarks at chosen rates, and for low-precision tests where
        # rounding could flip a borderline decision. The maskers still run, so that their cost is measured.
        self.forced: tuple[Tensor | None, Tensor | None, Tensor | None] | None = None
        # With fused rows and head skipping, attention runs in laudnet's varlen kernel, which does not compute the
        # skipped (sample, head) pairs; False: PyTorch's varlen flash attention over every head (the skipped heads'
        # q, k, v are zero, so their outputs are too), for comparison.
        self.skip_head_attention = True

    # --- decisions ------------------------------------------------------------------------------------------------
    def decide(self, y: Tensor, tokens: Tensor | None = None, impl: str = "auto"
               ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Boolean token (B, N), head (B, H) and sub-block (B, 2) decisions, computed in fp32 (or the imposed ones).

        `tokens`: token decisions already made (by the fused token masker), or None to run the token masker here.
        `impl`: of the head and sub-block decisions (`laudnet.kernels.pooled_decisions`; the dense-masked path takes
        the PyTorch reference, which `torch.compile` traces).
        """
        if "token" in self.parts and tokens is None:
            y = y.float()
            tokens = self.token_masker(y) > 0.5
        heads = layers = None
        if self.parts & {"head", "layer"}:
            both = dispatch.pooled_decisions(y.contiguous(), self.masker_pool_w, self.masker_pool_b, impl=impl)
            heads = both[:, : self.num_heads] if "head" in self.parts else None
            layers = both[:, -2:] if "layer" in self.parts else None
        if self.forced is None:
            return tokens, heads, layers
        for name, own, forced in zip(("token", "head", "sub-block"), (tokens, heads, layers), self.forced, strict=True):
            if (own is None) != (forced is None) or (own is not None and own.shape != forced.shape):
                raise ValueError(
                    f"forced {name} decisions have shape {None if forced is None else tuple(forced.shape)}, the "
                    f"block's are {None if own is None else tuple(own.shape)}"
                )
        return self.forced

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
        # (sample, kept head) pairs grouped by head: one GEMM per head on the samples that keep it.
        head, sample = heads.t().nonzero(as_tuple=True)
        if sample.numel() == 0:  # no head anywhere: the projection bias only
            return self.proj_b.expand(s, k, -1).clone()
        qkv = yk.new_empty(sample.numel(), k, 3 * d)
        start = 0
        for i, size in enumerate(heads.sum(0).tolist()):
            if size:
                qkv[start:start + size] = F.linear(yk[sample[start:start + size]], self.qkv_w_heads[i],
                                                   self.qkv_b_heads[i])
                start += size
        q, kk, v = qkv.split(d, dim=-1)  # (P, K, d) each
        mask = valid[sample][:, None, :] if valid is not None else None
        o = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(kk), v, attn_mask=mask, scale=self.scale)
        o_all = yk.new_zeros(s, h, k, d)  # skipped heads stay zero: the projection's GEMM runs once over all heads
        o_all[sample, head] = o
        return F.linear(o_all.transpose(1, 2).reshape(s, k, h * d), self.proj_w, self.proj_b)

    def _attention(self, x: Tensor, y: Tensor, tokens: Tensor | None, heads: Tensor | None,
                   run: Tensor | None) -> Tensor:
        """Bucket attention with host-read counts (compacted samples, padding to the bucketed largest count)."""
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
        flat_pos = (rows[:, None] * n + pos).reshape(-1)  # distinct positions, padded slots included
        keep = valid.reshape(-1) if valid is not None else None
        return add_rows(x.reshape(b * n, c), flat_pos, branch.reshape(-1, c), keep).view(b, n, c)

    def _attention_padded(self, x: Tensor, y: Tensor, tokens: Tensor | None, heads: Tensor | None,
                          run: Tensor | None) -> Tensor:
        """Bucket attention at full capacity, without host reads: every sample padded to N tokens, every head."""
        b, n, c = x.shape
        sel = tokens if tokens is not None else torch.ones(b, n, dtype=torch.bool, device=x.device)
        if run is not None:
            sel = sel & run[:, None]
        pos = compact_positions(sel)  # kept tokens first, in token order
        valid = torch.arange(n, device=x.device) < sel.sum(1, keepdim=True)
        keys = valid.clone()
        keys[:, 0] = True  # a sample that skips attention still attends to one key (its results are dropped)
        yk = y.gather(1, pos[..., None].expand(-1, -1, c))
        h, d = self.num_heads, self.head_dim
        q, kk, v = F.linear(yk, self.qkv_w, self.qkv_b).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(kk), v, attn_mask=keys[:, None, None, :],
                                           scale=self.scale)
        if heads is not None:  # computed, then zeroed: a skipped head contributes nothing
            o = o * heads[:, :, None, None].to(o.dtype)
        branch = self.ls1(F.linear(o.transpose(1, 2).reshape(b, n, c), self.proj_w, self.proj_b))
        flat_pos = (torch.arange(b, device=x.device)[:, None] * n + pos).reshape(-1)  # a permutation of B·N
        return add_rows(x.reshape(b * n, c), flat_pos, branch.reshape(-1, c), valid.reshape(-1)).view(b, n, c)

    def _attention_varlen(self, x: Tensor, y: Tensor, tokens: Tensor | None, heads: Tensor | None,
                          run: Tensor | None, rows: PackedRows | None = None) -> Tensor:
        """Attention on the packed kept tokens with the varlen kernel (one sequence per sample, or per (head, sample)
        pair with head skipping). `rows`: the packing of `tokens`, when the caller made it (shared with the MLP)."""
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        sync_free = self.capturable
        if rows is None:  # sync-free sequences are never empty: a sample that skips computes its class token too
            rows = pack_rows(tokens, run, (b, n), sync_free=sync_free, with_cls=run is not None, device=x.device)
        if not sync_free and rows.pos.numel() == 0:
            return x
        y2 = y.reshape(b * n, c)
        scale = _layer_scale(self.ls1)
        head_tiles = heads is None or d % HEAD_TILE_MIN == 0
        if self.fuse_rows and scale is not False and head_tiles and _triton_rows(y2, rows, self.proj_wt):
            # one qkv GEMM (q, k, v planes; tiles of skipped heads not computed, their columns zero), varlen
            # attention (skipped heads not computed, their outputs zero), and the projection adding into the
            # residual stream
            qkv = dispatch.rows_linear(y2, self.qkv_wt_cat, self.qkv_b, rows.pos32, rows.count, planes=3,
                                       heads=(heads, n) if heads is not None else None)
            q, k, v = (t.view(-1, h, d) for t in qkv.unbind(0))
            q, k = self.q_norm(q), self.k_norm(k)
            if heads is not None and self.skip_head_attention:  # one sequence per sample: heads (B, H) per sequence
                o = dispatch.varlen_attention(q.contiguous(), k.contiguous(), v.contiguous(), rows.cu, rows.max_len,
                                              self.scale, heads)
            else:
                o = varlen_attention(q, k, v, rows.cu, rows.max_len, self.scale)
            res = x.reshape(b * n, c) if self.owns_input else x.reshape(b * n, c).clone()
            dispatch.rows_linear(o.reshape(-1, c), self.proj_wt, self.proj_b, None, rows.count, out=res,
                                 out_idx=rows.pos32, keep=rows.keep, scale=scale)
            return res.view(b, n, c)
        if heads is None:
            wt = getattr(self, "qkv_wt", [None] * 3)
            layers = [(self.qkv_w[j * c:(j + 1) * c], wt[j], self.qkv_b[j * c:(j + 1) * c]) for j in range(3)]
            q, k, v = (t.view(-1, h, d) for t in rows_linears(y2, layers, rows))
            o = varlen_attention(self.q_norm(q), self.k_norm(k), v, rows.cu, rows.max_len, self.scale)
            out = rows_linear(o.reshape(-1, c), self.proj_w, getattr(self, "proj_wt", None), self.proj_b, rows,
                              packed=True)
        else:
            sel = selection(tokens, run, (b, n), device=x.device)[0]
            o_heads = self._head_outputs_sync_free(y2, sel, heads) if sync_free else self._head_outputs(y2, sel, heads)
            out = rows_linear(o_heads[: b * n].reshape(b * n, c), self.proj_w, getattr(self, "proj_wt", None),
                              self.proj_b, rows)
        return scatter_rows(x.reshape(b * n, c), self.ls1(out), rows).view(b, n, c)

    def _head_outputs(self, y2: Tensor, sel: Tensor, heads: Tensor) -> Tensor:
        """Attention outputs (B·N, H, d) at the token positions, zero for skipped heads; (head, sample) pairs packed
        together so that one varlen call covers them (host-read sizes)."""
        bn, c = y2.shape
        h, d = self.num_heads, self.head_dim
        pairs = heads.t()[:, :, None] & sel[None]  # (H, B, N)
        o_heads = y2.new_zeros(bn, h, d)
        pairs = pairs.reshape(h * sel.shape[0], -1)
        rows = pack_rows(pairs, None, pairs.shape, sync_free=False)  # sequences: (head, sample)
        if rows.pos.numel() == 0:
            return o_heads
        head_of, tok = rows.pos // bn, rows.pos % bn
        qkv = y2.new_empty(rows.pos.numel(), 3 * d)
        start, b = 0, sel.shape[0]
        sizes = [sum(rows.lengths[i * b:(i + 1) * b]) for i in range(h)]
        for i, size in enumerate(sizes):  # rows are grouped by head: one GEMM per head
            if size:
                torch.addmm(self.qkv_b_heads[i], y2[tok[start:start + size]], self.qkv_w_heads[i].t(),
                            out=qkv[start:start + size])
                start += size
        q, k, v = (t.contiguous() for t in qkv.view(-1, 3, 1, d).unbind(1))
        o = varlen_attention(self.q_norm(q), self.k_norm(k), v, rows.cu, rows.max_len, self.scale)
        o_heads[tok, head_of] = o[:, 0]
        return o_heads

    def _head_outputs_sync_free(self, y2: Tensor, sel: Tensor, heads: Tensor) -> Tensor:
        """`_head_outputs` without host reads: one fixed-capacity packing, GEMM and varlen call per head. Returns
        (2·B·N, H, d): rows past B·N are spare targets for the unused packed rows."""
        bn, c = y2.shape
        h, d = self.num_heads, self.head_dim
        o_heads = y2.new_zeros(2 * bn, h, d)
        spare = torch.arange(bn, 2 * bn, device=y2.device)
        for i in range(h):
            rows = pack_rows(sel & heads[:, i, None], None, sel.shape, sync_free=True, with_cls=True)
            w, bias = self.qkv_w_heads[i], self.qkv_b_heads[i]  # rows (3, d)
            layers = [(w[j * d:(j + 1) * d], self.qkv_wt_heads[j, i], bias[j * d:(j + 1) * d]) for j in range(3)]
            q, k, v = (t.view(-1, 1, d) for t in rows_linears(y2, layers, rows))
            o = varlen_attention(self.q_norm(q), self.k_norm(k), v, rows.cu, rows.max_len, self.scale)
            o_heads[:, i].index_copy_(0, torch.where(rows.keep, rows.pos, spare), o[:, 0])
        return o_heads

    # --- MLP ------------------------------------------------------------------------------------------------------
    def _mlp(self, x: Tensor, tokens: Tensor | None, run: Tensor | None, inplace: bool,
             rows: PackedRows | None = None) -> Tensor:
        """x plus the MLP branch at the selected tokens; x is updated in place when `inplace` (a tensor the block
        made itself). `rows`: the sync-free packing of `tokens` when the caller made it (shared with attention)."""
        if tokens is None and run is None:
            return x + self.ls2(self.mlp(self._layer_norm(self.norm2, x)))
        b, n, c = x.shape
        if self.capturable:
            if rows is None or run is not None:
                rows = pack_rows(tokens, run, (b, n), sync_free=True)
            return self._mlp_sync_free(x, rows, inplace)
        sel = selection(tokens, run, (b, n))[0]
        pos = sel.reshape(-1).nonzero().squeeze(1)
        flat = x.reshape(b * n, c)
        if pos.numel() == 0:
            return x
        branch = self.ls2(self.mlp(self.norm2(flat.index_select(0, pos))))
        return add_rows(flat, pos, branch, inplace=inplace).view(b, n, c)

    def _mlp_sync_free(self, x: Tensor, rows: PackedRows, inplace: bool) -> Tensor:
        b, n, c = x.shape
        mlp = self.mlp
        x2 = x.reshape(b * n, c)
        scale = _layer_scale(self.ls2)
        gelu = isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none" and isinstance(mlp.norm, nn.Identity)
        if self.fuse_rows and gelu and scale is not False and _triton_rows(x2, rows, self.fc1_wt):
            # norm2 on the packed rows only (its own kernel), GELU in fc1's epilogue, the residual add in fc2's
            n2 = self.norm2
            if isinstance(n2, nn.LayerNorm) and n2.weight is not None and n2.bias is not None:
                z = dispatch.rows_layer_norm(x2, rows.pos32, rows.count, n2.weight, n2.bias, n2.eps)
                hidden = dispatch.rows_linear(z, self.fc1_wt, mlp.fc1.bias, None, rows.count, "gelu")
            else:
                z = n2(x).reshape(b * n, c)
                hidden = dispatch.rows_linear(z, self.fc1_wt, mlp.fc1.bias, rows.pos32, rows.count, "gelu")
            out = x2 if inplace else x2.clone()
            dispatch.rows_linear(hidden, self.fc2_wt, mlp.fc2.bias, None, rows.count, out=out, out_idx=rows.pos32,
                                 keep=rows.keep, scale=scale)
            return out.view(b, n, c)
        z = self.norm2(x).reshape(b * n, c)
        hidden = mlp.norm(mlp.drop1(mlp.act(rows_linear(z, mlp.fc1.weight, self.fc1_wt, mlp.fc1.bias, rows))))
        out = mlp.drop2(rows_linear(hidden, mlp.fc2.weight, self.fc2_wt, mlp.fc2.bias, rows, packed=True))
        return scatter_rows(x.reshape(b * n, c), self.ls2(out), rows, inplace=inplace).view(b, n, c)

    def _layer_norm(self, norm: nn.Module, x: Tensor) -> Tensor:
        """`norm(x)` over every token; in the capturable form on CUDA an affine LayerNorm runs as the Triton row
        kernel (`laudnet.kernels.rows_layer_norm`, the kernel of the fused norm1 + token masker), one read and one
        write per row, which is faster than PyTorch's LayerNorm at these row widths."""
        affine = isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None
        if not (self.capturable and affine and dispatch.resolve_impl(x, norm.weight) == "triton"):
            return norm(x)
        c = x.shape[-1]
        return dispatch.rows_layer_norm(x.reshape(-1, c).contiguous(), None, None, norm.weight, norm.bias,
                                        norm.eps).view(x.shape)

    def _norm1_and_tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """norm1(x), and the token decisions when the token masker is fused into it (else None)."""
        if not self.fuse_token_masker:
            return self._layer_norm(self.norm1, x), None
        n1 = self.norm1
        y, score, keep = dispatch.layer_norm_score(x.contiguous(), n1.weight, n1.bias, n1.eps, self.token_score_w,
                                                   self.token_score_b)
        masker = self.token_masker
        if masker.keep_ratio is not None:  # the fixed-ratio baseline: the class token and the best-scoring patches
            top = score[:, 1:].topk(masker.n_keep(score.shape[1] - 1), dim=1).indices + 1
            keep = torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)
            keep[:, 0] = True
        return y, keep

    def _forward_dense(self, x: Tensor) -> Tensor:
        """The dense-masked path: the training form's computation in inference precision. Dropped tokens are not
        keys (a boolean key mask), and the outputs of dropped tokens, skipped heads and skipped sub-blocks are not
        added to the residual stream."""
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        y = self.norm1(x)
        tokens, heads, layers = self.decide(y, impl="reference")
        q, k, v = F.linear(y, self.qkv_w, self.qkv_b).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        keys = tokens[:, None, None, :] if tokens is not None else None
        o = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, attn_mask=keys, scale=self.scale)
        if heads is not None:
            o = o * heads[:, :, None, None].to(o.dtype)
        branch = self.ls1(F.linear(o.transpose(1, 2).reshape(b, n, c), self.proj_w, self.proj_b))
        run_attn, run_mlp = (layers[:, 0], layers[:, 1]) if layers is not None else (None, None)
        x = x + _gated(branch, tokens, run_attn)
        x = x + _gated(self.ls2(self.mlp(self.norm2(x))), tokens, run_mlp)
        self._record(tokens, heads, run_attn, run_mlp)
        return x

    def _record(self, tokens: Tensor | None, heads: Tensor | None, run_attn: Tensor | None,
                run_mlp: Tensor | None) -> None:
        """Keep the decisions themselves (their rates are computed when asked for: no extra launches per forward)."""
        self.last_decisions = {
            name: t for name, t in (("token", tokens), ("head", heads), ("attn", run_attn), ("mlp", run_mlp))
            if t is not None
        }

    def forward(self, x: Tensor) -> Tensor:
        if self.path == "dense":
            return self._forward_dense(x)
        x_in = x
        y, tokens = self._norm1_and_tokens(x)
        tokens, heads, layers = self.decide(y, tokens)
        run_attn, run_mlp = (layers[:, 0], layers[:, 1]) if layers is not None else (None, None)
        shared = None  # without layer skipping, varlen attention and the MLP select the same tokens: one packing
        if self.capturable and tokens is not None and run_attn is None and run_mlp is None:
            shared = pack_rows(tokens, None, tokens.shape, sync_free=True)
        if tokens is None and heads is None and run_attn is None:
            x = self._attention(x, y, None, None, None)  # dense
        elif self.attention == "varlen":
            x = self._sub_block(run_attn, x, lambda: self._attention_varlen(x, y, tokens, heads, run_attn, shared))
        elif self.capturable:
            x = self._attention_padded(x, y, tokens, heads, run_attn)
        else:
            x = self._attention(x, y, tokens, heads, run_attn)
        inplace = self.owns_input or x is not x_in
        x = self._sub_block(run_mlp, x, lambda: self._mlp(x, tokens, run_mlp, inplace=inplace, rows=shared))
        self._record(tokens, heads, run_attn, run_mlp)
        return x

    def _sub_block(self, run: Tensor | None, x: Tensor, fn: Callable[[], Tensor]) -> Tensor:
        """fn(), a sub-block adding into x in place, inside an IF node on "some sample runs it" when captured with
        conditional nodes (`laudnet.deploy.graphs`: a sub-block no sample runs launches nothing)."""
        if run is None or not (self.capturable and self.owns_input):
            return fn()
        with if_node(lambda: run.reshape(()) if run.numel() == 1 else run.any()):  # batch 1: a view, no launch
            out = fn()
        if capturing_conditionally() and out.data_ptr() != x.data_ptr():
            raise RuntimeError("a sub-block captured in a conditional node must update its input in place")
        return out


def _gated(branch: Tensor, tokens: Tensor | None, run: Tensor | None) -> Tensor:
    """A residual branch (B, N, C) multiplied by its gate: the token mask (B, N) and the samples that run it (B,)."""
    gate = tokens[:, :, None] if tokens is not None else None
    if run is not None:
        gate = run[:, None, None] if gate is None else gate & run[:, None, None]
    return branch if gate is None else branch * gate.to(branch.dtype)


def gemm_patch_embedding(patch_embed: nn.Module) -> bool:
    """Whether a timm `PatchEmbed` can run as `patch_embed_gemm`: a conv with kernel = stride, no padding, flattened
    to tokens."""
    proj = getattr(patch_embed, "proj", None)
    return (isinstance(proj, nn.Conv2d) and proj.kernel_size == proj.stride and proj.padding == (0, 0)
            and proj.dilation == (1, 1) and proj.groups == 1 and bool(getattr(patch_embed, "flatten", False))
            and not getattr(patch_embed, "dynamic_img_pad", False))


def patch_embed_gemm(x: Tensor, proj: nn.Conv2d) -> Tensor:
    """(B, C, H, W) images → (B, L, D) patch tokens: the patch-embedding conv (kernel = stride) as one GEMM over
    the flattened patches. cuDNN runs this conv with a generic kernel, several times slower than the GEMM, which
    made it a large share of the whole static network."""
    b, c, h, w = x.shape
    ph, pw = proj.kernel_size
    gh, gw = h // ph, w // pw
    patches = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c * ph * pw)
    return F.linear(patches, proj.weight.reshape(proj.out_channels, -1), proj.bias).view(b, gh * gw, -1)


class DeployedViT(nn.Module):
    """Embedding → deployed blocks → final norm, pooling and classifier, computing in `dtype`."""

    def __init__(self, model: LaudViT, dtype: torch.dtype, token_bucket: int, attention: str = "bucket",
                 capturable: bool = False, fuse_token_masker: bool | None = None,
                 fuse_rows: bool | None = None) -> None:
        super().__init__()
        self.dtype = dtype
        self.attention = attention
        self.capturable = capturable
        self.img_size, self.patch_size, self.in_chans = model.img_size, model.patch_size, model.in_chans
        self.global_pool = model.global_pool
        self.patch_embed = copy.deepcopy(model.patch_embed)
        self.register_buffer("cls_token", model.cls_token.detach().clone())
        self.register_buffer("pos_embed", model.pos_embed.detach().clone())
        self.blocks = nn.Sequential(*[DeployedViTBlock(b, token_bucket, attention, capturable, fuse_token_masker,
                                                        fuse_rows) for b in model.blocks])
        for block in self.blocks:  # each block's input is the embedding or the previous block's output
            block.owns_input = True
        self.norm, self.fc_norm, self.head = (copy.deepcopy(m) for m in (model.norm, model.fc_norm, model.head))

    def forward_features(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"expected an input of shape (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got {tuple(x.shape)}"
            )
        x = x.to(self.dtype)
        pe = self.patch_embed
        x = pe.norm(patch_embed_gemm(x, pe.proj)) if gemm_patch_embedding(pe) else pe(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(1)
        return self.head(self.fc_norm(x))

    def graphed(self, example: Tensor, *, conditional: bool = False) -> GraphedModel:
        """This model captured as one CUDA graph for inputs shaped like `example` (`laudnet.deploy.GraphedModel`);
        needs a model deployed with ``capturable=True``. With `conditional`, each skippable sub-block (layer
        skipping) sits in an IF node: a sub-block that no sample runs launches nothing."""
        if not self.capturable:
            raise ValueError("a CUDA graph needs a deployed ViT that does not synchronise with the host: "
                             "deploy_vit(model, ..., capturable=True)")
        return GraphedModel(self, example, conditional=conditional)

    def densities(self) -> list[dict[str, float]]:
        """Per-block batch-mean rates of the last forward: kept tokens, kept heads, executed attention and MLP."""
        return [{k: float(v.float().mean()) for k, v in b.last_decisions.items()} for b in self.blocks]


def deploy_vit(
    model: LaudViT,
    dtype: torch.dtype = torch.bfloat16,
    *,
    device: torch.device | str | None = None,
    token_bucket: int = 8,
    attention: str = "bucket",
    capturable: bool = False,
    fuse_token_masker: bool | None = None,
    fuse_rows: bool | None = None,
) -> DeployedViT:
    """Turn a trained LAUD-ViT into an inference module; the model itself is left unchanged.

    Args:
        model: a `LaudViT` (any paradigm).
        dtype: compute dtype (bf16 on GPU; fp32 for exact comparisons). Maskers stay fp32.
        device: where the deployed model lives (default: the model's device).
        token_bucket: padded kept-token counts are rounded up to a multiple of this (bucket attention, not
            capturable).
        attention: ``bucket`` (padded batches, key-padding masks) or ``varlen`` (packed rows, flash-attention's
            variable-length kernel on CUDA in bf16/fp16; a PyTorch reference of it elsewhere).
        capturable: no host synchronisation (fixed-capacity index lists with device-side counts), so that
            `DeployedViT.graphed` can capture the model as a CUDA graph.
        fuse_token_masker: compute each block's token decisions inside its first LayerNorm
            (`laudnet.kernels.layer_norm_score`, Triton on CUDA): one pass over the tokens instead of the norm, an fp32
            copy and the masker's linear. The masker becomes the difference of its two outputs (as the CNN maskers
            are deployed), so a token whose two logits are within rounding of each other may be decided otherwise.
            Default None: fused in every block whose norm1 is an affine LayerNorm (chosen by measurement, see the
            README); False: never; True: required (an
            error where a block cannot fuse it).
        fuse_rows: with ``capturable=True`` on CUDA, the MLP's norm2 runs on the packed rows only
            (`laudnet.kernels.rows_layer_norm`), its GELU in the fc1 row GEMM's epilogue, the residual adds of the
            MLP and of varlen attention in the fc2 / projection GEMMs' epilogues, and varlen attention's q, k and v
            come from one row GEMM that skips the heads each sample drops (`laudnet.kernels.rows_linear`): no pass
            over the B·N capacity rows for the norm, the activation, the gathers and the copies. Default None: on
            whenever ``capturable`` (chosen by measurement, see the README); False keeps the unfused form; True
            without ``capturable`` is an error.

    Returns:
        A `DeployedViT` in eval mode computing the eval-mode function of `model`.
    """
    if not isinstance(model, LaudViT):
        raise TypeError(f"deploy_vit expects a LAUD-ViT, got {type(model).__name__}")
    if isinstance(token_bucket, bool) or not isinstance(token_bucket, int) or token_bucket < 1:
        raise ValueError(f"token_bucket must be a positive integer, got {token_bucket!r}")
    if attention not in ("bucket", "varlen"):
        raise ValueError(f"attention must be 'bucket' or 'varlen', got {attention!r}")
    device = device if device is not None else next(model.parameters()).device
    if attention == "varlen":
        check_varlen_support(device, dtype)
    deployed = DeployedViT(model, dtype, token_bucket, attention, bool(capturable),
                           fuse_token_masker, fuse_rows).to(device=device).eval()
    maskers = {id(p) for m in deployed.modules() if isinstance(m, _Masker) for p in m.parameters()}
    for p in deployed.parameters():
        p.requires_grad_(False)
        if id(p) not in maskers:
            p.data = p.data.to(dtype)
    for name, buf in deployed.named_buffers():
        # the fused maskers' weights stay fp32
        if buf.is_floating_point() and not name.rpartition(".")[2].startswith(("token_score_", "masker_pool_")):
            module, _, attr = name.rpartition(".")
            setattr(deployed.get_submodule(module) if module else deployed, attr, buf.to(dtype))
    return deployed
