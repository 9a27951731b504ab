"""Latency of one residual block (ResNet bottleneck or RegNetY block), static or dynamic, composed from `ops`.

Composition follows the paper (spec 11.4): a static block is conv1 + conv2 + conv3 + add (+ projection, + SE); the
dynamic blocks replace convs by their sparse forms and add the masker, gather and scatter costs. `compat` reproduces
the official `eval_example.py` composition; the default fixes what the spec flags, fix by fix.

All functions return a `Cost` for the whole batch (seconds).
"""

from __future__ import annotations

import math

from laudnet.latency.geometry import BlockGeometry
from laudnet.latency.ops import ZERO, Cost, OpModel

PARADIGMS = ("static", "spatial", "channel", "layer")


def _projection(op: OpModel, b: BlockGeometry) -> Cost:
    if op.compat:
        # compat: FLAG 20, only a stride-2 projection is costed (ResNet stage 1's 64 -> 256 projection is not)
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


def spatial_block(op: OpModel, b: BlockGeometry, patch: int, density: float) -> Cost:
    """Spatial skipping on `patch x patch` output patches; `density` = fraction of active output pixels."""
    w, h, o = b.width, b.in_size, b.out_size
    n_out = op.n_patches(o, o, patch, density)
    if op.compat:
        # compat: FLAG 17, conv1 runs on the same density as conv3 without the halo, and the masker is scheduled
        # with conv1 (fused dense conv, or mask conv + conv1 on patches of the block-input map, the cheaper one)
        cost = op.masker_conv1(b.in_channels, w, h, h, patch, density)
        cost += op.gather_conv(w, w, o, o, 3, b.groups, b.stride, patch, n_out, gathered_input=False)
        cost += op.gather_conv(w, b.out_channels, o, o, 1, 1, 1, patch, n_out, gathered_input=True)
        cost += op.scatter_add(b.out_channels, o, o, patch, n_out)
        if b.se_squeeze:
            cost += op.dynamic_se(w, o, o, b.se_squeeze, patch, n_out)
        return cost + _projection(op, b)
    # fix: FLAG 17, each active output patch needs a ((S-1)*stride + 3)^2 region of conv1's output (the 3x3 halo):
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


def channel_block(op: OpModel, b: BlockGeometry, group: int, density: float) -> Cost:
    """Channel skipping in groups of `group` consecutive bottleneck channels; `density` = kept fraction."""
    w, h, o = b.width, b.in_size, b.out_size
    if op.compat:
        # compat: FLAG 19 (masker sized from the block input channels), FLAG 18 (G only sizes the masker), the
        # residual add is a full-density scatter-add and SE is the patch-pooling SE at full density
        cost = op.conv(b.in_channels, w, h, h, 1, out_density=density)
        cost += op.channel_masker(b.in_channels, h, h, b.in_channels // group)
        cost += op.conv(w, w, o, o, 3, b.groups, b.stride, in_density=density, out_density=density)
        cost += op.conv(w, b.out_channels, o, o, 1, in_density=density)
        cost += op.scatter_add(b.out_channels, o, o, 1, o * o)
        if b.se_squeeze:
            cost += op.dynamic_se(w, o, o, b.se_squeeze, 1, o * o)
        return cost + _projection(op, b)
    # fix: FLAG 18 / 19, the group size reaches the load-imbalance model and the masker has width // G outputs
    cost = op.channel_masker(b.in_channels, h, h, w // group)
    cost += op.conv(b.in_channels, w, h, h, 1, out_density=density, group=group)
    cost += op.conv(w, w, o, o, 3, b.groups, b.stride, in_density=density, out_density=density, group=group)
    cost += op.conv(w, b.out_channels, o, o, 1, in_density=density, group=group)
    cost += op.add(b.out_channels, o, o)
    if b.se_squeeze:
        cost += op.se(w, o, o, b.se_squeeze)
    return cost + _projection(op, b)


def layer_block(op: OpModel, b: BlockGeometry, density: float) -> Cost:
    """Layer skipping: a fraction `density` of the samples runs the block, the others pass the identity."""
    if op.compat:
        # compat: the masker is the fused masker+conv1 with no output kept (it only reads the input), and the body
        # scales linearly with the density, as if executing samples were regrouped for free
        fixed = op.masker_conv1(b.in_channels, b.width, b.in_size, b.in_size, b.out_size, 0.0, out_density=0.0,
                                try_unfused=False)
        return fixed + _projection(op, b) + _dense_body(op, b).scale(density)
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


def block_cost(op: OpModel, b: BlockGeometry, paradigm: str, density: float, granularity: int) -> Cost:
    """Dispatch on the paradigm. `granularity` is S (spatial) or G (channel); ignored otherwise."""
    if paradigm == "static":
        return static_block(op, b)
    if paradigm == "spatial":
        return spatial_block(op, b, granularity, density)
    if paradigm == "channel":
        return channel_block(op, b, granularity, density)
    if paradigm == "layer":
        return layer_block(op, b, density)
    raise ValueError(f"unknown paradigm {paradigm!r}; choose from {', '.join(PARADIGMS)}")


def transformer_block(op: OpModel, tokens: int, dim: int, heads: int, mlp_ratio: float = 4.0,
                      token_density: float = 1.0, head_density: float = 1.0, attn_density: float = 1.0,
                      mlp_density: float = 1.0) -> Cost:
    """Pre-norm ViT block with AdaViT-style skipping (spec 12), for the ViT work.

    Args:
        tokens: tokens entering the block (class token included).
        token_density: fraction of tokens kept (selected by a token gather) for attention and MLP.
        head_density: fraction of attention heads kept (also thins the MLP's input, as in AdaViT).
        attn_density / mlp_density: probability that the attention / MLP sub-block runs (layer skipping).
    """
    for name, v in (("token_density", token_density), ("head_density", head_density),
                    ("attn_density", attn_density), ("mlp_density", mlp_density)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {v}")
    kept = max(1, int(tokens * token_density))
    hidden = int(dim * mlp_ratio)
    policy = ZERO
    if attn_density < 1 or mlp_density < 1:
        policy = policy + op.fc(dim, 2)
    if head_density < 1:
        policy = policy + op.fc(dim, heads)
    if kept < tokens:
        policy = policy + op.linear(tokens, dim, 1) + op.token_gather(tokens, kept, dim)
    attn = op.layernorm(tokens, dim) + op.attention(kept, dim, heads, head_density) + op.elementwise(kept, dim)
    mlp = op.layernorm(kept, dim) + op.mlp(kept, dim, hidden, in_density=head_density) + op.elementwise(kept, dim)
    return policy + attn.scale(attn_density) + mlp.scale(mlp_density)
