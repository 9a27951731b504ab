"""Dynamic RegNetY block (torchvision's `ResBottleneckBlock`: 1×1 → grouped 3×3 → SE → 1×1).

The block keeps torchvision's module tree (``proj``, ``f.a``, ``f.b``, ``f.se``, ``f.c``, ``activation``), so
torchvision state dicts load unchanged. Unlike the official code, layer skipping is supported and a spatially
masked block's SE pools over the active pixels only (the official SE is dense in training, which a sparse network
cannot compute).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.regnet import ResBottleneckBlock

from laudnet.blocks.base import DynamicBlock


class DynamicRegNetBlock(DynamicBlock):
    """RegNetY block with static, spatial, channel or layer skipping.

    Args:
        block: the torchvision ResBottleneckBlock whose layers this block takes over.
        paradigm: ``static``, ``spatial``, ``channel`` or ``layer``.
        granularity: patch size S (spatial) or channel group size G (channel); None otherwise.
        masker_reduction: hidden-width reduction of the channel masker's MLP.
        masker_norm: normalise the masker's input (see `laudnet.masks`).
    """

    def __init__(
        self,
        block: ResBottleneckBlock,
        paradigm: str = "static",
        granularity: int | None = None,
        masker_reduction: int = 16,
        masker_norm: bool = True,
    ) -> None:
        super().__init__()
        self.proj = block.proj
        self.f = block.f
        self.activation = block.activation
        conv_a, conv_b, conv_c = self.f.a[0], self.f.b[0], self.f.c[0]
        self.in_channels = conv_a.in_channels
        self.width = conv_a.out_channels
        self.out_channels = conv_c.out_channels
        self.stride = conv_b.stride[0]
        self.groups = conv_b.groups
        se = getattr(self.f, "se", None)
        self.se_channels = se.fc1.out_channels if se is not None else 0
        self._init_dynamic(paradigm, granularity, masker_reduction, masker_norm)

    @property
    def has_projection(self) -> bool:
        return self.proj is not None

    def conv_bn_pairs(self) -> dict[str, tuple[nn.Conv2d, nn.BatchNorm2d] | None]:
        """The (conv, BN) pairs that fold into biased convs at inference."""
        shortcut = (self.proj[0], self.proj[1]) if self.proj is not None else None
        return {"conv1": (self.f.a[0], self.f.a[1]), "conv2": (self.f.b[0], self.f.b[1]),
                "conv3": (self.f.c[0], self.f.c[1]), "shortcut": shortcut}

    def _conv1(self, x: Tensor) -> Tensor:
        return self.f.a(x)

    def _conv2(self, h: Tensor) -> Tensor:
        return self.f.b(h)

    def _se(self, h: Tensor) -> Tensor:
        return self.f.se(h) if self.se_channels else h

    def _conv3(self, h: Tensor) -> Tensor:
        return self.f.c(h)

    def _shortcut(self, x: Tensor) -> Tensor:
        return x if self.proj is None else self.proj(x)

    def _act(self, x: Tensor) -> Tensor:
        return self.activation(x)
