"""The architecture facts of laudnet's models: one row per registered model (what timm calls a default config).

Torch-free, so that the latency predictor reads the same facts as the models without importing torch. The rows are
the one source of truth for a model's family, stage depths and widths (CNNs), embedding width, heads and depth
(ViTs), and which constructor options it takes: `laudnet.models.register_model` attaches each row to its builder, the
family modules build their configs from it, the latency geometry is derived from it, and training and the CLI ask it
whether a model takes ``img_size`` instead of guessing from the name. Tests check every row against the built model.

    >>> from laudnet.model_table import get_model_info
    >>> get_model_info("laud_resnet50").depths
    (3, 4, 6, 3)
    >>> get_model_info("deit_small_patch16_224").family   # aliases (short and torchvision/timm names) resolve too
    'vit'
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("resnet", "regnet", "vit")

# Constructor options (besides paradigm, granularity and num_classes) of each family's builder.
CNN_OPTIONS = ("masker_reduction", "masker_norm")
VIT_OPTIONS = ("img_size", "token_keep_ratio")


@dataclass(frozen=True)
class ModelInfo:
    """One model's architecture facts.

    Args:
        name: the registered name (``laud_resnet50``).
        family: ``resnet``, ``regnet`` or ``vit``.
        arch: the family's table key (``resnet50``, ``regnety_400mf``, ``deit_small``).
        origin: the torchvision builder (CNNs) or timm model (ViTs) it is built from.
        depths: blocks per stage (a ViT: one stage of ``depth`` blocks).
        widths: channels each stage outputs (CNNs; empty for ViTs).
        bottleneck_widths: channels of each stage's 3x3 conv (CNNs; empty for ViTs).
        group_width: channels per group of the 3x3 conv (RegNetY; None: a dense 3x3).
        stem_width: channels out of the stem (CNNs).
        dim: embedding width (ViTs).
        heads: attention heads per block (ViTs).
        patch_size: patch side of the patch embedding (ViTs).
        img_size: the input side the model is built for by default (ViTs: the position embedding's).
        options: constructor keywords besides paradigm, granularity and num_classes.
        aliases: other names that resolve to this row (lower case): the arch key, torchvision/timm names.
    """

    name: str
    family: str
    arch: str
    origin: str
    depths: tuple[int, ...]
    widths: tuple[int, ...] = ()
    bottleneck_widths: tuple[int, ...] = ()
    group_width: int | None = None
    stem_width: int | None = None
    dim: int | None = None
    heads: int | None = None
    patch_size: int | None = None
    img_size: int = 224
    options: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model {self.name!r}: unknown family {self.family!r}; choose from {', '.join(FAMILIES)}")
        if self.is_vit:
            if self.dim is None or self.heads is None or self.patch_size is None or len(self.depths) != 1:
                raise ValueError(f"ViT {self.name!r} needs dim, heads, patch_size and one depth")
        elif not (len(self.depths) == len(self.widths) == len(self.bottleneck_widths)):
            raise ValueError(f"CNN {self.name!r} needs one depth, width and bottleneck width per stage")

    @property
    def is_vit(self) -> bool:
        """Whether the model is a ViT (its paradigms are token/head/layer combinations, not the CNN ones)."""
        return self.family == "vit"

    @property
    def depth(self) -> int:
        """Number of blocks (a ViT's depth; a CNN's residual blocks over all stages)."""
        return sum(self.depths)

    @property
    def takes_img_size(self) -> bool:
        """Whether the constructor takes ``img_size`` (a ViT's position embedding is built for one input size)."""
        return self.takes("img_size")

    def takes(self, option: str) -> bool:
        """Whether the constructor takes the keyword ``option`` (besides paradigm, granularity and num_classes)."""
        return option in self.options


def _resnet(name: str, depths: tuple[int, int, int, int], aliases: tuple[str, ...] = ()) -> ModelInfo:
    widths = (64, 128, 256, 512)  # torchvision's Bottleneck: expansion 4 after the 3x3 conv
    return ModelInfo(name=f"laud_{name}", family="resnet", arch=name, origin=name,
                     depths=depths, widths=tuple(4 * w for w in widths), bottleneck_widths=widths, stem_width=64,
                     options=CNN_OPTIONS, aliases=(name, *aliases))


def _regnety(name: str, depths: tuple[int, ...], widths: tuple[int, ...], group_width: int,
             aliases: tuple[str, ...] = ()) -> ModelInfo:
    # Bottleneck multiplier 1.0: the 3x3 conv runs at the stage width.
    tv_name = name.replace("regnety_", "regnet_y_")
    return ModelInfo(name=f"laud_{name}", family="regnet", arch=name, origin=tv_name,
                     depths=depths, widths=widths, bottleneck_widths=widths, group_width=group_width, stem_width=32,
                     options=CNN_OPTIONS, aliases=(name, tv_name, *aliases))


def _vit(name: str, timm_name: str, dim: int, heads: int, depth: int = 12, patch_size: int = 16) -> ModelInfo:
    return ModelInfo(name=f"laud_{name}", family="vit", arch=name, origin=timm_name, depths=(depth,),
                     dim=dim, heads=heads, patch_size=patch_size, options=VIT_OPTIONS,
                     aliases=(name, timm_name))


MODEL_TABLE: dict[str, ModelInfo] = {info.name: info for info in (
    _resnet("resnet50", (3, 4, 6, 3)),
    _resnet("resnet101", (3, 4, 23, 3)),
    _regnety("regnety_400mf", (1, 3, 6, 6), (48, 104, 208, 440), 8, aliases=("regnety004",)),
    _regnety("regnety_800mf", (1, 3, 8, 2), (64, 144, 320, 784), 16, aliases=("regnety008",)),
    _vit("deit_tiny", "deit_tiny_patch16_224", dim=192, heads=3),
    _vit("deit_small", "deit_small_patch16_224", dim=384, heads=6),
    _vit("vit_base", "vit_base_patch16_224", dim=768, heads=12),
)}

_BY_ALIAS = {alias: info for info in MODEL_TABLE.values() for alias in (info.name, *info.aliases)}


def find_model_info(name: str) -> ModelInfo | None:
    """The row of a model by its registered name or an alias (case-insensitive), or None."""
    return _BY_ALIAS.get(name.lower()) if isinstance(name, str) else None


def get_model_info(name: str) -> ModelInfo:
    """The row of a model by its registered name or an alias (case-insensitive).

    Raises:
        ValueError: an unknown name (the message lists the registered names).
    """
    info = find_model_info(name)
    if info is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_TABLE)}")
    return info
