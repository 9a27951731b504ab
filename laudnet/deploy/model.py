"""`deploy(model)`: a trained LAUD model in inference form (BN folded, hard masks, channels_last, low precision)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from laudnet.deploy.blocks import (
    COMPILE_SHAPES,
    MASKERS,
    TORCH_MASKERS,
    DeployedBlock,
    compiled_residual_branch,
    deploy_block,
)
from laudnet.deploy.fold import fold_conv_bn
from laudnet.deploy.graphs import GraphedModel
from laudnet.deploy.stem import TritonStemConv
from laudnet.deploy.vit import DeployedViT, deploy_vit
from laudnet.models._base import DynamicModel
from laudnet.models.regnet import LaudRegNet
from laudnet.models.resnet import LaudResNet
from laudnet.models.vit import LaudViT

STEMS = ("auto", "cudnn", "triton")


class DeployedModel(nn.Module):
    """Stem → deployed stages → pooling and classifier, computing in `dtype` with channels_last activations."""

    def __init__(self, stem: nn.Module, stages: list[list[DeployedBlock]], head: nn.Module, dtype: torch.dtype,
                 in_chans: int = 3) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)
        self.head = head
        self.dtype = dtype
        self.in_chans = in_chans

    def blocks(self) -> list[DeployedBlock]:
        return [b for stage in self.stages for b in stage]

    def forward_features(self, x: Tensor, *, block_inputs: list[Tensor] | None = None,
                         block_sums: list[Tensor | None] | None = None) -> Tensor:
        """Stem and blocks. Each block hands the next its masker's window sums (`DeployedBlock.forward_chained`).

        Args:
            x: input batch (B, in_chans, H, W).
            block_inputs: if given, a copy of every block's input is appended to it (for `tune_paths`).
            block_sums: if given, a copy of the window sums every block receives (or None) is appended to it.
        """
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected an input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        x = self.stem(x.to(dtype=self.dtype, memory_format=torch.channels_last))
        sums = None
        for block in self.blocks():
            if block_inputs is not None:
                block_inputs.append(x.clone())
            if block_sums is not None:
                block_sums.append(sums.clone() if sums is not None else None)
            x, sums = block.forward_chained(x, sums)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))

    def graphed(self, example: Tensor, *, conditional: bool = False) -> GraphedModel:
        """This model captured as one CUDA graph for inputs shaped like `example` (see `GraphedModel`); with
        `conditional`, each spatially or layer skipping block's kernels in an IF node that skips them when no sample
        executes the block (`laudnet.deploy.graphs`)."""
        return GraphedModel(self, example, conditional=conditional)

    def activation_rates(self) -> list[float]:
        """Per-block activation rates of the last forward (synchronises with the device)."""
        return [float(b.last_rate) if b.last_rate is not None else 1.0 for b in self.blocks()]


class _Head(nn.Sequential):
    def forward(self, x: Tensor) -> Tensor:
        return self[1](torch.flatten(self[0](x), 1))


def _stem_and_head(model: DynamicModel, stem_kernel: str = "cudnn") -> tuple[nn.Module, nn.Module]:
    if isinstance(model, LaudResNet):
        conv, rest = fold_conv_bn(model.conv1, model.bn1), [copy.deepcopy(model.maxpool)]
    elif isinstance(model, LaudRegNet):
        conv, rest = fold_conv_bn(model.stem[0], model.stem[1]), []
    else:
        raise TypeError(f"deploy supports LAUD ResNet and RegNet models, got {type(model).__name__}")
    first = [TritonStemConv(conv)] if stem_kernel == "triton" else [conv, nn.ReLU(inplace=True)]
    return nn.Sequential(*first, *rest), _Head(copy.deepcopy(model.avgpool), copy.deepcopy(model.fc))


def deploy(
    model: DynamicModel,
    dtype: torch.dtype = torch.bfloat16,
    *,
    dense_above: float | list[float] = 1.0,
    device: torch.device | str | None = None,
    compile: bool | str = False,
    spatial_conv1: str = "dense",
    maskers: str = "fused",
    stem: str = "auto",
) -> DeployedModel | DeployedViT:
    """Turn a trained LAUD model into an inference module; the model itself is left unchanged.

    A LAUD-ViT goes to `laudnet.deploy.vit.deploy_vit` (token, head and layer skipping in batched PyTorch).

    Args:
        model: a LAUD model (any paradigm).
        dtype: compute dtype (bf16 on GPU; fp32 for exact comparisons).
        dense_above: activation rate above which a block runs its dense-masked path: one value, or one per block.
        device: where the deployed model lives (default: the model's device).
        compile: compile the stem and head (`torch.compile`), and run the dense parts of blocks (static blocks,
            dense-masked paths) through one compiled function: True or ``"dynamic"`` with symbolic sizes,
            ``"static"`` specialised to each shape signature (`compiled_residual_branch`). Compilation happens at the
            first call (also the warm-up of `graphed`).
        spatial_conv1: ``dense`` (default) or ``sparse``: how spatially skipping ResNet blocks compute conv1 — on
            every pixel (fused Triton 1×1 conv, no index building) or on the dilated active region only.
        maskers: masker bookkeeping of spatially and layer skipping ResNet blocks (the fused patch paths):
            ``fused`` (default) — each block's output kernel also accumulates the next block's masker window sums
            (no block re-reads its input to pool it) and one Triton kernel pair makes the decisions and index
            lists; ``kernel`` — the same decision kernels, but each block pools its own input (one Triton pass);
            ``torch`` — the previous path (torch pooling, GEMV and list building, ~10 launches per block);
            ``reduce`` — ``torch`` with the spatial and channel maskers written as reductions for a network compiled
            whole (`deploy_dense_masked`'s default). All compute the same function (up to float summation order).
            Channel maskers: ``torch`` and ``reduce`` run PyTorch's mean, MLP and compare; the others one window-sum
            pass and one Triton launch for the MLP and threshold (`laudnet.kernels.channel_masker`). Other maskers
            always use torch.
        stem: the stem's convolution + ReLU: ``triton`` (one kernel, `laudnet.kernels.stem_conv`; a custom op that
            `torch.compile` keeps), ``cudnn`` (PyTorch's conv, fused by `torch.compile` when `compile`) or ``auto``
            (default: ``triton`` when deployed on a CUDA device, ``cudnn`` elsewhere; chosen by measurement, see the
            README): cuDNN pads the 3 input channels and runs a generic kernel, the Triton stem reads them as they are.

    Returns:
        A `DeployedModel` in eval mode computing the eval-mode function of `model`.
    """
    if not isinstance(model, DynamicModel):
        raise TypeError(f"deploy expects a LAUD model, got {type(model).__name__}")
    if isinstance(model, LaudViT):
        cnn_options = dense_above != 1.0 or compile or spatial_conv1 != "dense" or maskers != "fused"
        if cnn_options or stem not in ("auto", "cudnn"):
            raise ValueError("dense_above, compile, spatial_conv1, maskers and stem are CNN options "
                             "(for a ViT: deploy_vit)")
        return deploy_vit(model, dtype, device=device)
    if compile is True:
        compile = "dynamic"
    if compile is not False and compile not in COMPILE_SHAPES:
        raise ValueError(f"compile must be True, False or one of {COMPILE_SHAPES}, got {compile!r}")
    blocks = model.dynamic_blocks()
    thresholds = [dense_above] * len(blocks) if isinstance(dense_above, int | float) else list(dense_above)
    if len(thresholds) != len(blocks):
        raise ValueError(f"dense_above has {len(thresholds)} values for {len(blocks)} blocks")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    device = device if device is not None else next(model.parameters()).device
    if stem == "auto":
        stem = "triton" if torch.device(device).type == "cuda" else "cudnn"
    stem_module, head = _stem_and_head(model, stem)
    it = iter(thresholds)
    stages = [[deploy_block(b, next(it)) for b in stage] for stage in model.stages()]
    deployed = DeployedModel(stem_module, stages, head, dtype, model.in_chans)
    # Masker weights stay fp32 (buffers and the channel masker's fc1): decisions must not flip with rounding.
    deployed = deployed.to(device=device).eval()
    for m in deployed.modules():
        if isinstance(m, nn.Conv2d | nn.Linear) and not _is_masker(deployed, m):
            m.to(dtype=dtype, memory_format=torch.channels_last) if isinstance(m, nn.Conv2d) else m.to(dtype)
        elif isinstance(m, TritonStemConv):
            m.to(dtype)
    if spatial_conv1 not in ("dense", "sparse"):
        raise ValueError(f"spatial_conv1 must be 'dense' or 'sparse', got {spatial_conv1!r}")
    if maskers not in MASKERS:
        raise ValueError(f"maskers must be one of {MASKERS}, got {maskers!r}")
    chain = deployed.blocks()
    for b in chain:
        b.spatial_conv1 = spatial_conv1
        b.maskers = maskers
        b.prepare()
        if compile:
            b.branch_fn = compiled_residual_branch(compile)
    if maskers == "fused":  # each block produces the window sums its successor's masker reads
        for b, nxt in zip(chain, chain[1:], strict=False):
            chained = (b.fusable and nxt.fusable) or (b.channel_kernels and nxt.channel_kernels)
            b.emit_window = nxt.in_window if chained else None
    if compile:
        # The stem's conv, ReLU and max-pool and the head are a noticeable share of a fast sparse network in eager
        # mode; Inductor fuses their pointwise work.
        deployed.stem = torch.compile(deployed.stem)
        deployed.head = torch.compile(deployed.head)
    return deployed


def deploy_dense_masked(model: DynamicModel, dtype: torch.dtype = torch.bfloat16, *,
                        device: torch.device | str | None = None, stem: str = "auto",
                        maskers: str = "reduce") -> DeployedModel | DeployedViT:
    """The model deployed with every block on its dense-masked path: the same function as `deploy`, without
    data-dependent shapes or custom kernels (but the custom op of ``stem="triton"``), so that the whole network
    traces as one graph.

    CNN blocks run every conv dense with PyTorch maskers and the decisions as masks; ViT blocks compute every token,
    head and sub-block, dropped tokens masked out as keys and the skipped outputs not added. Compile it whole
    (``torch.compile(deployed, dynamic=False)``) where skipping does not pay at the batch size at hand: it costs the
    static network plus the maskers and the masks (fused by Inductor), the form to fall back on when the sparse
    paths are slower than the static network compiled whole (`laudnet.deploy.deploy_fastest` measures both).

    CNN maskers are PyTorch ops: ``reduce`` (default; the spatial and channel maskers as reductions that Inductor
    fuses, no GEMM launch per masker) or ``torch`` (pooling, then the maskers' small GEMMs; see `deploy`).
    """
    if isinstance(model, LaudViT):
        if stem not in ("auto", "cudnn"):
            raise ValueError("stem is a CNN option (a ViT embeds patches with one GEMM)")
        deployed = deploy_vit(model, dtype, device=device)
        for block in deployed.blocks:
            block.path = "dense"
        return deployed
    if maskers not in TORCH_MASKERS:
        raise ValueError(f"a dense-masked network's maskers are one of {TORCH_MASKERS}, got {maskers!r}")
    deployed = deploy(model, dtype, device=device, maskers=maskers, stem=stem)
    for b in deployed.blocks():
        b.path = "dense"
    return deployed


def _is_masker(deployed: DeployedModel, module: nn.Module) -> bool:
    return any(getattr(b, "masker_fc1", None) is module for b in deployed.blocks())
