"""LAUD CNNs as detection backbones: a feature body over the four stages with torchvision's FPN on top (LAUDNet, Han
et al., TPAMI 2024, dense-prediction experiments; the layout of torchvision's ``resnet_fpn_backbone``).

The reference detection recipe (MMDetection, ``frozen_stages=1``, ``norm_eval=True``) is the default here:

- every BatchNorm of the network becomes a ``torchvision.ops.FrozenBatchNorm2d`` (statistics and affine parameters
  fixed), as torchvision's detection backbones do;
- the stem and stage 1 are frozen, their maskers included (``trainable_layers=3``: stages 2-4 train), and stay in eval
  mode, so stage 1 takes deterministic decisions;
- the maskers' input normalisations (`laudnet.masks`) keep the statistics of the checkpoint (eval mode) unless
  ``freeze_masker_norm=False``: detection batches hold a few images, too few for the batch statistics of a layer or
  channel masker (one value per image and channel);
- the Gumbel temperature is fixed at 0.1 (the official detection backbones' ``temperature_0``).

Images of any size and aspect ratio work: spatial mask grids are ⌈H/S⌉×⌈W/S⌉ cells of each block's real (non-square)
output map, border cells pool over the partial patch (`laudnet.masks.pool_patches`). No padding is added beyond what
torchvision's detection transform adds (each batch padded to a multiple of 32).

The body keeps the classification model's module names (``conv1``, ``layer1`` ... for ResNet; ``stem``,
``trunk_output`` for RegNetY), so its state dict is the classification checkpoint's minus the classifier, and for
ResNet the same as torchvision's ``BackboneWithFPN`` body (``backbone.body.layer1.0.conv1.weight`` ...), maskers apart.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

from laudnet.info import DynamicInfo, dynamic_blocks
from laudnet.masks import _Masker
from laudnet.model_table import MODEL_TABLE
from laudnet.models import create_model
from laudnet.models._base import DynamicModel

# The LAUD CNNs (four stages of residual blocks; the ViTs have no feature pyramid), from the model table.
BACKBONES = tuple(name for name, info in MODEL_TABLE.items() if not info.is_vit)
# The official detection backbones' fixed Gumbel temperature (``temperature_0``).
DETECTION_TEMPERATURE = 0.1


def check_backbone_name(name: str) -> str:
    """``name`` if it is a detection backbone, else a one-line ValueError listing them."""
    if name not in BACKBONES:
        raise ValueError(f"unknown detection backbone {name!r}; choose from: {', '.join(BACKBONES)}")
    return name


class LaudBackboneBody(DynamicModel):
    """The stem and the four stages of a LAUD CNN, returning the chosen stages' outputs (torchvision's
    ``IntermediateLayerGetter`` contract: an OrderedDict ``{"0": C_a, "1": C_b, ...}`` in stage order).

    It is a `DynamicModel` without a head, so `dense_flops`, `dynamic_flops`, `collect_info`, `set_temperature`
    and `laudnet.model_flops` give the backbone's own numbers (stem and blocks, maskers included; no FPN, no heads).

    Args:
        model: a LAUD ResNet or RegNetY; its stem and stages are taken over (the classifier is dropped).
        returned_layers: stages (1-4) whose outputs are returned (all four stages run, so that every block has a
            record of the last forward).
        trainable_layers: stages trained, counted from the last (0-4); 5 also trains the stem.
        freeze_masker_norm: keep the maskers' input normalisations in eval mode (see the module docstring).
    """

    def __init__(
        self,
        model: DynamicModel,
        returned_layers: Sequence[int] = (1, 2, 3, 4),
        trainable_layers: int = 3,
        freeze_masker_norm: bool = True,
    ) -> None:
        super().__init__()
        stages = model.stages()
        if len(stages) != 4:
            raise ValueError(f"{type(model).__name__} has {len(stages)} stages; a detection backbone needs 4")
        returned = sorted(set(returned_layers))
        if not returned or any(k not in (1, 2, 3, 4) for k in returned):
            raise ValueError(f"returned_layers must be stages among 1, 2, 3, 4, got {list(returned_layers)}")
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
        self.paradigm, self.granularity, self.in_chans = model.paradigm, model.granularity, model.in_chans
        # `create_model`'s arguments of the classification model (None if it was built otherwise): what
        # `laudnet.detection.deploy_backbone` rebuilds to deploy the body through `laudnet.deploy`.
        self.model_args = dict(model.model_args) if getattr(model, "model_args", None) else None
        # The model class's stem FLOPs apply to the body, which keeps the stem's attribute names.
        self._stem_flops_of = type(model)._stem_flops
        stage_ids = {id(s) for s in stages}
        paths = {id(m): name for name, m in model.named_modules() if id(m) in stage_ids}
        self._stage_paths = [paths[id(s)] for s in stages]
        self._stem_names: list[str] = []
        last_top = self._stage_paths[-1].split(".")[0]
        for name, child in model.named_children():  # registration order = forward order (as IntermediateLayerGetter)
            self.add_module(name, child)
            if any(p.split(".")[0] == name for p in self._stage_paths):
                if name == last_top:
                    break
            else:
                self._stem_names.append(name)
        self.returned_layers = returned
        self.out_channels_list = [stages[k - 1][-1].out_channels for k in returned]
        self.trainable_layers = trainable_layers
        self.freeze_masker_norm = freeze_masker_norm
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train()

    def stages(self) -> list[nn.Sequential]:
        return [self.get_submodule(p) for p in self._stage_paths]

    def _stem_flops(self, hw: tuple[int, int]) -> tuple[float, tuple[int, int]]:
        return self._stem_flops_of(self, hw)

    def _head_flops(self, channels: int, hw: tuple[int, int]) -> float:
        return 0.0  # no classifier: the backbone's FLOPs are the stem's and the blocks'

    def _frozen_modules(self) -> list[nn.Module]:
        stem = [getattr(self, n) for n in self._stem_names]
        stages = self.stages()
        n_frozen = 4 - min(self.trainable_layers, 4)
        return (stem if self.trainable_layers < 5 else []) + stages[:n_frozen]

    def train(self, mode: bool = True) -> LaudBackboneBody:
        """Training mode for the trained stages; frozen stages (and, by default, the maskers' input normalisations)
        stay in eval mode."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        if self.freeze_masker_norm:
            for m in self.modules():
                if isinstance(m, _Masker) and getattr(m, "norm", None) is not None:
                    m.norm.eval()
        return self

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        self._check_input(x)
        for name in self._stem_names:
            x = getattr(self, name)(x)
        out: OrderedDict[str, Tensor] = OrderedDict()
        for k, stage in enumerate(self.stages(), start=1):
            x = stage(x)
            if k in self.returned_layers:
                out[str(len(out))] = x
        return out


class LaudBackboneWithFPN(nn.Module):
    """A `LaudBackboneBody` with a torchvision `FeaturePyramidNetwork` on top; the layout of torchvision's
    ``BackboneWithFPN`` (``body``, ``fpn``, ``out_channels``), which its detectors take as ``backbone``.

    Args:
        body: the feature body.
        out_channels: FPN channels.
        extra_blocks: extra FPN levels (default: a max-pooled level ``pool``, as Faster/Mask R-CNN use).
        norm_layer: FPN normalisation (None, as torchvision's ResNet-FPN).
    """

    def __init__(
        self,
        body: LaudBackboneBody,
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=body.out_channels_list,
            out_channels=out_channels,
            extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool(),
            norm_layer=norm_layer,
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.fpn(self.body(x))

    def collect_info(self) -> list[DynamicInfo]:
        """The `DynamicInfo` of every block of the last forward (batch masks, per-sample FLOPs), named as in the
        classification model (``layer2.0``)."""
        return self.body.collect_info()


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every affine ``BatchNorm2d`` under ``module`` by a ``FrozenBatchNorm2d`` holding its statistics and
    parameters, in place; the maskers' input normalisations (no affine parameters) are left as they are."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and child.affine:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen.to(child.weight.device))
        else:
            freeze_batch_norm(child)
    return module


def load_backbone_init(model: DynamicModel, weights: Mapping[str, Tensor] | str | os.PathLike, name: str) -> str:
    """Load classification weights into the LAUD model ``name`` before it becomes a body, as ``laudnet train --init``
    does: a laudnet checkpoint (static or dynamic; its maskers load where this model has the same ones) or a
    torchvision state dict or weights file. The classifier loads only where its classes fit (it is dropped anyway).

    Returns:
        ``"laudnet"`` or ``"torchvision"``: what was loaded.

    Raises:
        ValueError: a checkpoint of another model, or weights of another architecture (one line naming the mismatch).
        FileNotFoundError: no such file.
    """
    from laudnet.train.loop import load_init, read_init_state

    if isinstance(weights, Mapping):
        state, kind, origin = dict(weights), "torchvision", "state dict"
    else:
        state, kind = read_init_state(weights, name)  # refuses a laudnet checkpoint of another model, naming both
        origin = os.fspath(weights)
    try:
        load_init(model, state)
    except ValueError as e:
        raise ValueError(f"{kind} weights {origin} do not fit the detection backbone {name}: {e}") from None
    return kind


def laud_fpn_backbone(
    backbone_name: str = "laud_resnet50",
    *,
    paradigm: str = "spatial",
    granularity: int | str | Sequence[int] | None = None,
    weights: Mapping[str, Tensor] | str | os.PathLike | None = None,
    trainable_layers: int = 3,
    returned_layers: Sequence[int] | None = None,
    extra_blocks: ExtraFPNBlock | None = None,
    out_channels: int = 256,
    frozen_bn: bool = True,
    freeze_masker_norm: bool = True,
    temperature: float = DETECTION_TEMPERATURE,
    masker_norm: bool = True,
) -> LaudBackboneWithFPN:
    """A LAUD CNN with an FPN, ready for torchvision's detectors (the LAUD counterpart of ``resnet_fpn_backbone``).

    Args:
        backbone_name: one of `BACKBONES`.
        paradigm: ``static``, ``spatial``, ``channel`` or ``layer``.
        granularity: per-stage S or G (see `laudnet.create_model`; None: the paradigm's default).
        weights: a laudnet classification checkpoint, a torchvision weights file or a state dict (None: random init).
        trainable_layers: stages trained, counted from the last (3: stem and stage 1 frozen, the reference recipe).
        returned_layers: stages given to the FPN (default all four).
        extra_blocks: extra FPN levels (default: max-pooled ``pool`` level).
        out_channels: FPN channels.
        frozen_bn: convert every BatchNorm to ``FrozenBatchNorm2d`` (off: plain BN, as torchvision's v2 detectors).
        freeze_masker_norm: keep the maskers' input normalisations in eval mode.
        temperature: Gumbel temperature of every masker.
        masker_norm: build maskers with input normalisation (False: the paper's maskers).
    """
    check_backbone_name(backbone_name)
    model = create_model(backbone_name, paradigm=paradigm, granularity=granularity, masker_norm=masker_norm)
    if weights is not None:
        load_backbone_init(model, weights, backbone_name)
    body = LaudBackboneBody(model, returned_layers or (1, 2, 3, 4), trainable_layers, freeze_masker_norm)
    if frozen_bn:
        freeze_batch_norm(body)
    body.set_temperature(temperature)
    return LaudBackboneWithFPN(body, out_channels, extra_blocks)


def image_masks(
    body: LaudBackboneBody, image_sizes: Sequence[tuple[int, int]] | None = None
) -> list[dict[str, dict[str, Tensor]]]:
    """The masks of the last forward, one dict per image: ``{block name: {kind: mask}}``, cropped to the image.

    Detection batches pad every image to a common size (bottom and right); a mask cell or pixel that covers only
    padding is cropped away, so each image's masks cover its own extent (``patch`` (1, gh, gw) cells of S×S output
    pixels, ``pixel`` (1, Ho, Wo), ``conv1`` (1, H, W); ``channel`` (n_groups,) and layer masks are not spatial).

    Args:
        body: the backbone body that ran the forward.
        image_sizes: each image's (height, width) inside the batch (torchvision's ``ImageList.image_sizes``); None
            keeps the whole batch extent.
    """
    infos = body.collect_info()
    grans = {name: getattr(block, "granularity", None) for name, block in dynamic_blocks(body)}
    batch_hw = body._last_hw
    n = len(infos[0].flops) if infos else 0
    sizes = list(image_sizes) if image_sizes is not None else [batch_hw] * n
    if len(sizes) != n:
        raise ValueError(f"{len(sizes)} image sizes for a batch of {n} images")
    out: list[dict[str, dict[str, Tensor]]] = []
    for i, (h, w) in enumerate(sizes):
        per_block = {}
        for info in infos:
            masks = {}
            for kind, mask in info.masks.items():
                m = mask[i]
                if m.dim() == 3 and m.shape[-2:] != (1, 1):
                    if kind == "patch":  # cells of S×S pixels of the block output
                        ho, wo = info.masks["pixel"].shape[-2:]
                        s = grans[info.name]
                        rows, cols = math.ceil(h * ho / batch_hw[0]), math.ceil(w * wo / batch_hw[1])
                        m = m[:, : math.ceil(rows / s), : math.ceil(cols / s)]
                    else:
                        rows = math.ceil(h * m.shape[-2] / batch_hw[0])
                        m = m[:, :rows, : math.ceil(w * m.shape[-1] / batch_hw[1])]
                masks[kind] = m
            per_block[info.name] = masks
        out.append(per_block)
    return out
