"""Latency of one residual block (ResNet bottleneck or RegNetY block), static or dynamic, composed from `ops`.

Composition follows the paper: a static block is conv1 + conv2 + conv3 + add (+ projection, + SE); the
dynamic blocks replace convs by their sparse forms and add the masker, gather and scatter costs. `compat` reproduces
the official `eval_example.py` composition; the default fixes its quirks, fix by fix.

In the default mode, the dynamic plain bottlenecks (no conv groups, no SE: the blocks laudnet's fused kernels cover) are
composed the way laudnet's inference engine runs them (`laudnet.deploy.blocks.DeployedBlock`), each choice marked
`engine:` with the code it mirrors. Grouped or SE blocks (RegNetY), which the engine runs through PyTorch paths, keep
the paper's composition with the fixes.

All functions return a `Cost` for the whole batch (seconds).
"""

from __future__ import annotations

import math

from laudnet.latency.geometry import BlockGeometry
from laudnet.latency.ops import ZERO, Cost, OpModel
from laudnet.paradigms import CNN_PARADIGMS

SPATIAL_CONV1 = ("dense", "sparse")  # DeployedBlock.spatial_conv1


def _engine(op: OpModel, b: BlockGeometry) -> bool:
    """Whether the default-mode engine composition applies: `DeployedBlock.patch_kernels` / `channel_kernels` hold
    for plain bottlenecks only (groups == 1, no SE)."""
    return not op.compat and b.groups == 1 and not b.se_squeeze


def conv1_region_fraction(in_size: int, out_size: int, patch: int, stride: int, density: float) -> float:
    """Expected fraction of conv1's output pixels that the active patches' 3x3 windows read, patches active
    independently with probability `density`.

    engine: `laudnet.kernels.indexing.conv1_pixel_mask`: output patch p (per axis) reads input rows
    [p*S*s - 1, (p*S + S - 1)*s + 1], clipped to the map; a pixel is computed iff any patch whose window covers it
    is active, i.e. with probability 1 - (1 - density)^(patches covering it).
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1], got {density}")
    grid = math.ceil(out_size / patch)
    cover = [sum(1 for p in range(grid) if p * patch * stride - 1 <= x <= (p * patch + patch - 1) * stride + 1)
             for x in range(in_size)]
    total = sum(1.0 - (1.0 - density) ** (cy * cx) for cy in cover for cx in cover if cy * cx)
    return total / in_size**2


def _relu_pass(op: OpModel, c: int, size: int) -> Cost:
    """engine: `out.relu_()` over a projection block's whole output (inactive positions are relu(projection))."""
    elems = op.batch * c * size * size * op.hw.bytes_per_element
    return op.stream(elems, elems)


def _projection(op: OpModel, b: BlockGeometry) -> Cost:
    if op.compat:
        # compat: only a stride-2 projection is costed (ResNet stage 1's 64 -> 256 projection is not)
        return op.conv(b.in_channels, b.out_channels, b.out_size, b.out_size, 1, stride=2) if b.stride == 2 else ZERO
    return op.conv(b.in_channels, b.out_channels, b.out_size, b.out_size, 1, stride=b.stride) if b.projection else ZERO


def _dense_body(op: OpModel, b: BlockGeometry) -> Cost:
    """conv1 + conv2 + conv3 + residual add (+ SE): the part a skipped block does not run."""
    w, h, o = b.width, b.in_size, b.out_size
    cost = (op.conv(b.in_channels, w, h, h, 1) + op.conv(w, w, o, o, 3, b.groups, b.stride)
            + op.conv(w, b.out_channels, o, o, 1) + op.add(b.out_channels, o, o))
    if b.se_squeeze:
        cost = cost + op.se(w, o, o, b.se_squeeze)
    return cost


def static_block(op: OpModel, b: BlockGeometry) -> Cost:
    """The dense block."""
    return _dense_body(op, b) + _projection(op, b)


def _patch_conv3x3(op: OpModel, b: BlockGeometry, patch: int, n_patches: int) -> Cost:
    """engine: `gather_conv3x3`, an implicit GEMM over the active patches' S*S output pixels; each patch brings its
    ((S-1)*stride + 3)^2 halo of conv1's output (clipped to the map) through L2, read once from DRAM."""
    h = b.in_size
    halo = min((patch - 1) * b.stride + 3, h) ** 2
    rows = n_patches * patch * patch
    unique = min(n_patches * halo, h * h)
    return op.pixel_gemm(b.width, b.width, rows, 3, in_per_row=halo / (patch * patch), in_unique=unique)


def spatial_parts(op: OpModel, b: BlockGeometry, patch: int, density: float, conv1: str = "dense",
                  masker: bool = True, index: bool = True) -> dict[str, Cost]:
    """The default-mode spatial block of a plain bottleneck as the engine runs it, part by part (seconds, batch).

    engine: `PatchBlock._forward_patches` of a `SpatialBlock` (`laudnet/deploy/blocks.py`; sync-free, CUDA-graph
    capturable): masker (`decide`), patch list (`mask_to_patch_list`), conv1 once (dense `pixel_conv1x1` over the whole
    map, or with `conv1="sparse"` over the union of the active patches' halos, after building that pixel list), the 3x3
    as an implicit GEMM gathering each patch's halo from conv1's output (`gather_conv3x3`), and the last 1x1 with the
    residual add and ReLU fused into its epilogue, written in place into the block input (`conv1x1_scatter_add`): no
    separate scatter pass, inactive pixels never touched. Lists have the full capacity and a device-side count; programs
    past the count exit at once (their cost is not modelled).

    `masker=False` leaves out the masker network (a block timed with its masks given), `index=False` the building
    of the index lists (a block timed with its lists prebuilt).

    Returns:
        {["masker"], "patch_list", ["conv1_list"], "conv1", "conv2", "conv3", ["projection"]}.
    """
    if conv1 not in SPATIAL_CONV1:
        raise ValueError(f"conv1 must be one of {SPATIAL_CONV1}, got {conv1!r}")
    B, w, h, o = op.batch, b.width, b.in_size, b.out_size
    grid = math.ceil(o / patch) ** 2
    n_out = op.n_patches(o, o, patch, density)
    parts = {"masker": op.spatial_masker(b.in_channels, h, h, o // patch)} if masker else {}
    if index:
        parts["patch_list"] = op.patch_list(B * grid)
    if conv1 == "dense":
        # engine: `pixel_conv1x1(x, w1, b1, None)`, one GEMM over every pixel
        parts["conv1"] = op.pixel_gemm(b.in_channels, w, h * h)
    else:
        # engine: `conv1_pixel_mask` + `pixel_mask_to_idx_padded`, then `pixel_conv1x1` on the listed pixels only
        n_pix = math.ceil(round(conv1_region_fraction(h, o, patch, b.stride, density) * h * h, 9))
        if index:
            parts["conv1_list"] = op.conv1_pixel_list(B * h * h, B * o * o)
        parts["conv1"] = op.pixel_gemm(b.in_channels, w, n_pix) + op.stream(4 * B * n_pix, 0, launches=0)
    parts["conv2"] = _patch_conv3x3(op, b, patch, n_out)
    # engine: the residual read at the active pixels is the only extra traffic of the fused epilogue (the write is
    # the GEMM's own output)
    rows = n_out * patch * patch
    parts["conv3"] = op.pixel_gemm(w, b.out_channels, rows) + op.epilogue(B * rows * b.out_channels)
    if b.projection:
        parts["projection"] = _projection(op, b) + _relu_pass(op, b.out_channels, o)
    return parts


def spatial_block(op: OpModel, b: BlockGeometry, patch: int, density: float, conv1: str = "dense",
                  masker: bool = True, index: bool = True) -> Cost:
    """Spatial skipping on `patch x patch` output patches; `density` = fraction of active output pixels.

    `conv1` ("dense" or "sparse", `DeployedBlock.spatial_conv1`) applies to the default-mode engine composition.
    """
    w, h, o = b.width, b.in_size, b.out_size
    n_out = op.n_patches(o, o, patch, density)
    if op.compat:
        # compat: conv1 runs on the same density as conv3 without the halo, and the masker is scheduled
        # with conv1 (fused dense conv, or mask conv + conv1 on patches of the block-input map, the cheaper one)
        cost = op.masker_conv1(b.in_channels, w, h, h, patch, density)
        cost += op.gather_conv(w, w, o, o, 3, b.groups, b.stride, patch, n_out, gathered_input=False)
        cost += op.gather_conv(w, b.out_channels, o, o, 1, 1, 1, patch, n_out, gathered_input=True)
        cost += op.scatter_add(b.out_channels, o, o, patch, n_out)
        if b.se_squeeze:
            cost += op.dynamic_se(w, o, o, b.se_squeeze, patch, n_out)
        return cost + _projection(op, b)
    if _engine(op, b):
        return sum(spatial_parts(op, b, patch, density, conv1, masker, index).values(), ZERO)
    # Grouped / SE blocks (torch paths in the engine): the paper's composition with the fixes.
    # fix: each active output patch needs a ((S-1)*stride + 3)^2 region of conv1's output (the 3x3 halo):
    # conv1 computes it per patch (halos recomputed, no dilation of the mask needed), conv2 reads it gathered.
    cell, side = patch * b.stride, (patch - 1) * b.stride + 3
    cost = op.spatial_masker(b.in_channels, h, h, o // patch)
    cost += op.gather_conv(b.in_channels, w, h, h, 1, 1, 1, cell, n_out, gathered_input=False, side=side)
    cost += op.gather_conv(w, w, o, o, 3, b.groups, b.stride, patch, n_out, gathered_input=True)
    cost += op.gather_conv(w, b.out_channels, o, o, 1, 1, 1, patch, n_out, gathered_input=True)
    cost += op.scatter_add(b.out_channels, o, o, patch, n_out)
    if b.se_squeeze:
        cost += op.dynamic_se(w, o, o, b.se_squeeze, patch, n_out)
    return cost + _projection(op, b)


def channel_block(op: OpModel, b: BlockGeometry, group: int, density: float, masker: bool = True,
                  index: bool = True) -> Cost:
    """Channel skipping in groups of `group` consecutive bottleneck channels; `density` = kept fraction."""
    w, h, o = b.width, b.in_size, b.out_size
    if op.compat:
        # compat: the masker is sized from the block input channels, G only sizes the masker, the
        # residual add is a full-density scatter-add and SE is the patch-pooling SE at full density
        cost = op.conv(b.in_channels, w, h, h, 1, out_density=density)
        cost += op.channel_masker(b.in_channels, h, h, b.in_channels // group)
        cost += op.conv(w, w, o, o, 3, b.groups, b.stride, in_density=density, out_density=density)
        cost += op.conv(w, b.out_channels, o, o, 1, in_density=density)
        cost += op.scatter_add(b.out_channels, o, o, 1, o * o)
        if b.se_squeeze:
            cost += op.dynamic_se(w, o, o, b.se_squeeze, 1, o * o)
        return cost + _projection(op, b)
    if _engine(op, b):
        # engine: `ChannelBlock._forward_channel` (laudnet/deploy/blocks.py): masker, `channel_index` (one kernel:
        # per-sample compacted channel ids, kmax = width), then per-sample compacted GEMMs with gathered weights
        # (`channel_conv1x1_out`, `channel_conv3x3`, `channel_conv1x1_in`): kept channels are packed, so a tile is never
        # partly empty (no load imbalance; G reaches the masker and conv2's weight gather), and the residual add is
        # fused into conv3's epilogue, in place.
        B, n_groups = op.batch, w // group
        cost = op.channel_masker(b.in_channels, h, h, n_groups) if masker else ZERO
        if index:
            cost += op.stream(B * n_groups, 4 * B * (w + 1))
        cost += op.conv(b.in_channels, w, h, h, 1, out_density=density, group=group, compacted="out")
        cost += op.conv(w, w, o, o, 3, b.groups, b.stride, in_density=density, out_density=density, group=group,
                        compacted="both")
        cost += op.conv(w, b.out_channels, o, o, 1, in_density=density, group=group, compacted="in")
        cost += op.epilogue(B * b.out_channels * o * o)
        if b.projection:
            cost += _projection(op, b)
        return cost
    # Grouped / SE blocks (torch paths in the engine): the paper's composition with the fixes.
    # fix: the group size reaches the load-imbalance model and the masker has width // G outputs
    cost = op.channel_masker(b.in_channels, h, h, w // group)
    cost += op.conv(b.in_channels, w, h, h, 1, out_density=density, group=group)
    cost += op.conv(w, w, o, o, 3, b.groups, b.stride, in_density=density, out_density=density, group=group)
    cost += op.conv(w, b.out_channels, o, o, 1, in_density=density, group=group)
    cost += op.add(b.out_channels, o, o)
    if b.se_squeeze:
        cost += op.se(w, o, o, b.se_squeeze)
    return cost + _projection(op, b)


def layer_block(op: OpModel, b: BlockGeometry, density: float, masker: bool = True, index: bool = True) -> Cost:
    """Layer skipping: a fraction `density` of the samples runs the block, the others pass the identity."""
    if op.compat:
        # compat: the masker is the fused masker+conv1 with no output kept (it only reads the input), and the body
        # scales linearly with the density, as if executing samples were regrouped for free
        fixed = op.masker_conv1(b.in_channels, b.width, b.in_size, b.in_size, b.out_size, 0.0, out_density=0.0,
                                try_unfused=False)
        return fixed + _projection(op, b) + _dense_body(op, b).scale(density)
    if _engine(op, b):
        return _layer_engine(op, b, density, masker, index)
    # Grouped / SE blocks (torch paths in the engine): sub-batch gathered, run densely, written back.
    fixed = op.spatial_masker(b.in_channels, b.in_size, b.in_size, 1) + _projection(op, b)
    if op.batch == 1:
        return fixed + _dense_body(op, b).scale(density)
    # At batch B the ceil(density * B) executing samples are gathered into a sub-batch, run, and scatter-added back
    # (the official model scales the full-batch cost linearly instead).
    k = math.ceil(round(density * op.batch, 9))
    if k == 0:
        return fixed
    sub = op.with_batch(k)
    moved = sub.copy_samples(b.in_channels, b.in_size, b.in_size) + sub.copy_samples(b.out_channels, b.out_size,
                                                                                       b.out_size)
    return fixed + moved + _dense_body(sub, b)


def _layer_engine(op: OpModel, b: BlockGeometry, density: float, masker: bool = True, index: bool = True) -> Cost:
    """Layer skipping of a plain bottleneck as the engine runs it.

    engine: `PatchBlock._forward_kernels` of a `LayerBlock` (`laudnet/deploy/blocks.py`) with fused maskers and one
    whole-map patch per executing sample: the previous block's output kernel has accumulated this block's window sums,
    so the masker is one decision kernel (`masker_decide`: logits, threshold, flags, count and the executing samples
    first; a second launch compacts the lists where the B decisions span several programs), then the spatial kernels on
    the compacted sub-batch of ceil(density * B) samples, driven by the sample list: `pixel_conv1x1` over all their
    pixels, `gather_conv3x3` with S = map size, `conv1x1_scatter_add` in place. The lists have full capacity, so the
    three kernels launch (and return at once) even when no sample executes. A projection block computes its shortcut as
    one fused 1x1 conv + bias and the ReLU of the skipped samples in one pass.
    """
    B, o = op.batch, b.out_size
    cost = ZERO
    if masker or index:  # the decision kernel reads the window sums and writes the flags and lists
        rows_per_program = max(1, 2048 // min(2048, 1 << (b.in_channels - 1).bit_length()))
        launches = 1 if rows_per_program >= B else 2
        cost += op.stream(4 * B * b.in_channels, 24 * B, launches=launches)
    if b.projection:
        cost += _projection(op, b) + _relu_pass(op, b.out_channels, o)
    idle = Cost(3 * op.launch, launches=3)
    if B == 1:  # one sample runs with probability `density`: the expected cost of the three kernels
        return cost + _layer_kernels(op, b, 1).scale(density) + idle.scale(1.0 - density)
    k = math.ceil(round(density * B, 9))
    return cost + (_layer_kernels(op, b, k) if k else idle)


def _layer_kernels(op: OpModel, b: BlockGeometry, k: int) -> Cost:
    """The three spatial kernels on a sub-batch of `k` executing samples, one whole-map patch each."""
    sub, h, o = op.with_batch(k), b.in_size, b.out_size
    cost = sub.pixel_gemm(b.in_channels, b.width, h * h)
    cost += _patch_conv3x3(sub, b, o, 1)
    return cost + sub.pixel_gemm(b.width, b.out_channels, o * o) + sub.epilogue(k * b.out_channels * o * o)


def block_cost(op: OpModel, b: BlockGeometry, paradigm: str, density: float, granularity: int,
               spatial_conv1: str = "dense", masker: bool = True, index: bool = True) -> Cost:
    """Dispatch on the paradigm. `granularity` is S (spatial) or G (channel); ignored otherwise.

    Default mode, plain bottlenecks only: `spatial_conv1` ("dense" or "sparse") is the engine's conv1 mode of a
    spatial block, `masker=False` leaves the masker network out (a block timed with its masks given) and
    `index=False` the building of the index lists (a block timed with its lists prebuilt).
    """
    if paradigm == "static":
        return static_block(op, b)
    if paradigm == "spatial":
        return spatial_block(op, b, granularity, density, spatial_conv1, masker, index)
    if paradigm == "channel":
        return channel_block(op, b, granularity, density, masker, index)
    if paradigm == "layer":
        return layer_block(op, b, density, masker, index)
    raise ValueError(f"unknown paradigm {paradigm!r}; choose from {', '.join(CNN_PARADIGMS)}")


def transformer_block(op: OpModel, tokens: int, dim: int, heads: int, mlp_ratio: float = 4.0,
                      token_density: float = 1.0, head_density: float = 1.0, attn_density: float = 1.0,
                      mlp_density: float = 1.0, engine: bool = False,
                      maskers: frozenset[str] | None = None, token_bucket: int = 1) -> Cost:
    """Pre-norm ViT block with AdaViT-style skipping, for the ViT work.

    Args:
        tokens: tokens entering the block (class token included).
        token_density: fraction of tokens kept (selected by a token gather) for attention and MLP.
        head_density: fraction of attention heads kept (also thins the MLP's input, as in AdaViT, unless `engine`).
        attn_density / mlp_density: probability that the attention / MLP sub-block runs (layer skipping).
        engine: compose as laudnet's LAUD-ViT runs (`laudnet.deploy.vit.DeployedViTBlock`): a skipped head only
            removes its attention and projection columns (the MLP reads the full projected width), and each
            sub-block's kept-token results are added back into the residual stream (an index_add per sub-block).
        maskers: the maskers that run (a subset of token, head, layer), whatever the densities; None: those of the
            parts whose density is below 1.
        token_bucket: with `engine`, the attention runs on the kept-token count rounded up to a multiple of this
            (padded keys masked out, `DeployedViTBlock.token_bucket`); the MLP on the kept tokens exactly.
    """
    for name, v in (("token_density", token_density), ("head_density", head_density),
                    ("attn_density", attn_density), ("mlp_density", mlp_density)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {v}")
    kept = max(1, int(tokens * token_density))
    hidden = int(dim * mlp_ratio)
    if maskers is None:
        maskers = frozenset(name for name, on in (("layer", attn_density < 1 or mlp_density < 1),
                                                  ("head", head_density < 1), ("token", kept < tokens)) if on)
    # engine: laudnet's maskers give two logits per decision (`laudnet.blocks.vit`), AdaViT's policies one
    per_decision = 2 if engine else 1
    policy = ZERO
    if "layer" in maskers:
        policy = policy + op.fc(dim, 2 * per_decision)
    if "head" in maskers:
        policy = policy + op.fc(dim, heads * per_decision)
    if "token" in maskers:
        policy = policy + op.linear(tokens, dim, per_decision)
    if kept < tokens:
        policy = policy + op.token_gather(tokens, kept, dim)
    norm1 = op.layernorm(tokens, dim)
    if engine:  # engine: norm1 always runs, the maskers read its output
        policy, norm1 = policy + norm1, ZERO
    if not isinstance(token_bucket, int) or token_bucket < 1:
        raise ValueError(f"token_bucket must be a positive integer, got {token_bucket!r}")
    padded = min(tokens, math.ceil(kept / token_bucket) * token_bucket) if engine else kept
    attn = norm1 + op.attention(padded, dim, heads, head_density) + op.elementwise(kept, dim)
    if engine and kept < tokens:
        # engine: `DeployedViTBlock._mlp` packs the kept tokens of the whole batch into one (B * kept, C) matrix
        packed = op.with_batch(1)
        mlp = (packed.layernorm(op.batch * kept, dim) + packed.mlp(op.batch * kept, dim, hidden)
               + packed.elementwise(op.batch * kept, dim))
    else:
        mlp = op.layernorm(kept, dim) + op.mlp(kept, dim, hidden, in_density=1.0 if engine else head_density)
        mlp = mlp + op.elementwise(kept, dim)
    if engine and kept < tokens:  # engine: `index_add` of the kept rows into the residual stream, per sub-block
        attn = attn + op.token_gather(tokens, kept, dim)
        mlp = mlp + op.token_gather(tokens, kept, dim)
    return policy + attn.scale(attn_density) + mlp.scale(mlp_density)
