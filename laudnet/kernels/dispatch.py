"""The one place that chooses between the Triton kernels and the pure-PyTorch reference.

Order of precedence:
1. env `LAUDNET_KERNELS=reference|triton` (unset or `auto`: no override; `torch` is an alias of `reference`);
2. the op's `impl` argument (`"auto"`, `"reference"`, `"triton"`);
3. `auto`: Triton when every tensor is on CUDA and triton imports, else the reference.

Triton on CPU tensors is only possible under the interpreter (`TRITON_INTERPRET=1`), which is how CI tests the
kernels; asking for it otherwise raises instead of silently running the reference.
"""

from __future__ import annotations

import os

import torch

from ._utils import interpreter_enabled, triton_available

IMPLS = ("auto", "reference", "triton")
_ALIASES = {"torch": "reference"}  # the channel kernels' spelling of the reference path


def resolve_impl(*tensors: torch.Tensor, impl: str = "auto") -> str:
    """Return `"triton"` or `"reference"` for an op on these tensors.

    Args:
        *tensors: the op's tensor arguments (None entries are ignored).
        impl: the caller's wish, one of `IMPLS`.

    Raises:
        ValueError: unknown `impl` / env value, or Triton requested where it cannot run.
    """
    env = os.environ.get("LAUDNET_KERNELS", "auto").strip().lower() or "auto"
    env, impl = _ALIASES.get(env, env), _ALIASES.get(impl, impl)
    if env not in IMPLS:
        raise ValueError(f"LAUDNET_KERNELS must be one of {IMPLS}, got {env!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    choice = env if env != "auto" else impl
    ts = [t for t in tensors if t is not None]
    on_cuda = bool(ts) and all(t.is_cuda for t in ts)
    if choice == "reference":
        return "reference"
    if choice == "triton":
        if not triton_available():
            raise ValueError("Triton kernels requested but triton does not import")
        if not on_cuda and not interpreter_enabled():
            raise ValueError("Triton kernels on CPU tensors need the interpreter: set TRITON_INTERPRET=1")
        return "triton"
    return "triton" if on_cuda and triton_available() else "reference"


# ---------------------------------------------------------------------------------------------------------------
# public ops: each resolves its implementation here and calls the Triton launcher or the reference


def gather_conv3x3(
    h1: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patch_idx: torch.Tensor,
    patch_size: int,
    stride: int,
    relu: bool = True,
    *,
    groups: int = 1,
    count: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """3x3 conv (padding 1, stride 1/2) + bias (+ ReLU) on the active S x S output patches only, gathered.

    Triton: an implicit GEMM reading each patch's halo straight from `h1`. Grouped convs (`groups > 1`, RegNet) take
    the reference path on every device: halo tiles gathered with one indexing op, then one cuDNN grouped conv.

    Args:
        h1: NHWC `[N, H, W, Cin]` (the conv1 output).
        weight: `[Cout, Cin/groups, 3, 3]`, or packed `[9*Cin, Cout]` (`pack_conv3x3_weight`, groups = 1).
        bias: `[Cout]` or None.
        patch_idx: int32 `[P, 3]` of (sample, patch_row, patch_col) on the output grid.
        patch_size: S.
        stride: 1 or 2.
        relu: apply ReLU after the bias.
        groups: conv groups.
        count: int32 `[1]` device tensor: only the first `count` rows of `patch_idx` are valid (sync-free lists from
            `mask_to_patch_list`); rows of the result past `count*S*S` are unspecified.
        impl: "auto", "reference" or "triton" (see `resolve_impl`).

    Returns:
        `[P*S*S, Cout]`, row `p*S*S + dy*S + dx`; rows of pixels beyond the map are 0.
    """
    from .spatial import gather_conv3x3_triton
    from .spatial_ref import gather_conv3x3_ref

    if groups != 1 or resolve_impl(h1, weight, bias, patch_idx, count, impl=impl) == "reference":
        return gather_conv3x3_ref(h1, weight, bias, patch_idx, patch_size, stride, relu, groups=groups, count=count)
    return gather_conv3x3_triton(h1, weight, bias, patch_idx, patch_size, stride, relu, count=count)


def conv1x1_scatter_add(
    y_gathered: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    patch_idx: torch.Tensor,
    patch_size: int,
    relu: bool = True,
    out: torch.Tensor | None = None,
    *,
    count: torch.Tensor | None = None,
    pool_out: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Last 1x1 conv of the block on gathered pixels, + bias + residual, ReLU, scattered in place.

    `out[n, y, x] = relu(residual[n, y, x] + (y_gathered @ W + b)[row])` at every in-map pixel of every active
    patch; pixels of inactive patches are not touched (they keep the residual when `out` is `residual`).

    Args:
        y_gathered: `[P*S*S, Cmid]` from `gather_conv3x3`.
        weight: `[Cout, Cmid, 1, 1]` or packed `[Cmid, Cout]` (`pack_conv1x1_weight`).
        bias: `[Cout]` or None.
        residual: NHWC `[N, Ho, Wo, Cout]`.
        patch_idx: int32 `[P, 3]`, each patch at most once (duplicates would race).
        patch_size: S.
        relu: apply ReLU after the add.
        out: NHWC tensor shaped like `residual` to write into; default `residual` (in place).
        count: int32 `[1]` device tensor: only the first `count` patches are valid (see `gather_conv3x3`).
        pool_out: fp32 `[N, gh, gw, Cout]` (the output's patch grid) or None: per active patch, the sum of the
            values written is added to its row (atomically on the Triton path: summation order varies). This is
            the next block's masker input (`window_sums`) accumulated in the epilogue, without re-reading the map.
        impl: "auto", "reference" or "triton".

    Returns:
        `out`.
    """
    from .spatial import conv1x1_scatter_add_triton
    from .spatial_ref import conv1x1_scatter_add_ref

    if resolve_impl(y_gathered, weight, bias, residual, patch_idx, out, count, pool_out, impl=impl) == "reference":
        return conv1x1_scatter_add_ref(y_gathered, weight, bias, residual, patch_idx, patch_size, relu, out, count,
                                       pool_out)
    return conv1x1_scatter_add_triton(y_gathered, weight, bias, residual, patch_idx, patch_size, relu, out, count=count,
                                      pool_out=pool_out)


def pixel_conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pix_idx: torch.Tensor | None,
    relu: bool = True,
    out: torch.Tensor | None = None,
    compact: bool = False,
    *,
    count: torch.Tensor | None = None,
    per_sample: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """1x1 conv (+ bias, ReLU) on a list of pixels of an NHWC map (sparse conv1; gather-fused conv1 of layer skipping).

    Args:
        x: NHWC `[N, H, W, Cin]`.
        weight: `[Cout, Cin, 1, 1]` or packed `[Cin, Cout]`.
        bias: `[Cout]` or None.
        pix_idx: int32 `[Q]` flat pixel rows `n*H*W + y*W + x` (`pixel_mask_to_idx`, `samples_to_pixel_idx`), or
            None for every pixel: a dense fused 1x1 conv + bias + ReLU in NHWC (faster than cuDNN's conv + `relu_`
            for ResNet stage-1 conv1: one pass over the map instead of separate bias and ReLU passes).
        relu: apply ReLU.
        out: with `compact=False`, NHWC `[N, H, W, Cout]` to write into. When None a new map is made whose pixels
            outside `pix_idx` are unspecified (uninitialised on the Triton path): only read the pixels you computed.
        compact: return `[Q, Cout]` in `pix_idx` order instead.
        count: int32 `[1]` device tensor: only the first `count` entries of `pix_idx` are valid
            (`pixel_mask_to_idx_padded`).
        per_sample: `pix_idx` is a list of samples (layer skipping, e.g. `masker_decide(...).order`): the rows are
            all H*W pixels of each listed sample in order, and `count` counts samples. No pixel list is built.
        impl: "auto", "reference" or "triton".
    """
    from .spatial import pixel_conv1x1_triton
    from .spatial_ref import pixel_conv1x1_ref

    if pix_idx is None:
        if x.dim() != 4:
            raise ValueError(f"x must be a 4-D NHWC tensor [N, H, W, C], got shape {tuple(x.shape)}")
        if per_sample:
            raise ValueError("per_sample needs a list of samples (pix_idx)")
        pix_idx = torch.arange(x.shape[0] * x.shape[1] * x.shape[2], dtype=torch.int32, device=x.device)
    if resolve_impl(x, weight, bias, pix_idx, out, count, impl=impl) == "reference":
        return pixel_conv1x1_ref(x, weight, bias, pix_idx, relu, out, compact, count, per_sample)
    return pixel_conv1x1_triton(x, weight, bias, pix_idx, relu, out, compact, count=count, per_sample=per_sample)


def window_sums(x: torch.Tensor, window: int, relu: bool = False, *, impl: str = "auto") -> torch.Tensor:
    """fp32 sums of an NHWC map over `window x window` windows: a spatial/layer masker's pooling, as sums.

    Args:
        x: NHWC `[N, H, W, C]` contiguous.
        window: window side K (patch size x stride of the masker's block), or `MAP_WINDOW` (0) for the whole map.
            Border windows are partial (divide by `window_counts` for the means of `avg_pool2d(ceil_mode=True)`).
        relu: first apply ReLU to `x` in place and sum the result (a projection block's final pass, fused).
        impl: "auto", "reference" or "triton".

    Returns:
        fp32 `[N, ceil(H/K), ceil(W/K), C]` (`[N, 1, 1, C]` for the whole map).
    """
    from .masker import window_sums_triton
    from .masker_ref import window_sums_ref

    if resolve_impl(x, impl=impl) == "reference":
        return window_sums_ref(x, window, relu)
    return window_sums_triton(x, window, relu)


def masker_decide(
    sums: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    in_hw: tuple[int, int],
    window: int,
    forced: torch.Tensor | None = None,
    zero_active: bool = False,
    *,
    impl: str = "auto",
):
    """Decisions of a spatial/layer masker and the compacted lists of active windows, without host sync.

    Execute window w iff `weight . (sums[w] / pixels(w)) + bias >= 0`. Replaces the masker GEMV, threshold, rate and
    list building (about ten launches) with two Triton launches.

    Args:
        sums: fp32 `[N, gh, gw, C]` window sums of the block input (`window_sums`, or a producer's `pool_out`).
        weight: fp32 `[C]` execute-minus-skip weight of the masker's 1x1 conv.
        bias: fp32 `[1]` execute-minus-skip bias.
        in_hw: (H, W) of the block input.
        window: the masker's window side, or `MAP_WINDOW` (0) for layer skipping.
        forced: bool decisions (`N*gh*gw` elements) imposed instead of the masker's (its logits are still computed).
        zero_active: zero the active windows' rows of `sums` in place, for the block's output kernel to accumulate
            their new sums into (`conv1x1_scatter_add(pool_out=sums)`); inactive windows keep theirs.
        impl: "auto", "reference" or "triton".

    Returns:
        `MaskerDecisions(keep [N, gh, gw] bool, patch_idx int32 [T, 3], order int32 [T], count int32 [1], rate,
        active)`:
        active windows first (row-major), then the inactive ones; `T = N*gh*gw`.
    """
    from .masker import masker_decide_triton
    from .masker_ref import masker_decide_ref

    if resolve_impl(sums, weight, bias, forced, impl=impl) == "reference":
        return masker_decide_ref(sums, weight, bias, in_hw, window, forced, zero_active)
    return masker_decide_triton(sums, weight, bias, in_hw, window, forced, zero_active)


def channel_masker(
    sums: torch.Tensor,
    pixels: int,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    forced: torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Decisions of a channel masker (mean → fc1 → ReLU → fc2 → threshold) from per-sample sums, in one launch.

    Args:
        sums: fp32 `[N, C]` sums of the block input over its map (`window_sums(x, MAP_WINDOW)`).
        pixels: H*W of the map.
        w1, b1: fp32 `[hidden, C]`, `[hidden]` (fc1); w2, b2: fp32 `[groups, hidden]`, `[groups]`, the
            execute-minus-skip rows of fc2.
        forced: bool `[N, groups]` decisions imposed instead of the masker's (the MLP still runs).
        impl: "auto", "reference" or "triton".

    Returns:
        bool `[N, groups]`.
    """
    from .masker import channel_masker_triton
    from .masker_ref import channel_masker_ref

    if resolve_impl(sums, w1, b1, w2, b2, forced, impl=impl) == "reference":
        return channel_masker_ref(sums, pixels, w1, b1, w2, b2, forced)
    return channel_masker_triton(sums, pixels, w1, b1, w2, b2, forced)


def rows_add_relu_(
    out: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, relu: bool = True, *, impl: str = "auto"
) -> torch.Tensor:
    """Layer-skipping write-back: `out[idx] = relu(out[idx] + y)`, fused and in place; other rows untouched.

    Args:
        out: `[N, ...]` contiguous (NHWC block input or its projection).
        y: `[n, ...]` residual-branch output of the compacted sub-batch `x.index_select(0, idx)`.
        idx: int32/int64 `[n]` distinct active sample indices.
        relu: apply ReLU after the add.
        impl: "auto", "reference" or "triton".

    Returns:
        `out`.
    """
    from .layer import rows_add_relu_triton
    from .layer_ref import rows_add_relu_ref

    if resolve_impl(out, y, idx, impl=impl) == "reference":
        return rows_add_relu_ref(out, y, idx, relu)
    return rows_add_relu_triton(out, y, idx, relu)


def rows_linear(
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
    impl: str = "auto",
) -> torch.Tensor:
    """A linear layer on listed token rows, the rows in use counted on the device, with the GELU or the residual
    scatter-add fused: `act(src[in_idx] @ W + b)` (gather form), or `out[out_idx] += scale * (src[in_idx] @ W + b)`
    in place at distinct rows (scatter-add form, `keep` selecting the rows added).

    Args:
        src: (M, Cin) contiguous. weight_t: (Cin, Cout). bias: (Cout,) or None.
        in_idx: int32 (R,) rows of src, or None for all M. count: int32 (1,) rows in use, or None for all.
        act: "none" or "gelu" (gather form).
        out, out_idx, keep, scale: the scatter-add form's (M', Cout) target, int32 (R,) distinct rows, bool (R,)
            rows added, (Cout,) factor.
        planes: gather form: the result as (planes, R, Cout / planes) (q, k, v apart for a qkv projection).
        heads: gather form: (kept bool (B, H), tokens): columns of the heads a row's sample (source row // tokens)
            skips are zero, and GEMM tiles without a kept head are not computed.
        impl: "auto", "reference" or "triton".

    Returns:
        (R, Cout) or (planes, R, Cout / planes) (gather form; rows past `count` unspecified) or `out`.
    """
    from .rows import rows_linear_triton
    from .rows_ref import rows_linear_ref

    head_keep = (heads[0],) if heads is not None else ()
    fn = rows_linear_ref
    if resolve_impl(src, weight_t, bias, in_idx, count, out, out_idx, keep, scale, *head_keep, impl=impl) == "triton":
        fn = rows_linear_triton
    return fn(src, weight_t, bias, in_idx, count, act, out=out, out_idx=out_idx, keep=keep, scale=scale,
              planes=planes, heads=heads)


def rows_layer_norm(src: torch.Tensor, in_idx: torch.Tensor | None, count: torch.Tensor | None,
                    weight: torch.Tensor, bias: torch.Tensor, eps: float, *, impl: str = "auto") -> torch.Tensor:
    """LayerNorm of the listed rows `src[in_idx[r]]` (every row when in_idx is None; r < count, counted on the
    device) into a packed (R, C) matrix (`token_ref.rows_layer_norm_ref`; rows past count unspecified). One Triton
    launch on CUDA."""
    from .token import rows_layer_norm_triton
    from .token_ref import rows_layer_norm_ref

    if resolve_impl(src, in_idx, count, weight, bias, impl=impl) == "triton":
        return rows_layer_norm_triton(src, in_idx, count, weight, bias, eps)
    return rows_layer_norm_ref(src, in_idx, count, weight, bias, eps)


def pack_rows(tokens: torch.Tensor | None, run: torch.Tensor | None, shape: tuple[int, int], with_cls: bool = False,
              *, impl: str = "auto"):
    """Fixed-capacity packing of a ViT's token rows without host reads (`pack_ref.py`): `Packing(pos int64 (B·N,),
    pos32 (the same in int32), count int32 (1,), keep bool (B·N,), cu int32 (B+1,))` of the selected tokens of the
    samples that run, with every sample's class token computed too when `with_cls` (kept only where selected). One
    Triton launch on CUDA.

    Args:
        tokens: bool (B, N) selected tokens, or None for every token. run: bool (B,) samples that run, or None for
            every sample. At least one of the two is a tensor.
        shape: (B, N).
        with_cls: compute every sample's class token (no empty sequence).
        impl: "auto", "reference" or "triton".
    """
    from .pack import pack_rows_triton
    from .pack_ref import pack_rows_ref

    if tokens is None and run is None:
        raise ValueError("pack_rows needs tokens or run: with neither, every row is selected (no packing needed)")
    if resolve_impl(tokens, run, impl=impl) == "reference":
        return pack_rows_ref(tokens, run, shape, with_cls)
    return pack_rows_triton(tokens, run, shape, with_cls)


def layer_norm_score(
    x: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    score_w: torch.Tensor,
    score_b: torch.Tensor,
    *,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ViT block's first LayerNorm with its token masker fused: normalised tokens and each token's fp32 score.

    Args:
        x: `[..., C]` contiguous tokens.
        ln_weight, ln_bias: `[C]` LayerNorm affine parameters; eps its epsilon.
        score_w: fp32 `[C]` execute-minus-skip weight of the token masker; score_b: fp32 `[1]` its bias.
        impl: "auto", "reference" or "triton".

    Returns:
        `(y, score, keep)`: y `[..., N, C]` in x's dtype, score fp32 `[..., N]`, keep bool `[..., N]` (score ≥ 0, and
        the first token of each sequence, the class token, always).
    """
    from .token import layer_norm_score_triton
    from .token_ref import layer_norm_score_ref

    if resolve_impl(x, ln_weight, ln_bias, score_w, score_b, impl=impl) == "reference":
        return layer_norm_score_ref(x, ln_weight, ln_bias, eps, score_w, score_b)
    return layer_norm_score_triton(x, ln_weight, ln_bias, eps, score_w, score_b)



def stem_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: tuple[int, int],
    stride: int,
    padding: int,
    relu: bool = True,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """The network stem's convolution on a few input channels, + bias (+ ReLU), NHWC in and out.

    Triton: an implicit GEMM whose K loop runs over the kernel rows, each row's (column, channel) slice one
    contiguous run of the input (`laudnet.kernels.stem`).

    Args:
        x: NHWC `[N, H, W, C]` (a channels_last image batch viewed with `.permute(0, 2, 3, 1)`).
        weight: `[Cout, C, KH, KW]` or packed (`stem_ref.pack_stem_weight`).
        bias: `[Cout]` or None.
        kernel: (KH, KW).
        stride, padding: of the convolution, the same along both axes.
        relu: apply ReLU after the bias.
        impl: "auto", "reference" or "triton".

    Returns:
        NHWC `[N, HO, WO, Cout]`.
    """
    from .stem import stem_conv_triton
    from .stem_ref import stem_conv_ref

    if resolve_impl(x, weight, bias, impl=impl) == "reference":
        return stem_conv_ref(x, weight, bias, kernel, stride, padding, relu)
    return stem_conv_triton(x, weight, bias, kernel, stride, padding, relu)


def pooled_decisions(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """A ViT block's per-sample decisions (kept heads, executed sub-blocks) from the mean of its normalised tokens, in
    one pass: bool `[B, K]`, `weight · mean_n(y) + bias ≥ 0` in fp32.

    Args:
        y: contiguous tokens `[B, N, C]` (norm1's output).
        weight, bias: fp32 `[K, C]`, `[K]`: the execute-minus-skip rows of the maskers' linears, stacked.
        impl: "auto", "reference" or "triton".
    """
    from .token import pooled_decisions_triton
    from .token_ref import pooled_decisions_ref

    if resolve_impl(y, weight, bias, impl=impl) == "reference":
        return pooled_decisions_ref(y, weight, bias)
    return pooled_decisions_triton(y, weight, bias)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor,
    max_len: int,
    scale: float,
    heads: torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Attention within packed sequences, the (sequence, head) pairs that `heads` skips not computed (zero).

    Triton: flash attention's forward per (query block, sequence, head), a skipped pair writing zeros
    (`laudnet.kernels.attention`). Rows past ``cu[-1]`` are zero in the reference and unwritten by the kernel.

    Args:
        q, k, v: contiguous `[R, H, d]` packed rows.
        cu: int32/int64 `[S + 1]`: each sequence's first row, then the end of the last.
        max_len: the longest sequence (a capacity is fine: query blocks past a sequence's end exit at once).
        scale: of the scores (1/√d for standard attention).
        heads: bool `[S, H]`, the computed pairs, or None for every pair.
        impl: "auto", "reference" or "triton".
    """
    from .attention import varlen_attention_triton
    from .attention_ref import varlen_attention_ref

    if impl == "auto" and q.is_cuda and q.dtype == torch.float32:
        impl = "reference"  # the kernel's tl.dot would round fp32 to tf32 on the GPU
    if resolve_impl(q, k, v, cu, heads, impl=impl) == "reference":
        return varlen_attention_ref(q, k, v, cu, max_len, scale, heads)
    return varlen_attention_triton(q, k, v, cu, max_len, scale, heads)
