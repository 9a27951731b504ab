"""Dynamic ResNet bottleneck (torchvision's v1.5 layout: stride on the 3×3 conv).

The block takes over the layers of a torchvision `Bottleneck`, keeping their attribute names (conv1, bn1, conv2,
bn2, conv3, bn3, relu, downsample), so torchvision state dicts load unchanged; the masker is the only new parameter.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from laudnet.blocks.base import DynamicBlock


class DynamicBottleneck(DynamicBlock):
    """ResNet bottleneck with static, spatial, channel or layer skipping.

    Args:
        block: the torchvision Bottleneck whose layers this block takes over.
        paradigm: ``static``, ``spatial``, ``channel`` or ``layer``.
        granularity: patch size S (spatial) or channel group size G (channel); None otherwise.
        masker_reduction: hidden-width reduction of the channel masker's MLP.
        masker_norm: normalise the masker's input (see `laudnet.masks`).
    """

    def __init__(
        self,
        block: Bottleneck,
        paradigm: str = "static",
        granularity: int | None = None,
        masker_reduction: int = 16,
        masker_norm: bool = True,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.conv3, self.bn3 = block.conv3, block.bn3
        self.relu = block.relu
        self.downsample = block.downsample
        self.in_channels = block.conv1.in_channels
        self.width = block.conv1.out_channels
        self.out_channels = block.conv3.out_channels
        self.stride = block.conv2.stride[0]
        self.groups = block.conv2.groups
        self.se_channels = 0
        self._init_dynamic(paradigm, granularity, masker_reduction, masker_norm)

    @property
    def has_projection(self) -> bool:
        return self.downsample is not None

    def conv_bn_pairs(self) -> dict[str, tuple[nn.Conv2d, nn.BatchNorm2d] | None]:
        """The (conv, BN) pairs that fold into biased convs at inference."""
        shortcut = (self.downsample[0], self.downsample[1]) if self.downsample is not None else None
        return {"conv1": (self.conv1, self.bn1), "conv2": (self.conv2, self.bn2), "conv3": (self.conv3, self.bn3),
                "shortcut": shortcut}

    def _conv1(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def _conv2(self, h: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(h)))

    def _conv3(self, h: Tensor) -> Tensor:
        return self.bn3(self.conv3(h))

    def _shortcut(self, x: Tensor) -> Tensor:
        return x if self.downsample is None else self.downsample(x)

    def _act(self, x: Tensor) -> Tensor:
        return self.relu(x)
