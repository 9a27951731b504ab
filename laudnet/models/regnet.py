"""LAUD-RegNetY: torchvision's RegNetY-400MF/800MF with dynamic blocks (LAUDNet, Han et al., TPAMI 2024).

Built from torchvision's own RegNet (stem, `trunk_output.blockN.blockN-k`, avgpool, fc), whose blocks become dynamic
blocks, so architecture and state-dict keys are torchvision's exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torchvision
from torch import Tensor, nn

from laudnet.blocks.regnet import DynamicRegNetBlock
from laudnet.flops import conv_flops, conv_out_size, linear_flops, pool_flops
from laudnet.model_table import MODEL_TABLE
from laudnet.models._base import DynamicModel, dynamic_stage
from laudnet.models._registry import register_model
from laudnet.paradigms import stage_granularity


@dataclass(frozen=True)
class RegNetCfg:
    """Architecture table entry: the torchvision builder that holds the design-space parameters."""

    builder: Callable[..., nn.Module]


MODEL_CFGS = {info.arch: RegNetCfg(builder=getattr(torchvision.models, info.origin))
              for info in MODEL_TABLE.values() if info.family == "regnet"}


class LaudRegNet(DynamicModel):
    """RegNetY with dynamic blocks.

    Args:
        cfg: which torchvision RegNetY.
        paradigm: ``static``, ``spatial``, ``channel`` or ``layer``.
        granularity: per-stage S or G (see `laudnet.create_model`).
        num_classes: classifier outputs.
        masker_reduction: hidden-width reduction of the channel maskers' MLP.
        masker_norm: normalise each masker's input (see `laudnet.masks`); False gives the paper's maskers.
    """

    def __init__(
        self,
        cfg: RegNetCfg,
        *,
        paradigm: str = "layer",
        granularity=None,
        num_classes: int = 1000,
        masker_reduction: int = 16,
        masker_norm: bool = True,
    ) -> None:
        super().__init__()
        grans = stage_granularity(paradigm, granularity)
        self.paradigm = paradigm
        self.granularity = grans
        tv = cfg.builder(weights=None, num_classes=num_classes)
        self.stem = tv.stem
        trunk = nn.Sequential()
        for i, ((stage_name, stage), gran) in enumerate(zip(tv.trunk_output.named_children(), grans, strict=True)):
            trunk.add_module(stage_name, dynamic_stage(stage, DynamicRegNetBlock, paradigm, gran, i,
                                                       masker_reduction=masker_reduction, masker_norm=masker_norm))
        self.trunk_output = trunk
        self.avgpool, self.fc = tv.avgpool, tv.fc

    def stages(self) -> list[nn.Sequential]:
        return list(self.trunk_output)

    def _stem_flops(self, hw: tuple[int, int]) -> tuple[float, tuple[int, int]]:
        conv = self.stem[0]
        hw = (conv_out_size(hw[0], 2), conv_out_size(hw[1], 2))
        return conv_flops(conv.in_channels, conv.out_channels, 3, hw), hw

    def _head_flops(self, channels: int, hw: tuple[int, int]) -> float:
        return pool_flops(channels, hw) + linear_flops(self.fc.in_features, self.fc.out_features)

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.trunk_output(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(x).flatten(1))


def _create_regnet(variant: str, **kwargs) -> LaudRegNet:
    return LaudRegNet(MODEL_CFGS[variant], **kwargs)


@register_model
def laud_regnety_400mf(**kwargs) -> LaudRegNet:
    """LAUD-RegNetY-400MF: torchvision `regnet_y_400mf` with dynamic blocks."""
    return _create_regnet("regnety_400mf", **kwargs)


@register_model
def laud_regnety_800mf(**kwargs) -> LaudRegNet:
    """LAUD-RegNetY-800MF: torchvision `regnet_y_800mf` with dynamic blocks."""
    return _create_regnet("regnety_800mf", **kwargs)
