"""Typed per-block records of what a dynamic block decided and what it cost in its last forward.

Blocks stay tensor-in/tensor-out (torchvision's IntermediateLayerGetter and FPN need that); side data goes into
`block.info`, a `DynamicInfo`, which `collect_info(model)` gathers in forward order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class DynamicInfo:
    """What one dynamic block did in its last forward.

    Attributes:
        name: the block's qualified name in its model (e.g. ``layer2.0``); filled in by `collect_info`.
        paradigm: ``static``, ``spatial``, ``channel`` or ``layer``.
        masks: the decisions, by kind: ``patch`` (B, 1, gh, gw) coarse spatial/layer mask, ``pixel`` (B, 1, Ho, Wo)
            its expansion (the conv2/conv3 mask), ``conv1`` (B, 1, H, W) the dilated conv1 mask, ``channel``
            (B, n_groups) group decisions.
        density: batch-mean activation rate of each masked operand (``conv1``, ``conv2``, ``conv3``, ``channel``).
            0-d tensors that carry the gates' gradient in training.
        dense_flops: the static block's per-image multiply-accumulates at this input size (no masker: ``flops``
            includes the masker's, so a block that executes everything has an activation rate a little above 1).
        flops: per-sample dynamic multiply-accumulates, shape (B,), differentiable in training.
    """

    paradigm: str
    dense_flops: float
    flops: Tensor
    masks: dict[str, Tensor] = field(default_factory=dict)
    density: dict[str, Tensor] = field(default_factory=dict)
    name: str = ""

    @property
    def mean_flops(self) -> Tensor:
        """Batch-mean dynamic multiply-accumulates per image."""
        return self.flops.mean()

    @property
    def activation_rate(self) -> float:
        """f_l = dynamic / dense FLOPs of this block, batch mean."""
        return float(self.mean_flops) / self.dense_flops

    def detached(self) -> DynamicInfo:
        """A copy without autograd history (for logging and evaluation)."""
        return DynamicInfo(
            paradigm=self.paradigm,
            dense_flops=self.dense_flops,
            flops=self.flops.detach(),
            masks={k: v.detach() for k, v in self.masks.items()},
            density={k: v.detach() for k, v in self.density.items()},
            name=self.name,
        )


def dynamic_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every block that records a `DynamicInfo`, in registration (= forward) order."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "info") and hasattr(m, "paradigm")]


def collect_info(model: nn.Module) -> list[DynamicInfo]:
    """The records of the last forward, one per dynamic block, named after the block.

    Raises:
        RuntimeError: if the model has not run a forward since it was built.
    """
    infos = []
    for name, block in dynamic_blocks(model):
        if block.info is None:
            raise RuntimeError(f"block {name!r} has no record: run a forward pass before collecting dynamic info")
        block.info.name = name
        infos.append(block.info)
    return infos
