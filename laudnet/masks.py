"""Maskers and Gumbel gates: the per-block decisions of LAUDNet (Han et al., TPAMI 2024).

Every masker emits two logits per decision, (execute, skip), laid out as (B, 2, ...). In training a decision is a
straight-through Gumbel-softmax sample (forward exactly 0/1, gradient of the soft sample at temperature T); in eval it
is deterministic: execute iff logit_execute >= logit_skip.

- `SpatialMasker`: average-pools the block input to the mask grid, one cell per S×S patch of the block *output*, then a
  1×1 conv. The grid is ceil(Ho/S) × ceil(Wo/S) of the actual feature map, so any input resolution works; border
  cells pool over the partial patch. Layer skipping is the same masker with a 1×1 grid.
- `ChannelMasker`: global pool → Linear → ReLU → Linear, one decision per group of G consecutive channels.

Input normalisation (``norm=True``, the default; ``norm=False`` is the paper's masker): the pooled input is
standardised per channel (a BatchNorm without affine parameters: batch statistics in training, running ones in eval)
before the masker's first linear layer. The block input is post-ReLU, so without it every pooled feature is
non-negative and the FLOPs term's gradient on the masker weights, summed over cells, points along the mean feature:
it lowers the execute logit most where activations are largest — on the objects — and trained masks avoid what they
should compute. With centred inputs that gradient goes to the bias (the global rate) and the weights learn from the
task's gradient where computing pays. At inference the normalisation folds into the first linear layer
(`SpatialMasker.decision_weights`, `ChannelMasker.folded_fc1`), so the deployed maskers cost what they did.

Differences from the official code: the skip-logit bias is initialised for every skip output (the official slice
starts one element late), and pooling windows are the exact patch regions, not `output // S` cells of integer
division.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Initial logit biases: execute-minus-skip margins of 5 (spatial/layer) and 4 (channel) make the dynamic network
# start as the static one (P(execute) = sigmoid(5) ≈ 0.993 and sigmoid(4) ≈ 0.982) and learn to skip from there.
SPATIAL_EXECUTE_BIAS = 5.0
CHANNEL_EXECUTE_BIAS = 2.0
CHANNEL_SKIP_BIAS = -2.0


def gumbel_gate(logits: Tensor, temperature: float, training: bool, noise: float = 1.0) -> Tensor:
    """Binary decisions from (execute, skip) logits along dim 1.

    Args:
        logits: (B, 2, ...) logits; index 0 along dim 1 is "execute".
        temperature: Gumbel-softmax temperature (training only).
        training: sample with straight-through Gumbel noise if True, else take the argmax.
        noise: scale of the Gumbel noise in training. 1 is the Gumbel-softmax sample; 0 takes the eval decision
            (execute iff logit_execute >= logit_skip) with the soft sample's gradient, so a run whose noise decays
            to 0 trains on the decisions it will make in eval.

    Returns:
        (B, ...) float mask of exact zeros and ones; in training its gradient is the soft sample's.
    """
    if logits.dim() < 2 or logits.shape[1] != 2:
        raise ValueError(f"gate logits must have shape (B, 2, ...), got {tuple(logits.shape)}")
    if not training:
        return (logits[:, 0] >= logits[:, 1]).to(logits.dtype)
    if noise > 0:  # noise 1: the hard Gumbel-softmax sample
        gumbels = -torch.empty_like(logits).exponential_().log()
        logits = logits + noise * gumbels
    soft = torch.softmax(logits / temperature, dim=1)[:, 0]
    hard = (logits[:, 0] >= logits[:, 1]).to(soft.dtype)
    return hard - soft.detach() + soft


def mask_grid_size(height: int, width: int, patch: int | None) -> tuple[int, int]:
    """Mask grid (rows, cols) for an output map of height×width and patch size S (None: one cell, layer skipping)."""
    if patch is None:
        return 1, 1
    return math.ceil(height / patch), math.ceil(width / patch)


def pool_patches(x: Tensor, stride: int, patch: int | None, out_hw: tuple[int, int]) -> Tensor:
    """Average of x over each output patch's input region (patch S on the output = S·stride on the input).

    Returns (B, C, gh, gw); patch None pools the whole map to one cell.
    """
    if patch is None:
        return x.mean(dim=(2, 3), keepdim=True)
    k = patch * stride
    grid = mask_grid_size(*out_hw, patch)
    if x.shape[-2] <= grid[0] and x.shape[-1] <= grid[1]:
        return x
    # ceil_mode windows at the border cover only the existing pixels and are divided by their true size.
    return F.avg_pool2d(x, kernel_size=k, stride=k, ceil_mode=True)


class _Masker(nn.Module):
    """Shared state: temperature, Gumbel noise scale, and an override that forces every decision to 1 or 0."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = 1.0
        self.noise = 1.0
        self.override: float | None = None

    def _decide(self, logits: Tensor) -> Tensor:
        if self.override is not None:
            return torch.full_like(logits[:, 0], float(self.override))
        return gumbel_gate(logits, self.temperature, self.training, self.noise)


class SpatialMasker(_Masker):
    """Patch-level (or, with patch=None, layer-level) masker on the block input.

    Args:
        in_channels: channels of the block input.
        groups: mask channel groups g (1 in every published setting).
        norm: standardise the pooled input per channel (see the module docstring).
    """

    def __init__(self, in_channels: int, groups: int = 1, norm: bool = True) -> None:
        super().__init__()
        self.groups = groups
        self.norm: nn.BatchNorm2d | None = nn.BatchNorm2d(in_channels, affine=False) if norm else None
        self.conv = nn.Conv2d(in_channels, 2 * groups, kernel_size=1, bias=True)
        with torch.no_grad():
            self.conv.bias[:groups].fill_(SPATIAL_EXECUTE_BIAS)
            self.conv.bias[groups:].zero_()

    def forward(self, x: Tensor, stride: int, patch: int | None, out_hw: tuple[int, int]) -> Tensor:
        """Coarse mask (B, g, gh, gw) for an output map of size out_hw."""
        pooled = pool_patches(x, stride, patch, out_hw)
        if self.norm is not None:
            pooled = _normalise(self.norm, pooled)
        logits = self.conv(pooled)
        b, _, gh, gw = logits.shape
        return self._decide(logits.view(b, 2, self.groups, gh, gw))

    def decision_weights(self) -> tuple[Tensor, Tensor]:
        """(w (C,), b (1,)) in fp32 with execute iff w · pooled + b >= 0 (eval decisions, normalisation folded in)."""
        if self.groups != 1:
            raise ValueError("decision weights exist for spatial maskers with one mask group")
        w = (self.conv.weight[0] - self.conv.weight[1]).detach().flatten().float()
        b = (self.conv.bias[0] - self.conv.bias[1]).detach().float().reshape(1)
        if self.norm is not None:
            w, b = _fold_norm(self.norm, w[None], b)
            w = w[0]
        return w.clone(), b.clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        _match_norm(self, state_dict, prefix, nn.BatchNorm2d)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def flops(self, in_channels: int, in_hw: tuple[int, int], grid: tuple[int, int]) -> float:
        """Per-image operations: one add per pooled input element, then the 1×1 conv's MACs on the grid (the input
        normalisation folds into the conv at inference)."""
        return in_channels * in_hw[0] * in_hw[1] + in_channels * 2 * self.groups * grid[0] * grid[1]


class ChannelMasker(_Masker):
    """MLP channel masker: global pool → Linear(Cin, h) → ReLU → Linear(h, 2·n_groups), h = max(n // reduction, 16).

    Args:
        in_channels: channels of the block input.
        n_groups: number of channel decisions (bottleneck width / G).
        reduction: hidden-width reduction (16 in every published setting).
        norm: standardise the pooled input per channel (see the module docstring).
    """

    def __init__(self, in_channels: int, n_groups: int, reduction: int = 16, norm: bool = True) -> None:
        super().__init__()
        self.n_groups = n_groups
        self.norm: nn.BatchNorm1d | None = nn.BatchNorm1d(in_channels, affine=False) if norm else None
        self.hidden = max(n_groups // reduction, 16)
        self.fc1 = nn.Linear(in_channels, self.hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(self.hidden, 2 * n_groups)
        with torch.no_grad():
            self.fc2.bias[:n_groups].fill_(CHANNEL_EXECUTE_BIAS)
            self.fc2.bias[n_groups:].fill_(CHANNEL_SKIP_BIAS)

    def forward(self, x: Tensor) -> Tensor:
        """Group mask (B, n_groups)."""
        pooled = x.mean(dim=(2, 3))
        if self.norm is not None:
            pooled = _normalise(self.norm, pooled)
        logits = self.fc2(self.relu(self.fc1(pooled)))
        return self._decide(logits.view(x.shape[0], 2, self.n_groups))

    def folded_fc1(self) -> nn.Linear:
        """An fp32 copy of fc1 with the input normalisation folded in: it takes the raw pooled input (eval)."""
        fc1 = nn.Linear(self.fc1.in_features, self.fc1.out_features)
        w, b = self.fc1.weight.detach().float(), self.fc1.bias.detach().float()
        if self.norm is not None:
            w, b = _fold_norm(self.norm, w, b)
        with torch.no_grad():
            fc1.weight.copy_(w)
            fc1.bias.copy_(b)
        return fc1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        _match_norm(self, state_dict, prefix, nn.BatchNorm1d)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def flops(self, in_channels: int, in_hw: tuple[int, int]) -> float:
        """Per-image operations: the global pool's adds and both linears' MACs."""
        return in_channels * in_hw[0] * in_hw[1] + in_channels * self.hidden + self.hidden * 2 * self.n_groups


def _normalise(norm: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """`norm(x)`, except that a training batch with one value per channel (one image of a layer or channel masker)
    uses the running statistics: there is no batch variance to take."""
    if norm.training and x.numel() <= x.shape[1]:
        return F.batch_norm(x, norm.running_mean, norm.running_var, eps=norm.eps)
    return norm(x)


def _fold_norm(norm: nn.modules.batchnorm._BatchNorm, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(w', b') with w'·x + b' = w·norm_eval(x) + b, for w (out, C) and b (out,)."""
    inv = torch.rsqrt(norm.running_var.detach().float() + norm.eps)
    w = w * inv
    return w, b - w @ norm.running_mean.detach().float()


def _match_norm(masker: nn.Module, state_dict, prefix: str, kind: type[nn.Module]) -> None:
    """Give `masker` the input normalisation its checkpoint has: a state dict written without one (the paper's
    masker, or a checkpoint from before it existed) loads as such, and one with it into a masker built without."""
    has = f"{prefix}norm.running_mean" in state_dict
    if not any(k.startswith(prefix) for k in state_dict) or has == (masker.norm is not None):
        return
    if has:
        device = next(masker.parameters()).device
        masker.norm = kind(state_dict[f"{prefix}norm.running_mean"].numel(), affine=False).to(device)
    else:
        masker.norm = None


def expand_patches(mask: Tensor, patch: int | None, out_hw: tuple[int, int]) -> Tensor:
    """Coarse mask (B, g, gh, gw) → pixel mask (B, g, Ho, Wo); border patches are cropped to the map."""
    if patch is None:
        return mask.expand(-1, -1, *out_hw)
    full = mask.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return full[:, :, : out_hw[0], : out_hw[1]]


def conv3x3_input_mask(out_mask: Tensor, stride: int, in_hw: tuple[int, int]) -> Tensor:
    """Input pixels a 3×3 conv (padding 1, given stride) reads to produce the active pixels of out_mask.

    The output pixel (i, j) reads input rows stride·i − 1 … stride·i + 1 (same for columns), so the mask is placed on
    the strided input grid and dilated by a 3×3 box. Max-pooling keeps a gradient path to the output mask.
    """
    b, g, ho, wo = out_mask.shape
    if stride == 1:
        placed = out_mask
    else:
        placed = out_mask.new_zeros(b, g, ho * stride, wo * stride)
        placed[:, :, ::stride, ::stride] = out_mask
    placed = placed[:, :, : in_hw[0], : in_hw[1]]
    if placed.shape[-2:] != in_hw:  # the input is larger than stride·out (cannot happen with padding 1, but be safe)
        placed = F.pad(placed, (0, in_hw[1] - placed.shape[-1], 0, in_hw[0] - placed.shape[-2]))
    return F.max_pool2d(placed, kernel_size=3, stride=1, padding=1)


def expand_channel_groups(mask: Tensor, group_size: int) -> Tensor:
    """Group mask (B, n) → channel mask (B, n·G, 1, 1), each decision repeated over G consecutive channels."""
    return mask.repeat_interleave(group_size, dim=1)[:, :, None, None]


@contextlib.contextmanager
def mask_override(model: nn.Module, value: float) -> Iterator[nn.Module]:
    """Force every mask of `model` to all ones (``1``) or all zeros (``0``) inside the context.

    With ones a dynamic model computes its static network exactly; with zeros every skippable part is skipped.
    """
    if value not in (0, 1):
        raise ValueError(f"mask override must be 0 or 1, got {value!r}")
    maskers = [m for m in model.modules() if isinstance(m, _Masker)]
    previous = [m.override for m in maskers]
    for m in maskers:
        m.override = float(value)
    try:
        yield model
    finally:
        for m, p in zip(maskers, previous, strict=True):
            m.override = p
