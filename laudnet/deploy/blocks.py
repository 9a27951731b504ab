"""Inference form of a dynamic block: BN folded, hard decisions, sub-batch / sparse execution.

Tensors are NCHW in channels_last memory (NHWC underneath), so a sample, a pixel or a run of channels is contiguous:
`nhwc(x)` is a free view on which samples are gathered and scattered without layout conversion.

One class per paradigm, chosen once by `deploy_block` (`BLOCK_CLASSES`): `StaticBlock`, `SpatialBlock` and
`LayerBlock` (both `PatchBlock`s: the fused patch kernels, layer skipping being one whole-map patch per sample) and
`ChannelBlock`; their base `DeployedBlock` holds what they share (folded convs, shortcut, dense-masked path).

Each paradigm has a sparse path and a dense-masked path computing the same function; a block takes the dense path
when the batch's activation rate exceeds its `dense_above` threshold (where measurement says dense is faster).
The fused-kernel paths (ResNet bottlenecks: spatial, layer, channel) never synchronise with the host, so a deployed
model can be captured as one CUDA graph (`DeployedModel.graphed`).
Maskers are reduced to the difference of their two logits (execute iff ≥ 0) and evaluated in fp32.

Non-projection blocks write their output into their input tensor (the previous block's output): no full-tensor copy.

A channel masker runs as one window-sum pass and one Triton launch for its MLP and threshold
(`laudnet.kernels.channel_masker`), or with ``maskers="torch"`` as PyTorch's mean, linears, ReLU and compare. With
``fused`` maskers a channel block's sparse path also adds each sample's output sums up in its last kernel, so that the
next channel block's masker does not re-read its input.

Masker bookkeeping of the fused patch paths (spatial and layer skipping of plain bottlenecks), selected by `maskers`:
``torch`` (torch pooling, GEMV, threshold, argsort and list building: ~10 launches per block plus a full read of the
block input), ``kernel`` (window sums and decisions + lists in three Triton launches, `laudnet.kernels.masker`) or
``fused`` (the default: as ``kernel``, but each block receives its masker's window sums from the previous block, which
accumulates them while it writes its output, so no block re-reads its input to pool it). The chain passes the sums
along in `DeployedModel.forward_features` (`forward_chained`). Summing is exact up to float summation order: a skipped
window's pixels are not changed by the block, so its sum is kept; an executing window's sum is accumulated by the
residual-scatter epilogue from the values it writes (after the ReLU, which is why sums cannot be updated
incrementally); a projection block's final ReLU pass (or the dense path's) sums every window.

``reduce`` is ``torch`` written for a network compiled whole (`deploy_dense_masked`): the spatial masker weighs each
pixel's channels before pooling and the channel masker's two small layers are multiply-and-sum, so that Inductor fuses
them into reductions instead of launching a GEMM per masker. Eager, it makes an fp32 copy of the block input.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laudnet import kernels as K
from laudnet.blocks.base import DynamicBlock
from laudnet.deploy.fold import fold_conv_bn
from laudnet.deploy.graphs import if_node
from laudnet.flops import conv_out_size
from laudnet.kernels import channel as channel_ops
from laudnet.kernels.indexing import MAP_WINDOW, MaskerDecisions
from laudnet.masks import expand_channel_groups, expand_patches, pool_patches

MASKERS = ("fused", "kernel", "torch", "reduce")
TORCH_MASKERS = ("torch", "reduce")  # the modes whose decisions are PyTorch ops (traceable, no Triton launches)


def nhwc(x: Tensor) -> Tensor:
    """NCHW (channels_last) → NHWC view."""
    return x.permute(0, 2, 3, 1)


def nchw(x: Tensor) -> Tensor:
    """NHWC → NCHW view (channels_last memory)."""
    return x.permute(0, 3, 1, 2)


def residual_branch(x: Tensor, s: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w3: Tensor, b3: Tensor,
                    stride: int, groups: int, channels: Tensor | None = None, out_mask: Tensor | None = None,
                    act: bool = True) -> Tensor:
    """relu(s + out_mask · conv3(ch · relu(conv2(ch · relu(conv1(x)))))) with folded weights: the whole dense
    bottleneck (no SE), with the dense-masked path's masks where given.

    A free function of tensors, so that one `torch.compile` (dynamic shapes) serves every block and sub-batch size,
    static and dense-masked alike (Inductor fuses the masks into the pointwise epilogues).

    Args:
        channels: (B, width, 1, 1) channel mask applied after conv1's and conv2's ReLU (channel skipping), or None.
        out_mask: mask of the branch output, (B, 1, 1, 1) (layer) or (B, 1, H, W) (spatial), or None.
        act: apply the final ReLU (False: the caller fuses it with other work).
    """
    h = F.relu(F.conv2d(x, w1, b1))
    if channels is not None:
        h = h * channels
    h = F.relu(F.conv2d(h, w2, b2, stride=stride, padding=1, groups=groups))
    if channels is not None:
        h = h * channels
    y = F.conv2d(h, w3, b3)
    if out_mask is not None:
        y = y * out_mask
    return F.relu(y + s) if act else y + s


COMPILE_SHAPES = ("dynamic", "static")
_COMPILED_BRANCH: dict[str, object] = {}


def compiled_residual_branch(shapes: str = "dynamic"):
    """`residual_branch` compiled once per process and shape mode (Inductor).

    Args:
        shapes: ``dynamic`` — symbolic sizes, one graph serving many signatures; ``static`` — one graph specialised
            to each shape signature (faster where the shapes are fixed, as in a captured CUDA graph: Inductor
            specialises the kernels to the sizes). Use one mode per process: the modes
            share Dynamo's cache of this function's code.
    """
    if shapes not in COMPILE_SHAPES:
        raise ValueError(f"compile shapes must be one of {COMPILE_SHAPES}, got {shapes!r}")
    if shapes not in _COMPILED_BRANCH:
        # Each distinct shape signature (block width, stride, projection, masks; with static shapes also the batch
        # and map size) is a cache entry. Past the limit Dynamo silently runs the function eagerly: a ResNet-101 with
        # static and dense-masked variants needs well over 64.
        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older one where it exists
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 256))
        _COMPILED_BRANCH[shapes] = torch.compile(residual_branch, dynamic=shapes == "dynamic")
    return _COMPILED_BRANCH[shapes]


class DeployedBlock(nn.Module):
    """A `DynamicBlock` prepared for inference: the base of the per-paradigm classes, one of which `deploy_block`
    picks (`BLOCK_CLASSES`).

    It holds what every paradigm shares: the folded convs, the shortcut, the dense branch, the dense-masked path and
    the settings `deploy` makes (`path`, `maskers`, `branch_fn`, ...). A paradigm's class gives its decisions
    (`_masker`), the masks of its dense-masked path (`_dense_masks`) and its sparse path (`_forward_sparse`), and
    where it has them its chained kernel paths (`_run`).

    Args:
        block: the trained block (its weights are copied, the block is left unchanged).
        dense_above: activation rate above which the dense-masked path runs. The default 1.0 never checks (the check
            reads the rate on the host, which rules out CUDA graphs).
    """

    paradigm: str  # the `DynamicBlock.paradigm` a class deploys
    patch_kernels = False  # whether the sparse path runs the fused patch kernels (set by `PatchBlock`)
    channel_kernels = False  # whether the sparse path runs the channel kernels (set by `ChannelBlock`)

    def __init__(self, block: DynamicBlock, dense_above: float = 1.0) -> None:
        if type(self) is DeployedBlock:
            raise TypeError("DeployedBlock is the base of the per-paradigm classes: deploy_block(block) picks one")
        if block.paradigm != self.paradigm:
            raise ValueError(f"{type(self).__name__} deploys {self.paradigm} blocks, got a {block.paradigm} block")
        super().__init__()
        pairs = block.conv_bn_pairs()
        self.conv1 = fold_conv_bn(*pairs["conv1"])
        self.conv2 = fold_conv_bn(*pairs["conv2"])
        self.conv3 = fold_conv_bn(*pairs["conv3"])
        self.shortcut = fold_conv_bn(*pairs["shortcut"]) if pairs["shortcut"] is not None else None
        self.se = copy.deepcopy(block.f.se) if block.se_channels else None
        self.granularity = block.granularity
        self.stride = block.stride
        self.dense_above = dense_above
        self.last_rate: Tensor | None = None
        # Decisions imposed from outside (benchmarks at a chosen activation rate): the masker still runs, so its cost
        # is measured, but `forced_keep` (shaped like `decide`'s result) replaces its answer.
        self.forced_keep: Tensor | None = None
        # The fused kernels cover the plain bottleneck; a grouped 3×3 with SE (RegNetY) runs the torch paths.
        self.plain = block.groups == 1 and self.se is None
        self.width = block.width
        self.groups = block.groups
        self.branch_fn = residual_branch  # replaced by the compiled form with deploy(compile=True)
        self.spatial_conv1 = "dense"  # or "sparse" (spatial blocks): conv1 only on the dilated active region
        self.path = "sparse"  # or "dense": the dense-masked path, where measurement says it is faster (`tune_paths`)
        self.maskers = "fused"  # masker bookkeeping of the kernel paths, one of MASKERS (see the module docstring)
        # Window the next block's masker pools (set by `deploy` when both blocks chain their masker sums): this block
        # then returns that block's window sums from `forward_chained`.
        self.emit_window: int | None = None

    @property
    def fusable(self) -> bool:
        """Whether the masker runs on window sums through the Triton decision kernels (spatial/layer patch paths)."""
        return self.patch_kernels and self.maskers not in TORCH_MASKERS

    @property
    def in_window(self) -> int:
        """Window of the block input that the masker averages."""
        raise RuntimeError(f"a {self.paradigm} block has no pooling window")

    def prepare(self) -> None:
        """Derive kernel-side weight layouts once the block has its final device and dtype (called by `deploy`)."""
        if self.shortcut is not None and (self.patch_kernels or self.channel_kernels):
            self._w_shortcut = K.pack_conv1x1_weight(self.shortcut.weight)

    # --- decisions ------------------------------------------------------------------------------------------------
    def _out_hw(self, x: Tensor) -> tuple[int, int]:
        return conv_out_size(x.shape[2], self.stride), conv_out_size(x.shape[3], self.stride)

    def decide(self, x: Tensor) -> Tensor:
        """Hard decisions: (B, gh, gw) for spatial, (B,) for layer, (B, n_groups) for channel; bool."""
        keep = self._masker(x)
        forced = self._imposed(keep.shape)
        return keep if forced is None else forced

    def _masker(self, x: Tensor) -> Tensor:
        """The masker's own decisions (PyTorch ops)."""
        raise RuntimeError(f"a {self.paradigm} block has no decisions")

    def _imposed(self, shape: tuple[int, ...]) -> Tensor | None:
        """`forced_keep`, checked against the shape of the decisions."""
        if self.forced_keep is not None and tuple(self.forced_keep.shape) != tuple(shape):
            raise ValueError(f"forced_keep has shape {tuple(self.forced_keep.shape)}, decisions are {tuple(shape)}")
        return self.forced_keep

    def _dense_now(self, rate: Tensor) -> bool:
        """Whether the dense-masked path runs at this batch's activation rate (a 0-d device tensor): always with
        ``path="dense"``, else above `dense_above` (reading the rate synchronises with the host)."""
        return self.path == "dense" or (self.dense_above < 1 and float(rate) > self.dense_above)

    # --- dense building blocks ------------------------------------------------------------------------------------
    def _branch(self, x: Tensor, pixel: Tensor | None = None, channels: Tensor | None = None) -> Tensor:
        """conv3(SE(conv2(conv1(x)))) with optional masks applied as the training form does."""
        h = F.relu(self.conv1(x), inplace=True)
        if channels is not None:
            h = h * channels
        h = F.relu(self.conv2(h), inplace=True)
        if channels is not None:
            h = h * channels
        if self.se is not None:
            h = self.se(h * pixel if pixel is not None else h)
        y = self.conv3(h)
        return y * pixel if pixel is not None else y

    def _shortcut(self, x: Tensor) -> Tensor:
        return x if self.shortcut is None else self.shortcut(x)

    def _shortcut_nhwc(self, x: Tensor) -> Tensor:
        """The shortcut for the kernel paths, which write the block output into it in place (NHWC): the block input
        itself, or the projection as one fused 1×1 conv + bias kernel over the (strided) input pixels — cuDNN's conv
        adds its bias in a second, unvectorised pass."""
        xh = nhwc(x)
        if self.shortcut is None:
            return xh
        n, h, w, _ = xh.shape
        key = (n, h, w, x.device)
        if getattr(self, "_shortcut_key", None) != key:  # the input pixels the projection reads, cached per shape
            ho, wo = self._out_hw(x)
            ys = torch.arange(ho, device=x.device, dtype=torch.int32) * self.stride
            xs = torch.arange(wo, device=x.device, dtype=torch.int32) * self.stride
            base = torch.arange(n, device=x.device, dtype=torch.int32) * (h * w)
            self._shortcut_pixels = (base[:, None, None] + ys[None, :, None] * w + xs[None, None, :]).view(-1)
            self._shortcut_key = key
        y = K.pixel_conv1x1(xh, self._w_shortcut, self.shortcut.bias, self._shortcut_pixels, relu=False, compact=True)
        return y.view(n, *self._out_hw(x), -1)

    def _dense_block(self, x: Tensor, s: Tensor, channels: Tensor | None = None, out_mask: Tensor | None = None,
                     act: bool = True) -> Tensor:
        """relu(s + branch(x)) with optional masks, through the (possibly compiled) functional form where the block
        has no SE."""
        if self.se is not None:
            y = self._branch(x, pixel=out_mask, channels=channels) + s
            return F.relu_(y) if act else y
        return self.branch_fn(x, s, self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias,
                              self.conv3.weight, self.conv3.bias, self.stride, self.groups, channels, out_mask, act)

    # --- forward --------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """The block on its own: its masker pools `x` itself (see `forward_chained` for the fused chain)."""
        return self._run(x, None, None)[0]

    def forward_chained(self, x: Tensor, sums: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The block inside the deployed model's chain: takes and returns masker window sums.

        Args:
            x: the block input (NCHW, channels_last).
            sums: fp32 window sums of `x` on this block's masker windows (`in_window`), made by the previous block,
                or None (the masker pools `x` itself). Modified in place (the output's sums are accumulated there
                where possible).

        Returns:
            `(output, sums of the output on emit_window)`; the sums are None unless `emit_window` is set.
        """
        return self._run(x, sums, self.emit_window)

    def _run(self, x: Tensor, sums: Tensor | None, emit: int | None) -> tuple[Tensor, Tensor | None]:
        """The block's computation; here the path without masker sums (`_forward_torch`)."""
        return self._forward_torch(x), None

    def _forward_torch(self, x: Tensor) -> Tensor:
        """Decisions by `decide`, then the dense-masked or the sparse path."""
        keep = self.decide(x)
        rate = keep.float().mean()
        self.last_rate = rate  # a 0-d device tensor: reading it is the caller's choice (it synchronises)
        if self._dense_now(rate):  # (syncs where dense_above < 1)
            return self._forward_dense(x, keep)
        return self._forward_sparse(x, keep)

    def _forward_sparse(self, x: Tensor, keep: Tensor) -> Tensor:
        """The sparse path for decisions `keep` (as `decide` returns them)."""
        raise NotImplementedError

    def _forward_dense(self, x: Tensor, keep: Tensor, act: bool = True) -> Tensor:
        """The dense-masked path: every conv dense, decisions applied as masks (no host synchronisation).

        `act=False` returns the sum before the final ReLU (the caller applies it, fused with pooling).
        """
        s = self._shortcut(x)
        return self._dense_block(x, s, act=act, **self._dense_masks(x, keep))

    def _dense_masks(self, x: Tensor, keep: Tensor) -> dict[str, Tensor]:
        """The decisions as the masks of `_dense_block` (``out_mask`` or ``channels``)."""
        raise NotImplementedError


class StaticBlock(DeployedBlock):
    """A static block: the dense bottleneck, no masker."""

    paradigm = "static"

    def _run(self, x: Tensor, sums: Tensor | None, emit: int | None) -> tuple[Tensor, Tensor | None]:
        return self._dense_block(x, self._shortcut(x)), None


class PatchBlock(DeployedBlock):
    """Spatial and layer skipping: a linear masker on pooled windows (execute iff w·x + b ≥ 0) and, for a plain
    bottleneck, the fused patch kernels (`_forward_patches`), where layer skipping is the case of one whole-map patch
    per sample. With ``maskers`` other than ``torch`` the masker runs on window sums through the Triton decision
    kernels (`_forward_kernels`)."""

    def __init__(self, block: DynamicBlock, dense_above: float = 1.0) -> None:
        super().__init__(block, dense_above)
        if block.masker.groups != 1:
            raise ValueError("deploy supports spatial maskers with one mask group")
        # execute iff w·x + b ≥ 0 (the difference of the execute and skip logits, input normalisation folded in)
        masker_w, masker_b = block.masker.decision_weights()
        self.register_buffer("masker_w", masker_w)
        self.register_buffer("masker_b", masker_b)
        self.patch_kernels = self.plain

    def prepare(self) -> None:
        if self.patch_kernels:
            self._packed = (K.pack_conv1x1_weight(self.conv1.weight), K.pack_conv3x3_weight(self.conv2.weight),
                            K.pack_conv1x1_weight(self.conv3.weight))
        super().prepare()

    def _decision_shape(self, x: Tensor, out_hw: tuple[int, int]) -> tuple[int, ...]:
        """The shape of `decide`'s result."""
        raise NotImplementedError

    def _grid(self, keep: Tensor) -> Tensor:
        """Decisions as a patch grid `[B, gh, gw]`."""
        raise NotImplementedError

    def _patch_list(self, grid: Tensor, d: MaskerDecisions | None,
                    out_hw: tuple[int, int]) -> tuple[int, Tensor, Tensor, Tensor | None]:
        """`(patch size, active patch list, its device-side count, executing-sample order or None)` for the patch
        kernels, from the decision kernels' lists `d` or (None) built here with torch ops."""
        raise NotImplementedError

    def _conv1(self, x: Tensor, grid: Tensor, order: Tensor | None, count: Tensor) -> Tensor:
        """conv1 of the patch paths (NHWC out)."""
        raise NotImplementedError

    def _run(self, x: Tensor, sums: Tensor | None, emit: int | None) -> tuple[Tensor, Tensor | None]:
        if not self.fusable:
            return super()._run(x, sums, emit)
        return self._forward_kernels(x, sums, emit)

    def _forward_kernels(self, x: Tensor, sums: Tensor | None, emit: int | None) -> tuple[Tensor, Tensor | None]:
        """Spatial/layer skipping with the masker on window sums and Triton decision + list kernels (no host sync).

        `emit`: window of the next block's masker, or None. When it is this block's own window and the shortcut is
        the identity, the output's sums are accumulated in place in `sums` (skipped windows keep theirs).
        """
        in_hw, out_hw = (x.shape[2], x.shape[3]), self._out_hw(x)
        window = self.in_window
        if sums is None:
            sums = K.window_sums(nhwc(x), window)
        shape = self._decision_shape(x, out_hw)
        # An identity shortcut means the same map size and channels: the next masker's windows are this one's.
        reuse = emit is not None and emit == window and self.shortcut is None
        d = K.masker_decide(sums, self.masker_w, self.masker_b, in_hw, window, self._imposed(shape), zero_active=reuse)
        self.last_rate = d.rate  # a 0-d device tensor
        keep = d.keep.view(shape)
        if self._dense_now(d.rate):  # (syncs where dense_above < 1)
            if emit is None:
                return self._forward_dense(x, keep), None
            out = self._forward_dense(x, keep, act=False).contiguous(memory_format=torch.channels_last)  # (no-op)
            return out, K.window_sums(nhwc(out), emit, relu=True)  # the final ReLU and the next masker's pooling
        return self._forward_patches(x, self._grid(keep), d, pool_out=sums if reuse else None, emit=emit)

    def _forward_patches(self, x: Tensor, grid: Tensor, d: MaskerDecisions | None = None,
                         pool_out: Tensor | None = None, emit: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Spatial skipping through the fused patch kernels; layer skipping is the case of one patch per sample.

        conv1 on the pixels the active patches' 3×3 windows read → implicit-GEMM 3×3 over the active patches → last
        1×1 conv with the residual add and ReLU scattered in place. Index lists have a fixed capacity and a
        device-side count, so nothing synchronises with the host and the block can be captured in a CUDA graph.

        Args:
            grid: bool decisions `[B, gh, gw]` (`[B, 1, 1]` for layer skipping).
            d: the lists from `masker_decide`, or None to build them here with torch ops (``maskers="torch"``).
            pool_out: fp32 window sums to accumulate the active patches' output sums into (see `forward_chained`).
            emit: window of the next block's masker: its sums are returned (from `pool_out`, or one pass).
        """
        patch, patches, count, order = self._patch_list(grid, d, self._out_hw(x))
        s = self._shortcut_nhwc(x)  # the block input itself, or a fresh projection: written in place
        active = (lambda: d.active) if d is not None else (lambda: count[0] > 0)
        with if_node(active):  # in a conditional CUDA graph: nothing is launched when nothing executes
            h1 = self._conv1(x, grid, order, count)
            h2 = K.gather_conv3x3(h1, self._packed[1], self.conv2.bias, patches, patch, self.stride, count=count)
            K.conv1x1_scatter_add(h2, self._packed[2], self.conv3.bias, s, patches, patch, out=s, count=count,
                                  pool_out=pool_out)
        out = nchw(s)
        sums = pool_out
        if self.shortcut is not None:  # inactive positions of a projection block: relu(projection)
            if emit is not None:
                sums = K.window_sums(s, emit, relu=True)  # the ReLU pass pools every window on the way
            else:
                out.relu_()  # on the channels_last NCHW view: PyTorch's vectorised path
        elif sums is None and emit is not None:  # the next masker's windows differ from this block's patches
            sums = K.window_sums(s, emit)
        return out, sums


class SpatialBlock(PatchBlock):
    """Spatial skipping: one decision per S×S patch of the block output (S = `granularity`)."""

    paradigm = "spatial"

    @property
    def in_window(self) -> int:
        """Window of the block input that the masker averages: S x stride."""
        return self.granularity * self.stride

    def _masker(self, x: Tensor) -> Tensor:
        out_hw = self._out_hw(x)
        if self.maskers == "reduce":
            # w·x per pixel in fp32, then pooled (both steps are linear, so they commute): one reduction over the
            # input that Inductor fuses, no GEMM launch and no pooled map rounded to x's dtype.
            score = (x.float() * self.masker_w.view(1, -1, 1, 1)).sum(1, keepdim=True)
            return pool_patches(score, self.stride, self.granularity, out_hw)[:, 0] + self.masker_b >= 0
        # Pool first (fp32 accumulation, no fp32 copy of x), then the masker's tiny GEMM in fp32.
        pooled = pool_patches(x, self.stride, self.granularity, out_hw).float()
        return torch.einsum("bchw,c->bhw", pooled, self.masker_w) + self.masker_b >= 0

    def _decision_shape(self, x: Tensor, out_hw: tuple[int, int]) -> tuple[int, ...]:
        return (x.shape[0], *K.patch_grid(out_hw, self.granularity))

    def _grid(self, keep: Tensor) -> Tensor:
        return keep

    def _patch_list(self, grid: Tensor, d: MaskerDecisions | None,
                    out_hw: tuple[int, int]) -> tuple[int, Tensor, Tensor, Tensor | None]:
        patches, count = (d.patch_idx, d.count) if d is not None else K.mask_to_patch_list(grid)
        return self.granularity, patches, count, None

    def _conv1(self, x: Tensor, grid: Tensor, order: Tensor | None, count: Tensor) -> Tensor:
        """conv1 on the pixels the active patches' 3×3 windows read (``spatial_conv1="sparse"``), or dense (its
        cost on the device outweighs the saved conv1 work)."""
        w1, in_hw = self._packed[0], (x.shape[2], x.shape[3])
        if self.spatial_conv1 == "sparse":
            pixels, pixel_count = K.pixel_mask_to_idx_padded(
                K.conv1_pixel_mask(grid, self.granularity, self.stride, in_hw))
            return K.pixel_conv1x1(nhwc(x), w1, self.conv1.bias, pixels, count=pixel_count)
        return K.pixel_conv1x1(nhwc(x), w1, self.conv1.bias, None)

    def _dense_masks(self, x: Tensor, keep: Tensor) -> dict[str, Tensor]:
        return {"out_mask": expand_patches(keep[:, None].to(x.dtype), self.granularity, self._out_hw(x))}

    def _forward_sparse(self, x: Tensor, keep: Tensor) -> Tensor:
        if self.patch_kernels:
            return self._forward_patches(x, keep)[0]
        return self._forward_dense(x, keep)  # SE blocks: no sparse torch path


class LayerBlock(PatchBlock):
    """Layer skipping: one decision per sample (a block no sample executes outputs act(shortcut))."""

    paradigm = "layer"

    @property
    def in_window(self) -> int:
        """Window of the block input that the masker averages: the whole map (`MAP_WINDOW`)."""
        return MAP_WINDOW

    def _masker(self, x: Tensor) -> Tensor:
        # Pool first (fp32 accumulation, no fp32 copy of x), then the masker's tiny GEMM in fp32.
        return x.mean(dim=(2, 3), dtype=torch.float32) @ self.masker_w + self.masker_b >= 0

    def _decision_shape(self, x: Tensor, out_hw: tuple[int, int]) -> tuple[int, ...]:
        return (x.shape[0],)

    def _grid(self, keep: Tensor) -> Tensor:
        return keep.view(-1, 1, 1)

    def _patch_list(self, grid: Tensor, d: MaskerDecisions | None,
                    out_hw: tuple[int, int]) -> tuple[int, Tensor, Tensor, Tensor | None]:
        """One whole-map patch per executing sample."""
        if d is not None:  # the sample list itself drives conv1: no pixel list
            return max(out_hw), d.patch_idx, d.count, d.order
        # Executing samples first (a stable sort of 0/1 flags): 2-3 small kernels, where a cumsum-scatter compaction
        # takes ~8 (and measured more than twice as slow per block).
        order = torch.argsort((~grid.view(-1)).to(torch.int8), stable=True).to(torch.int32)
        count = grid.view(-1).sum(dtype=torch.int32).view(1)
        return max(out_hw), K.samples_to_patch_idx(order), count, order

    def _conv1(self, x: Tensor, grid: Tensor, order: Tensor | None, count: Tensor) -> Tensor:
        """conv1 on every pixel of the executing samples (`order` lists them, `count` counts them)."""
        return K.pixel_conv1x1(nhwc(x), self._packed[0], self.conv1.bias, order, count=count, per_sample=True)

    def _dense_masks(self, x: Tensor, keep: Tensor) -> dict[str, Tensor]:
        return {"out_mask": keep.to(x.dtype).view(-1, 1, 1, 1)}

    def _forward_sparse(self, x: Tensor, keep: Tensor) -> Tensor:
        if self.patch_kernels:
            return self._forward_patches(x, self._grid(keep))[0]
        return self._forward_layer(x, keep)

    def _forward_layer(self, x: Tensor, keep: Tensor) -> Tensor:
        """Run the residual branch on the compacted sub-batch of executing samples and write it back in place."""
        idx = keep.nonzero().squeeze(1)
        n = idx.numel()  # synchronises: the sub-batch size decides the launch shapes
        s = self._shortcut(x)
        if n == 0:
            return F.relu_(s) if self.shortcut is not None else x
        x_sub = nchw(nhwc(x).index_select(0, idx))
        s_sub = x_sub if self.shortcut is None else nchw(nhwc(s).index_select(0, idx))
        z = self._dense_block(x_sub, s_sub)
        out = s if self.shortcut is None else F.relu_(s)
        nhwc(out).index_copy_(0, idx, nhwc(z))
        return out


class ChannelBlock(DeployedBlock):
    """Channel skipping: one decision per group of G consecutive bottleneck channels (G = `granularity`), from an
    MLP masker on the per-sample mean of the input; for a plain bottleneck, the per-sample compacted channel kernels
    (`_forward_channel`)."""

    paradigm = "channel"

    def __init__(self, block: DynamicBlock, dense_above: float = 1.0) -> None:
        super().__init__(block, dense_above)
        cm = block.channel_masker
        n = cm.n_groups
        self.masker_fc1 = cm.folded_fc1().to(cm.fc1.weight.device)
        self.register_buffer("masker_w2", (cm.fc2.weight[:n] - cm.fc2.weight[n:]).detach().float().clone())
        self.register_buffer("masker_b2", (cm.fc2.bias[:n] - cm.fc2.bias[n:]).detach().float().clone())
        self.channel_kernels = self.plain

    @property
    def in_window(self) -> int:
        """Window of the block input that the masker averages: the whole map (`MAP_WINDOW`)."""
        return MAP_WINDOW

    def prepare(self) -> None:
        if self.channel_kernels:
            w1, w2, w3 = channel_ops.pack_bottleneck_weights(self.conv1.weight, self.conv2.weight, self.conv3.weight)
            self._packed = (w1, w2, w3)
        super().prepare()

    def decide(self, x: Tensor) -> Tensor:
        if self.maskers not in TORCH_MASKERS:
            return self._channel_keep(x, None)
        return super().decide(x)

    def _masker(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3), dtype=torch.float32)
        fc1 = self.masker_fc1
        if self.maskers == "reduce":
            # The two small layers as multiply-and-sum: reductions that Inductor fuses, where a linear is a GEMM
            # launch of its own (most of the masker's time at small batches).
            hidden = F.relu((pooled[:, None, :] * fc1.weight[None]).sum(-1) + fc1.bias)
            return (hidden[:, None, :] * self.masker_w2[None]).sum(-1) + self.masker_b2 >= 0
        hidden = F.relu(fc1(pooled))
        return hidden @ self.masker_w2.t() + self.masker_b2 >= 0

    def _channel_keep(self, x: Tensor, sums: Tensor | None) -> Tensor:
        """Channel decisions (B, n_groups) from the input's per-sample sums (pooled here when None): one window-sum
        pass, then the masker's MLP and threshold in one launch."""
        n, c, h, w = x.shape
        if sums is None:
            sums = K.window_sums(nhwc(x).contiguous(), MAP_WINDOW)
        fc1 = self.masker_fc1
        return K.channel_masker(sums.view(n, c), h * w, fc1.weight, fc1.bias, self.masker_w2, self.masker_b2,
                                self._imposed((n, self.masker_w2.shape[0])))

    def _run(self, x: Tensor, sums: Tensor | None, emit: int | None) -> tuple[Tensor, Tensor | None]:
        if self.channel_kernels and self.maskers not in TORCH_MASKERS:
            return self._forward_channel_chained(x, sums, emit)
        return super()._run(x, sums, emit)

    def _forward_channel_chained(self, x: Tensor, sums: Tensor | None, emit: int | None) -> tuple[Tensor,
                                                                                               Tensor | None]:
        """Channel skipping with the masker on per-sample sums (no host sync unless `dense_above` < 1).

        `sums`: fp32 (B, 1, 1, C) sums of `x` made by the previous block, or None. With `emit` (the next block is a
        channel block too) the output's sums are returned: accumulated by the sparse path's last kernel, or one pass
        over the dense path's output.
        """
        keep = self._channel_keep(x, sums)
        self.last_rate = keep.float().mean()  # a 0-d device tensor
        if self._dense_now(self.last_rate):  # (syncs where dense_above < 1)
            out = self._forward_dense(x, keep).contiguous(memory_format=torch.channels_last)  # (no-op)
            return out, (K.window_sums(nhwc(out), MAP_WINDOW) if emit is not None else None)
        pool = None
        if emit is not None:
            pool = torch.zeros((x.shape[0], self.conv3.out_channels), dtype=torch.float32, device=x.device)
        out = self._forward_channel(x, keep, pool_out=pool)
        return out, (pool.view(x.shape[0], 1, 1, -1) if pool is not None else None)

    def _forward_channel(self, x: Tensor, keep: Tensor, pool_out: Tensor | None = None) -> Tensor:
        """Per-sample compacted channels: conv1 computes, conv2 reads and computes, conv3 reads active channels only
        (and adds each sample's output sums to `pool_out` when given)."""
        w1, w2, w3 = self._packed
        # kmax = width: no host synchronisation on the counts (each sample's loops stop at its own count).
        idx, counts = channel_ops.channel_index(keep, self.granularity, kmax=self.width)
        h1 = channel_ops.channel_conv1x1_out(nhwc(x), w1, self.conv1.bias, idx, counts)
        h2 = channel_ops.channel_conv3x3(h1, w2, self.conv2.bias, idx, counts, self.stride,
                                         group_size=self.granularity)
        s = self._shortcut_nhwc(x)  # the block input itself, or a fresh projection: written in place
        channel_ops.channel_conv1x1_in(h2, w3, self.conv3.bias, idx, counts, residual=s, out=s, pool_out=pool_out)
        return nchw(s)

    def _dense_masks(self, x: Tensor, keep: Tensor) -> dict[str, Tensor]:
        return {"channels": expand_channel_groups(keep.to(x.dtype), self.granularity)}

    def _forward_sparse(self, x: Tensor, keep: Tensor) -> Tensor:
        if self.channel_kernels:
            return self._forward_channel(x, keep)
        return self._forward_dense(x, keep)  # SE blocks: no sparse torch path


BLOCK_CLASSES: dict[str, type[DeployedBlock]] = {
    cls.paradigm: cls for cls in (StaticBlock, SpatialBlock, ChannelBlock, LayerBlock)
}


def deploy_block(block: DynamicBlock, dense_above: float = 1.0) -> DeployedBlock:
    """`block` in inference form: an instance of its paradigm's class in `BLOCK_CLASSES` (see `DeployedBlock`)."""
    cls = BLOCK_CLASSES.get(block.paradigm)
    if cls is None:
        raise ValueError(f"deploy has no block class for paradigm {block.paradigm!r}; it deploys "
                         f"{', '.join(BLOCK_CLASSES)}")
    return cls(block, dense_above)
