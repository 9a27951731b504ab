"""Dynamic residual blocks: one mask-and-compute formulation for static, spatial, channel and layer skipping."""

from laudnet.blocks.base import DynamicBlock as DynamicBlock
from laudnet.blocks.bottleneck import DynamicBottleneck as DynamicBottleneck
from laudnet.blocks.regnet import DynamicRegNetBlock as DynamicRegNetBlock
from laudnet.paradigms import CNN_PARADIGMS as PARADIGMS  # noqa: F401 (the public name of the CNN paradigms)
