"""The one place that chooses between the Triton kernels and the pure-PyTorch reference.

Order of precedence:
1. env `LAUDNET_KERNELS=reference|triton` (unset or `auto`: no override; `torch` is an alias of `reference`);
2. the op's `impl` argument (`"auto"`, `"reference"`, `"triton"`; None is `"auto"`);
3. `auto`: Triton when every tensor is on CUDA and triton imports, else the reference.

Triton on CPU tensors is only possible under the interpreter (`TRITON_INTERPRET=1`), which is how CI tests the
kernels; asking for it otherwise raises instead of silently running the reference.

Every public op is declared here with `@_op(triton=..., reference=...)`: its signature and docstring are the op's,
its body only prepares the arguments (see `_op`), and `OPS` maps each op's name to its two implementations.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch

from ._utils import GemmConfig, interpreter_enabled, triton_available

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
# the registration helper


class _Impl:
    """One implementation of an op, `"module.function"` in this package, imported at its first call (the Triton
    modules need triton only when they run), with the parameter names it takes."""

    def __init__(self, path: str, op_params: tuple[str, ...]):
        self.path = path
        self.op_params = op_params  # the op's parameters but `impl`
        self._fn: Callable[..., Any] | None = None
        self.params: frozenset[str] = frozenset()
        self.takes_all = False

    def get(self) -> Callable[..., Any]:
        if self._fn is None:
            module, name = self.path.rsplit(".", 1)
            fn = getattr(importlib.import_module(f"{__package__}.{module}"), name)
            self.params = frozenset(inspect.signature(fn).parameters)
            self.takes_all = self.params.issuperset(self.op_params)
            self._fn = fn
        return self._fn


OPS: dict[str, tuple[_Impl, _Impl]] = {}  # op name -> (Triton launcher, reference)


def _op(triton: str, reference: str, *, reference_when: Callable[[dict[str, Any]], bool] | None = None):
    """Make the decorated function a public op implemented by `triton` and `reference` ("module.function").

    The function's body runs first with the call's arguments (Python checks the call against the signature): it
    checks or completes them, returning None or a dict of replaced arguments (`impl` included). Unless
    `reference_when(arguments)` says that the Triton launcher does not cover the call (grouped convs),
    `resolve_impl` then chooses over the tensors given (those in tuple keyword arguments too), and the chosen function
    is called with the arguments it takes, by name (`impl` never; the Triton launchers' `config` is not the reference's,
    the reference's `groups` is not the launcher's).
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        params = inspect.signature(fn).parameters
        if "impl" not in params:
            raise TypeError(f"op {fn.__name__} must take impl")
        names = tuple(params)
        defaults = {k: p.default for k, p in params.items() if p.default is not p.empty}
        op_params = tuple(k for k in names if k != "impl")
        impls = (_Impl(triton, op_params), _Impl(reference, op_params))
        OPS[fn.__name__] = impls

        @functools.wraps(fn)
        def op(*args: Any, **kwargs: Any) -> Any:
            changed = fn(*args, **kwargs)
            arguments = defaults.copy()
            arguments.update(zip(names, args, strict=False))
            arguments.update(kwargs)
            if changed:
                arguments.update(changed)
            impl = arguments.pop("impl") or "auto"
            if reference_when is not None and reference_when(arguments):
                chosen = impls[1]
            else:
                tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]  # defaults hold none
                for v in kwargs.values():
                    if isinstance(v, tuple):  # rows_linear's heads
                        tensors += [t for t in v if isinstance(t, torch.Tensor)]
                chosen = impls[resolve_impl(*tensors, impl=impl) == "reference"]
            call = chosen.get()
            if chosen.takes_all:
                return call(**arguments)
            return call(**{k: v for k, v in arguments.items() if k in chosen.params})

        return op

    return register


# ---------------------------------------------------------------------------------------------------------------
# public ops: the signature and docstring of each, its body preparing the arguments where needed (see `_op`)


@_op(triton="spatial.gather_conv3x3_triton", reference="spatial_ref.gather_conv3x3_ref",
     reference_when=lambda a: a["groups"] != 1)
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


@_op(triton="spatial.conv1x1_scatter_add_triton", reference="spatial_ref.conv1x1_scatter_add_ref")
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


@_op(triton="spatial.pixel_conv1x1_triton", reference="spatial_ref.pixel_conv1x1_ref")
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
    if pix_idx is None:
        if x.dim() != 4:
            raise ValueError(f"x must be a 4-D NHWC tensor [N, H, W, C], got shape {tuple(x.shape)}")
        if per_sample:
            raise ValueError("per_sample needs a list of samples (pix_idx)")
        return {"pix_idx": torch.arange(x.shape[0] * x.shape[1] * x.shape[2], dtype=torch.int32, device=x.device)}


@_op(triton="masker.window_sums_triton", reference="masker_ref.window_sums_ref")
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


@_op(triton="masker.masker_decide_triton", reference="masker_ref.masker_decide_ref")
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


@_op(triton="masker.channel_masker_triton", reference="masker_ref.channel_masker_ref")
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


@_op(triton="layer.rows_add_relu_triton", reference="layer_ref.rows_add_relu_ref")
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


@_op(triton="rows.rows_linear_triton", reference="rows_ref.rows_linear_ref")
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


@_op(triton="token.rows_layer_norm_triton", reference="token_ref.rows_layer_norm_ref")
def rows_layer_norm(src: torch.Tensor, in_idx: torch.Tensor | None, count: torch.Tensor | None,
                    weight: torch.Tensor, bias: torch.Tensor, eps: float, *, impl: str = "auto") -> torch.Tensor:
    """LayerNorm of the listed rows `src[in_idx[r]]` (every row when in_idx is None; r < count, counted on the
    device) into a packed (R, C) matrix (`token_ref.rows_layer_norm_ref`; rows past count unspecified). One Triton
    launch on CUDA."""


@_op(triton="pack.pack_rows_triton", reference="pack_ref.pack_rows_ref")
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
    if tokens is None and run is None:
        raise ValueError("pack_rows needs tokens or run: with neither, every row is selected (no packing needed)")


@_op(triton="token.layer_norm_score_triton", reference="token_ref.layer_norm_score_ref")
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


@_op(triton="stem.stem_conv_triton", reference="stem_ref.stem_conv_ref")
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


@_op(triton="token.pooled_decisions_triton", reference="token_ref.pooled_decisions_ref")
def pooled_decisions(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """A ViT block's per-sample decisions (kept heads, executed sub-blocks) from the mean of its normalised tokens, in
    one pass: bool `[B, K]`, `weight · mean_n(y) + bias ≥ 0` in fp32.

    Args:
        y: contiguous tokens `[B, N, C]` (norm1's output).
        weight, bias: fp32 `[K, C]`, `[K]`: the execute-minus-skip rows of the maskers' linears, stacked.
        impl: "auto", "reference" or "triton".
    """


@_op(triton="attention.varlen_attention_triton", reference="attention_ref.varlen_attention_ref")
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
    if impl == "auto" and q.is_cuda and q.dtype == torch.float32:
        return {"impl": "reference"}  # the kernel's tl.dot would round fp32 to tf32 on the GPU


# ---------------------------------------------------------------------------------------------------------------
# channel skipping (`channel.py`, `channel_ref.py`)


@_op(triton="channel.channel_index_triton", reference="channel_ref.channel_index_ref")
def channel_index(
    mask_groups: torch.Tensor,
    group_size: int,
    kmax: int | None = None,
    align: int = 16,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample compacted active channel indices and counts from a group mask.

    Args:
        mask_groups: bool ``[N, n_groups]``; True keeps group ``g`` = channels ``g*G .. g*G+G-1``.
        group_size: channels per group ``G``.
        kmax: width of the compacted tensors. Default: the largest count rounded up to ``align``, which reads the
            counts on the host (a device sync). ``kmax >= n_groups * G`` needs no sync (and no check); a smaller
            ``kmax`` is checked against the counts (a sync) and rejected if too small.
        align: rounding multiple for the default ``kmax`` (16 keeps compacted rows 32-byte aligned in bf16).
        impl: ``"triton"``, ``"reference"`` (alias ``"torch"``), or None / ``"auto"`` (see `resolve_impl`).

    Returns:
        ``idx`` int32 ``[N, kmax]`` (active channel ids in increasing order, padding slots 0) and ``counts`` int32
        ``[N]``.
    """


@_op(triton="channel.channel_conv1x1_out_triton", reference="channel_ref.channel_conv1x1_out_ref")
def channel_conv1x1_out(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    idx: torch.Tensor,
    counts: torch.Tensor,
    impl: str | None = None,
    config: GemmConfig | dict | None = None,
) -> torch.Tensor:
    """``relu(conv1x1(x) + b1)`` computed for the active output channels only, written compacted.

    Args:
        x: ``[N, H, W, Cin]`` NHWC-contiguous block input.
        w1: ``[w, Cin]`` or ``[w, Cin, 1, 1]`` folded conv1 weight (any strides; ``Cin`` contiguous is fastest).
        b1: ``[w]`` folded bias.
        idx, counts: from ``channel_index``.
        impl: ``"triton"``, ``"reference"`` (alias ``"torch"``), or None / ``"auto"``.
        config: the tiles, a ``GemmConfig`` or a mapping overriding the default's (``BM, BN, BK, num_warps,
            num_stages``).

    Returns:
        ``[N, H, W, Kmax]``: slot ``k < counts[n]`` holds channel ``idx[n, k]``, other slots 0.
    """


@_op(triton="channel.channel_conv3x3_triton", reference="channel_ref.channel_conv3x3_ref",
     reference_when=lambda a: a["conv_groups"] != 1)
def channel_conv3x3(
    h: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    idx: torch.Tensor,
    counts: torch.Tensor,
    stride: int = 1,
    group_size: int = 1,
    conv_groups: int = 1,
    impl: str | None = None,
    config: GemmConfig | dict | None = None,
) -> torch.Tensor:
    """``relu(conv3x3(h) + b2)``, zero padding 1, from compacted active inputs to compacted active outputs.

    Implicit GEMM over the 3x3 window: for each output pixel tile and output slot tile of a sample, the loop runs
    over the 9 taps times the sample's active input channels; rows and columns of ``w2`` are gathered by ``idx``.

    Args:
        h: ``[N, H, W, Kmax]`` compacted conv1 output (NHWC-contiguous); its padding slots are ignored but must be
            finite (``channel_conv1x1_out`` writes zeros there).
        w2: ``[w, w / conv_groups, 3, 3]`` folded conv2 weight (any strides; ``pack_bottleneck_weights`` layout is
            fastest).
        b2: ``[w]`` folded bias.
        idx, counts: from ``channel_index``.
        stride: 1 or 2.
        group_size: the ``G`` that built ``idx``. It only enables wider weight loads (slots come in aligned runs of
            G consecutive channels); it must divide the real G (1 is always correct).
        conv_groups: groups of the 3x3 conv (RegNet). Grouped convs run a dense masked fallback in PyTorch
            (scatter to full width, cuDNN grouped conv, gather), correct but not faster than dense.
        impl: ``"triton"``, ``"reference"`` (alias ``"torch"``), or None / ``"auto"``.
        config: the tiles, a ``GemmConfig`` or a mapping overriding the default's (``BM, BN, BK, num_warps,
            num_stages``).

    Returns:
        ``[N, Ho, Wo, Kmax]`` with ``Ho = (H - 1) // stride + 1``, padding slots 0.
    """


@_op(triton="channel.channel_conv1x1_in_triton", reference="channel_ref.channel_conv1x1_in_ref")
def channel_conv1x1_in(
    h: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    idx: torch.Tensor,
    counts: torch.Tensor,
    residual: torch.Tensor,
    out: torch.Tensor | None = None,
    impl: str | None = None,
    config: GemmConfig | dict | None = None,
    pool_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu(residual + conv1x1(h) + b3)`` reading only the active input channels; residual add + ReLU fused.

    Args:
        h: ``[N, H, W, Kmax]`` compacted conv2 output (NHWC-contiguous); padding slots ignored but must be finite.
        w3: ``[Cout, w]`` or ``[Cout, w, 1, 1]`` folded conv3 weight (any strides; ``Cout`` contiguous is fastest).
        b3: ``[Cout]`` folded bias.
        idx, counts: from ``channel_index``.
        residual: ``[N, H, W, Cout]`` NHWC-contiguous identity branch.
        out: output tensor like ``residual``; may be ``residual`` itself (in place). Default: a new tensor.
        impl: ``"triton"``, ``"reference"`` (alias ``"torch"``), or None / ``"auto"``.
        config: the tiles, a ``GemmConfig`` or a mapping overriding the default's (``BM, BN, BK, num_warps,
            num_stages``, and ``PREFETCH``: load the residual tile before the GEMM loop, default True).
        pool_out: fp32 ``[N, Cout]`` contiguous or None: each sample's sums of the output (as stored) are added to
            it in the epilogue (the next channel masker's pooling, `laudnet.kernels.channel_masker`).

    Returns:
        The output (``out`` when given). A sample with no active channel gets ``relu(residual + b3)``.
    """
