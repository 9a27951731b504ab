"""LAUD-ResNet: torchvision's ResNet-50/101 with dynamic bottlenecks (LAUDNet, Han et al., TPAMI 2024).

The model is built from torchvision's own ResNet, whose layers the dynamic blocks take over, so the architecture and
state-dict keys are torchvision's exactly; maskers are the only new parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from laudnet.blocks.bottleneck import DynamicBottleneck
from laudnet.flops import conv_flops, conv_out_size, linear_flops, pool_flops, window_pool_flops
from laudnet.model_table import MODEL_TABLE
from laudnet.models._base import DynamicModel, dynamic_stage
from laudnet.models._registry import register_model
from laudnet.paradigms import stage_granularity


@dataclass(frozen=True)
class ResNetCfg:
    """Architecture table entry: blocks per stage (torchvision's `layers`)."""

    layers: tuple[int, int, int, int]


MODEL_CFGS = {info.arch: ResNetCfg(layers=info.depths) for info in MODEL_TABLE.values() if info.family == "resnet"}


class LaudResNet(DynamicModel):
    """ResNet with dynamic bottlenecks.

    Args:
        cfg: blocks per stage.
        paradigm: ``static``, ``spatial``, ``channel`` or ``layer``.
        granularity: per-stage S or G (see `laudnet.create_model`).
        num_classes: classifier outputs.
        masker_reduction: hidden-width reduction of the channel maskers' MLP.
        masker_norm: normalise each masker's input (see `laudnet.masks`); False gives the paper's maskers.
    """

    def __init__(
        self,
        cfg: ResNetCfg,
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
        tv = ResNet(Bottleneck, list(cfg.layers), num_classes=num_classes)
        self.conv1, self.bn1, self.relu, self.maxpool = tv.conv1, tv.bn1, tv.relu, tv.maxpool
        for i, gran in enumerate(grans):
            name = f"layer{i + 1}"
            self.add_module(name, dynamic_stage(getattr(tv, name), DynamicBottleneck, paradigm, gran, i,
                                                masker_reduction=masker_reduction, masker_norm=masker_norm))
        self.avgpool, self.fc = tv.avgpool, tv.fc

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _stem_flops(self, hw: tuple[int, int]) -> tuple[float, tuple[int, int]]:
        hw = (conv_out_size(hw[0], 2), conv_out_size(hw[1], 2))
        flops = conv_flops(self.conv1.in_channels, self.conv1.out_channels, 7, hw)
        hw = (conv_out_size(hw[0], 2), conv_out_size(hw[1], 2))
        return flops + window_pool_flops(self.conv1.out_channels, 3, hw), hw

    def _head_flops(self, channels: int, hw: tuple[int, int]) -> float:
        return pool_flops(channels, hw) + linear_flops(self.fc.in_features, self.fc.out_features)

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _create_resnet(variant: str, **kwargs) -> LaudResNet:
    return LaudResNet(MODEL_CFGS[variant], **kwargs)


@register_model
def laud_resnet50(**kwargs) -> LaudResNet:
    """LAUD-ResNet-50: torchvision `resnet50` with dynamic bottlenecks."""
    return _create_resnet("resnet50", **kwargs)


@register_model
def laud_resnet101(**kwargs) -> LaudResNet:
    """LAUD-ResNet-101: torchvision `resnet101` with dynamic bottlenecks."""
    return _create_resnet("resnet101", **kwargs)
