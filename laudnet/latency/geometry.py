"""Geometry of the models the predictor knows: per-stage tables of the CNNs (ResNet-50/101, RegNetY-400MF/800MF) and
one row per ViT (DeiT-Ti/S, ViT-B/16), all at 224x224 input.

Small tables instead of `nn.Module`s, so that a prediction needs neither torch nor the model code. They are derived
from the torch-free model table (`laudnet.model_table`: depths, widths, dim, heads), which also resolves the names;
tests check them against torchvision's `resnet50/101` and `regnet_y_400mf/800mf` and against the LAUD-ViTs built on
timm.
"""

from __future__ import annotations

from dataclasses import dataclass

from laudnet.model_table import MODEL_TABLE, ModelInfo, find_model_info


@dataclass(frozen=True)
class StageGeometry:
    """One residual stage.

    Args:
        in_channels: channels entering the stage's first block.
        out_channels: channels leaving every block of the stage.
        width: bottleneck width (conv2 channels) of every block.
        depth: number of blocks.
        stride: stride of the first block (on its 3x3 conv).
        size: output side of the stage at 224x224 input (56, 28, 14, 7).
        group_width: channels per group of the 3x3 conv (None: a dense 3x3).
        se: the block has squeeze-and-excitation (RegNetY).
    """

    in_channels: int
    out_channels: int
    width: int
    depth: int
    stride: int
    size: int
    group_width: int | None = None
    se: bool = False

    @property
    def groups(self) -> int:
        return 1 if self.group_width is None else self.width // self.group_width


@dataclass(frozen=True)
class BlockGeometry:
    """One residual block, resolved from its stage."""

    stage: int
    index: int  # within the stage
    in_channels: int
    out_channels: int
    width: int
    in_size: int  # side of the block input (conv1 runs at this resolution)
    stride: int
    groups: int
    se_squeeze: int  # SE hidden channels (0: no SE)
    projection: bool  # the identity goes through a 1x1 conv + BN

    @property
    def out_size(self) -> int:
        return self.in_size // self.stride


@dataclass(frozen=True)
class ModelGeometry:
    """A residual network: stem, stages, head."""

    name: str
    family: str  # "resnet" or "regnet"
    stem_channels: int
    stem_kernel: int  # ResNet: 7x7 stride 2 + 3x3 max-pool stride 2; RegNet: 3x3 stride 2
    stages: tuple[StageGeometry, ...]
    num_classes: int = 1000

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def num_blocks(self) -> int:
        return sum(self.depths)

    def blocks(self) -> list[BlockGeometry]:
        """Every residual block in order, with its input size and SE squeeze (round(0.25 * block input channels))."""
        out: list[BlockGeometry] = []
        for si, st in enumerate(self.stages):
            for bi in range(st.depth):
                cin = st.in_channels if bi == 0 else st.out_channels
                stride = st.stride if bi == 0 else 1
                out.append(BlockGeometry(
                    stage=si, index=bi, in_channels=cin, out_channels=st.out_channels, width=st.width,
                    in_size=st.size * stride, stride=stride, groups=st.groups,
                    se_squeeze=int(round(0.25 * cin)) if st.se else 0,
                    projection=bi == 0 and (stride != 1 or cin != st.out_channels)))
        return out


def _resnet(info: ModelInfo) -> ModelGeometry:
    stages, cin = [], info.stem_width
    for i, (out, w, d) in enumerate(zip(info.widths, info.bottleneck_widths, info.depths, strict=True)):
        stages.append(StageGeometry(cin, out, w, d, 1 if i == 0 else 2, 56 >> i))
        cin = out
    return ModelGeometry(info.arch, "resnet", info.stem_width, 7, tuple(stages))


def _regnety(info: ModelInfo) -> ModelGeometry:
    stages, cin = [], info.stem_width
    for i, (out, w, d) in enumerate(zip(info.widths, info.bottleneck_widths, info.depths, strict=True)):
        stages.append(StageGeometry(cin, out, w, d, 2, 56 >> i, group_width=info.group_width, se=True))
        cin = out
    return ModelGeometry(info.arch, "regnet", info.stem_width, 3, tuple(stages))


_CNN_GEOMETRY = {"resnet": _resnet, "regnet": _regnety}
# Keyed by the table's arch names; every name and alias of the model table resolves (`find_model_info`).
MODELS: dict[str, ModelGeometry] = {
    info.arch: _CNN_GEOMETRY[info.family](info) for info in MODEL_TABLE.values() if not info.is_vit
}


@dataclass(frozen=True)
class ViTGeometry:
    """A plain class-token ViT (timm `VisionTransformer`, pre-norm blocks).

    Args:
        name: table key (`deit_tiny`, `deit_small`, `vit_base`).
        dim: embedding width.
        heads: attention heads per block.
        depth: number of blocks.
        patch: patch side of the patch embedding (a `patch x patch` stride-`patch` conv).
        img_size: input side.
        mlp_ratio: MLP hidden width over `dim`.
        num_classes: classifier outputs.
    """

    name: str
    dim: int
    heads: int
    depth: int
    patch: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    family: str = "vit"

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch

    @property
    def tokens(self) -> int:
        """Tokens entering every block: the patches plus the class token."""
        return self.grid**2 + 1

    @property
    def hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def num_blocks(self) -> int:
        return self.depth

    @property
    def depths(self) -> tuple[int, ...]:
        return (self.depth,)


VIT_MODELS: dict[str, ViTGeometry] = {
    info.arch: ViTGeometry(info.arch, dim=info.dim, heads=info.heads, depth=info.depth, patch=info.patch_size,
                           img_size=info.img_size)
    for info in MODEL_TABLE.values() if info.is_vit
}


def _vit_key(name: str) -> str | None:
    info = find_model_info(name)
    return info.arch if info is not None and info.is_vit and info.arch in VIT_MODELS else None


def list_models() -> list[str]:
    """The CNNs (their geometry: `get_geometry`)."""
    return list(MODELS)


def list_vit_models() -> list[str]:
    """The ViTs (their geometry: `get_vit_geometry`)."""
    return list(VIT_MODELS)


def is_vit(name: str) -> bool:
    """Whether `name` is one of the ViTs (`deit_tiny`, `laud_deit_small`, `vit_base_patch16_224`, ...): its family in
    `laudnet.model_table`, never a guess from the name."""
    return _vit_key(name) is not None


def get_vit_geometry(name: str) -> ViTGeometry:
    """The geometry of a ViT by name (`deit_tiny`, `laud_deit_small`, `vit_base`, timm names)."""
    key = _vit_key(name)
    if key is None:
        raise ValueError(f"unknown ViT {name!r}; known: {', '.join(VIT_MODELS)} (and laud_ aliases)")
    return VIT_MODELS[key]


def get_geometry(name: str) -> ModelGeometry:
    """The geometry of a CNN by name (`resnet50`, `laud_resnet101`, `regnety_400mf`, `regnet_y_800mf`, ...)."""
    info = find_model_info(name)
    key = info.arch if info is not None else None
    if key not in MODELS:
        if is_vit(name):
            raise ValueError(f"{name!r} is a ViT; this needs a CNN ({', '.join(MODELS)})")
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}, {', '.join(VIT_MODELS)} "
                         "(and laud_ aliases)")
    return MODELS[key]
