"""Dynamic residual blocks: one mask-and-compute formulation for static, spatial, channel and layer skipping."""

from laudnet.blocks.base import PARADIGMS as PARADIGMS
from laudnet.blocks.base import DynamicBlock as DynamicBlock
from laudnet.blocks.bottleneck import DynamicBottleneck as DynamicBottleneck
from laudnet.blocks.regnet import DynamicRegNetBlock as DynamicRegNetBlock
