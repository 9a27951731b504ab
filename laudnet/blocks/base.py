"""The unified dynamic residual block (LAUDNet, Han et al., TPAMI 2024): conv1 1×1 → conv2 3×3 (stride, groups) →
[SE] → conv3 1×1, plus an identity or projection shortcut.

One forward serves every paradigm; only the mask shapes differ:
- ``static``: no masker.
- ``spatial``: a coarse mask over S×S patches of the block output, expanded to pixels. It zeroes the residual branch
  (after conv3's BN) at inactive pixels, so they output act(shortcut). Where the block has SE, conv2's activated
  output is masked too, so SE pools over active pixels only — what a sparse kernel can compute.
- ``layer``: the spatial formulation with one cell per sample.
- ``channel``: one decision per group of G consecutive bottleneck channels, applied after BN and activation of conv1
  and conv2, so a skipped channel is an exact zero (the official ResNet masks before BN, which a sparse kernel could
  not reproduce).

Training computes densely and multiplies by masks; a deployed sparse network computes the same function because
masked values are exact zeros. FLOPs are counted per sample from the masks (the official code squares the batch-mean
channel density for conv2; per-sample products are exact for the conv that loses input and output channels).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from laudnet.flops import conv_flops, conv_out_size, linear_flops, pool_flops
from laudnet.info import DynamicInfo
from laudnet.masks import (
    ChannelMasker,
    SpatialMasker,
    conv3x3_input_mask,
    expand_channel_groups,
    expand_patches,
    mask_grid_size,
)
from laudnet.paradigms import check_block_granularity, check_cnn_paradigm


class DynamicBlock(nn.Module):
    """Base of the dynamic bottleneck blocks. Subclasses own the layers and set the shape attributes below.

    Attributes:
        in_channels, width, out_channels: block input, bottleneck and output channels.
        stride: stride of the 3×3 conv (and of the projection).
        groups: groups of the 3×3 conv.
        se_channels: SE squeeze width (0 without SE).
        paradigm: one of `laudnet.paradigms.CNN_PARADIGMS`.
        granularity: patch size S (spatial), channel group size G (channel), None otherwise.
        info: the `DynamicInfo` of the last forward (None before the first).
    """

    in_channels: int
    width: int
    out_channels: int
    stride: int
    groups: int
    se_channels: int

    def _init_dynamic(
        self, paradigm: str, granularity: int | None, masker_reduction: int = 16, masker_norm: bool = True
    ) -> None:
        self.paradigm = check_cnn_paradigm(paradigm)
        self.info: DynamicInfo | None = None
        self.granularity = check_block_granularity(paradigm, granularity)
        if paradigm == "channel" and self.width % granularity:
            raise ValueError(
                f"channel group size G={granularity} does not divide the block width {self.width} "
                f"(block {self.in_channels}->{self.out_channels} channels)"
            )
        if paradigm in ("spatial", "layer"):
            self.masker = SpatialMasker(self.in_channels, norm=masker_norm)
        elif paradigm == "channel":
            self.channel_masker = ChannelMasker(
                self.in_channels, self.width // self.granularity, masker_reduction, norm=masker_norm
            )

    # --- layers, provided by subclasses -------------------------------------------------------------------------
    def _conv1(self, x: Tensor) -> Tensor:  # conv + BN + activation
        raise NotImplementedError

    def _conv2(self, h: Tensor) -> Tensor:  # conv + BN + activation
        raise NotImplementedError

    def _se(self, h: Tensor) -> Tensor:
        return h

    def _conv3(self, h: Tensor) -> Tensor:  # conv + BN
        raise NotImplementedError

    def _shortcut(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _act(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # --- FLOPs ----------------------------------------------------------------------------------------------------
    def flops_terms(self, in_hw: tuple[int, int]) -> dict[str, float]:
        """Dense per-image MACs of each part of the block at input size in_hw."""
        out_hw = (conv_out_size(in_hw[0], self.stride), conv_out_size(in_hw[1], self.stride))
        terms = {
            "conv1": conv_flops(self.in_channels, self.width, 1, in_hw),
            "conv2": conv_flops(self.width, self.width, 3, out_hw, self.groups),
            "conv3": conv_flops(self.width, self.out_channels, 1, out_hw),
            "se_pool": 0.0,
            "se_fc": 0.0,
            "shortcut": 0.0,
        }
        if self.se_channels:
            terms["se_pool"] = pool_flops(self.width, out_hw)
            terms["se_fc"] = 2 * linear_flops(self.width, self.se_channels)
        if self.has_projection:
            terms["shortcut"] = conv_flops(self.in_channels, self.out_channels, 1, out_hw)
        return terms

    def masker_flops(self, in_hw: tuple[int, int]) -> float:
        out_hw = (conv_out_size(in_hw[0], self.stride), conv_out_size(in_hw[1], self.stride))
        if self.paradigm in ("spatial", "layer"):
            grid = mask_grid_size(*out_hw, self.granularity)
            return self.masker.flops(self.in_channels, in_hw, grid)
        if self.paradigm == "channel":
            return self.channel_masker.flops(self.in_channels, in_hw)
        return 0.0

    def dense_flops(self, in_hw: tuple[int, int]) -> float:
        """MACs of the static block (no masker) per image."""
        return sum(self.flops_terms(in_hw).values())

    @property
    def has_projection(self) -> bool:
        raise NotImplementedError

    def conv_bn_pairs(self) -> dict[str, tuple[nn.Conv2d, nn.BatchNorm2d] | None]:
        """(conv, BN) of conv1, conv2, conv3 and the projection shortcut (None without one)."""
        raise NotImplementedError

    # --- forward --------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        in_hw = (x.shape[2], x.shape[3])
        out_hw = (conv_out_size(in_hw[0], self.stride), conv_out_size(in_hw[1], self.stride))
        terms = self.flops_terms(in_hw)
        dense = sum(terms.values())
        shortcut = self._shortcut(x)
        masks: dict[str, Tensor] = {}
        density: dict[str, Tensor] = {}
        if self.paradigm in ("spatial", "layer"):
            patch = self.granularity  # None for layer skipping: one cell per sample
            coarse = self.masker(x, self.stride, patch, out_hw)
            pixel = expand_patches(coarse, patch, out_hw)
            h2 = self._conv2(self._conv1(x))
            if self.se_channels:
                h2 = self._se(h2 * pixel)
            y = self._conv3(h2) * pixel
            conv1_mask = conv3x3_input_mask(pixel, self.stride, in_hw) if patch is not None else coarse
            # fp32 rates: under bf16 autocast the masks are bf16, the FLOPs they weigh reach 1e9
            r1 = conv1_mask.flatten(1).float().mean(1)
            r2 = pixel.flatten(1).float().mean(1)
            se_fc_rate = r2.gt(0).to(r2) if patch is not None else r2
            flops = (
                terms["conv1"] * r1
                + (terms["conv2"] + terms["conv3"] + terms["se_pool"]) * r2
                + terms["se_fc"] * se_fc_rate
            )
            masks = {"patch": coarse, "pixel": pixel, "conv1": conv1_mask}
            density = {"conv1": r1.mean(), "conv2": r2.mean(), "conv3": r2.mean()}
        elif self.paradigm == "channel":
            groups = self.channel_masker(x)
            cmask = expand_channel_groups(groups, self.granularity).to(x.dtype)
            h1 = self._conv1(x) * cmask
            h2 = self._se(self._conv2(h1) * cmask)
            y = self._conv3(h2)
            rc = groups.float().mean(1)
            # conv2 loses input and output channels: per-sample rate squared.
            flops = (
                (terms["conv1"] + terms["conv3"] + terms["se_pool"] + terms["se_fc"]) * rc
                + terms["conv2"] * rc * rc
            )
            masks = {"channel": groups}
            density = {"channel": rc.mean()}
        else:
            y = self._conv3(self._se(self._conv2(self._conv1(x))))
            flops = torch.full((x.shape[0],), dense - terms["shortcut"], device=x.device)
        flops = flops + terms["shortcut"] + self.masker_flops(in_hw)
        self.info = DynamicInfo(paradigm=self.paradigm, dense_flops=dense, flops=flops, masks=masks, density=density)
        return self._act(y + shortcut)
