"""What every LAUD model shares: the dynamic blocks, their records, temperature, FLOPs and input checks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from laudnet.blocks.base import DynamicBlock
from laudnet.info import DynamicInfo, collect_info


def dynamic_stage(stage: nn.Module, block_cls: type[DynamicBlock], paradigm: str, granularity: int | None,
                  stage_index: int, **block_kwargs) -> nn.Sequential:
    """Wrap every block of a torchvision stage in `block_cls`, keeping the child names (so state-dict keys stay
    torchvision's); a bad granularity is reported with the stage and block it concerns."""
    blocks = nn.Sequential()
    for name, block in stage.named_children():
        try:
            blocks.add_module(name, block_cls(block, paradigm, granularity, **block_kwargs))
        except ValueError as e:
            raise ValueError(f"stage {stage_index + 1}, block {name}: {e}") from None
    return blocks


@dataclass
class ModelFlops:
    """Per-image multiply-accumulates of a model.

    Attributes:
        dense: the static network at the requested input size.
        dynamic: the batch-mean of the last forward (None before any forward).
        dense_last: the static network at the last forward's input size (the reference of `ratio`).
        blocks: (name, dense, dynamic) per dynamic block of the last forward.
    """

    dense: float
    dynamic: float | None = None
    dense_last: float | None = None
    blocks: list[tuple[str, float, float]] | None = None

    @property
    def ratio(self) -> float | None:
        return None if self.dynamic is None else self.dynamic / self.dense_last


class DynamicModel(nn.Module):
    """Base of LAUD models. Subclasses define `stages()`, `_stem_flops`, `_head_flops`, `forward_features` and
    `forward_head`, and call `_record_static(x)` at the start of `forward_features`."""

    paradigm: str
    in_chans: int = 3

    def stages(self) -> list[nn.Sequential]:
        raise NotImplementedError

    def _stem_flops(self, hw: tuple[int, int]) -> tuple[float, tuple[int, int]]:
        raise NotImplementedError

    def _head_flops(self, channels: int, hw: tuple[int, int]) -> float:
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected an input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        self._last_hw = (int(x.shape[2]), int(x.shape[3]))

    # --- dynamic blocks -------------------------------------------------------------------------------------------
    def dynamic_blocks(self) -> list[DynamicBlock]:
        return [b for stage in self.stages() for b in stage]

    def collect_info(self) -> list[DynamicInfo]:
        """The `DynamicInfo` of every block from the last forward, in order."""
        return collect_info(self)

    def set_temperature(self, temperature: float) -> None:
        """Gumbel-softmax temperature of every masker."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        for m in self.modules():
            if hasattr(m, "override") and hasattr(m, "temperature"):
                m.temperature = float(temperature)

    def set_gate_noise(self, noise: float) -> None:
        """Scale of the Gumbel noise of every masker's training decisions (1: Gumbel-softmax, 0: none)."""
        if noise < 0:
            raise ValueError(f"gate noise must be non-negative, got {noise}")
        for m in self.modules():
            if hasattr(m, "override") and hasattr(m, "noise"):
                m.noise = float(noise)

    def masker_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if "masker" in n]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if "masker" not in n]

    # --- FLOPs ----------------------------------------------------------------------------------------------------
    def dense_flops(self, hw: tuple[int, int] = (224, 224)) -> float:
        """MACs of the static network per image at input size hw (no maskers)."""
        total, hw = self._stem_flops(hw)
        channels = 0
        for block in self.dynamic_blocks():
            total += block.dense_flops(hw)
            hw = (-(-hw[0] // block.stride), -(-hw[1] // block.stride))
            channels = block.out_channels
        return total + self._head_flops(channels, hw)

    def dynamic_flops(self) -> tuple[Tensor, float]:
        """Per-sample dynamic MACs (B,) of the last forward, differentiable in training, and the static network's
        MACs at that input size (the reference F_static of the FLOPs-ratio loss)."""
        hw = getattr(self, "_last_hw", None)
        if hw is None:
            raise RuntimeError("run a forward pass before asking for dynamic FLOPs")
        dense = self.dense_flops(hw)
        infos = self.collect_info()
        static_part = dense - sum(i.dense_flops for i in infos)
        return static_part + torch.stack([i.flops for i in infos]).sum(0), dense


def model_flops(model: DynamicModel, input_size: tuple[int, int, int] = (3, 224, 224)) -> ModelFlops:
    """Dense MACs at `input_size` and, after a forward, the dynamic MACs of that forward (batch mean, per image).

    Args:
        model: a LAUD model.
        input_size: (C, H, W) for the dense count.
    """
    if len(input_size) != 3 or input_size[0] != model.in_chans:
        raise ValueError(f"input_size must be ({model.in_chans}, H, W), got {tuple(input_size)}")
    result = ModelFlops(dense=model.dense_flops((input_size[1], input_size[2])))
    if getattr(model, "_last_hw", None) is not None:
        with torch.no_grad():
            per_sample, dense_last = model.dynamic_flops()
        result.dynamic = float(per_sample.mean())
        result.dense_last = dense_last
        result.blocks = [(i.name, i.dense_flops, float(i.mean_flops)) for i in model.collect_info()]
    return result
