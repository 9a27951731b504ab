"""Per-stage geometry of the models the predictor knows (ResNet-50/101, RegNetY-400MF/800MF at 224x224 input).

Small tables instead of `nn.Module`s, so that a prediction needs neither torch nor the model code. A test checks them
against torchvision's `resnet50/101` and `regnet_y_400mf/800mf`.
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


def list_models() -> list[str]:
    return list(MODELS)


def get_geometry(name: str) -> ModelGeometry:
    """The geometry of a model by name (`resnet50`, `laud_resnet101`, `regnety_400mf`, `regnet_y_800mf`, ...)."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)} (and laud_ aliases)")
    return MODELS[key]
