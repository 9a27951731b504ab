"""Geometry of the models the predictor knows: per-stage tables of the CNNs (ResNet-50/101, RegNetY-400MF/800MF) and
one row per ViT (DeiT-Ti/S, ViT-B/16), all at 224x224 input.

Small tables instead of `nn.Module`s, so that a prediction needs neither torch nor the model code. Tests check them
against torchvision's `resnet50/101` and `regnet_y_400mf/800mf` and against the LAUD-ViTs built on timm.
"""

from __future__ import annotations

from dataclasses import dataclass


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


def _resnet(name: str, depths: tuple[int, int, int, int]) -> ModelGeometry:
    widths = (64, 128, 256, 512)
    stages, cin = [], 64
    for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
        stages.append(StageGeometry(cin, 4 * w, w, d, 1 if i == 0 else 2, 56 >> i))
        cin = 4 * w
    return ModelGeometry(name, "resnet", 64, 7, tuple(stages))


def _regnety(name: str, widths: tuple[int, ...], depths: tuple[int, ...], group_width: int) -> ModelGeometry:
    # Bottleneck multiplier 1.0: the 3x3 conv runs at the stage width.
    stages, cin = [], 32
    for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
        stages.append(StageGeometry(cin, w, w, d, 2, 56 >> i, group_width=group_width, se=True))
        cin = w
    return ModelGeometry(name, "regnet", 32, 3, tuple(stages))


MODELS: dict[str, ModelGeometry] = {
    "resnet50": _resnet("resnet50", (3, 4, 6, 3)),
    "resnet101": _resnet("resnet101", (3, 4, 23, 3)),
    "regnety_400mf": _regnety("regnety_400mf", (48, 104, 208, 440), (1, 3, 6, 6), 8),
    "regnety_800mf": _regnety("regnety_800mf", (64, 144, 320, 784), (1, 3, 8, 2), 16),
}
_ALIASES = {
    "laud_resnet50": "resnet50", "laud_resnet101": "resnet101",
    "regnety004": "regnety_400mf", "regnety008": "regnety_800mf", "regnet_y_400mf": "regnety_400mf",
    "regnet_y_800mf": "regnety_800mf", "laud_regnety_400mf": "regnety_400mf", "laud_regnety_800mf": "regnety_800mf",
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


# timm's deit_tiny/small_patch16_224 and vit_base_patch16_224 (laudnet.models.vit.MODEL_CFGS).
VIT_MODELS: dict[str, ViTGeometry] = {
    "deit_tiny": ViTGeometry("deit_tiny", dim=192, heads=3, depth=12),
    "deit_small": ViTGeometry("deit_small", dim=384, heads=6, depth=12),
    "vit_base": ViTGeometry("vit_base", dim=768, heads=12, depth=12),
}
_VIT_ALIASES = {
    "laud_deit_tiny": "deit_tiny", "laud_deit_small": "deit_small", "laud_vit_base": "vit_base",
    "deit_tiny_patch16_224": "deit_tiny", "deit_small_patch16_224": "deit_small", "vit_base_patch16_224": "vit_base",
}


def _vit_key(name: str) -> str | None:
    key = name.lower()
    key = _VIT_ALIASES.get(key, key)
    return key if key in VIT_MODELS else None


def list_models() -> list[str]:
    """The CNNs (their geometry: `get_geometry`)."""
    return list(MODELS)


def list_vit_models() -> list[str]:
    """The ViTs (their geometry: `get_vit_geometry`)."""
    return list(VIT_MODELS)


def is_vit(name: str) -> bool:
    """Whether `name` is one of the ViTs (`deit_tiny`, `laud_deit_small`, `vit_base_patch16_224`, ...)."""
    return _vit_key(name) is not None


def get_vit_geometry(name: str) -> ViTGeometry:
    """The geometry of a ViT by name (`deit_tiny`, `laud_deit_small`, `vit_base`, timm names)."""
    key = _vit_key(name)
    if key is None:
        raise ValueError(f"unknown ViT {name!r}; known: {', '.join(VIT_MODELS)} (and laud_ aliases)")
    return VIT_MODELS[key]


def get_geometry(name: str) -> ModelGeometry:
    """The geometry of a CNN by name (`resnet50`, `laud_resnet101`, `regnety_400mf`, `regnet_y_800mf`, ...)."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in MODELS:
        if is_vit(name):
            raise ValueError(f"{name!r} is a ViT; this needs a CNN ({', '.join(MODELS)})")
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}, {', '.join(VIT_MODELS)} "
                         "(and laud_ aliases)")
    return MODELS[key]
