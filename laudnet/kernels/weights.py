"""Weight layouts of the kernels: the torch conv weights packed for the GEMM kernels' loads, and back.

* Spatial and layer skipping (`spatial.py`): K-major `[9*Cin, Cout]` for a 3x3 (row `(ky*3 + kx)*Cin + ci`, tap-major
  then input channel) and `[Cin, Cout]` for a 1x1; the ops also take torch's layout `[Cout, Cin/groups, kh, kw]`.
* Channel skipping (`channel.py`): the logical shapes kept, the memory laid out for the per-sample gathers.
* The stem (`stem.py`): for kernel row ky, the K index `kx * C + c` runs over one contiguous stretch of the NHWC input
  (KW consecutive pixels of C channels each), padded with zero rows to `k_row` (a power of two, at least 16):
  `[KH * k_row, Cout]`, row `ky * k_row + kx * C + c`.

The deployed blocks pack once (`laudnet.deploy`); the kernels and their references accept either layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._utils import next_power_of_2

# ---------------------------------------------------------------------------------------------------------------
# spatial and layer skipping


def pack_conv3x3_weight(weight: torch.Tensor) -> torch.Tensor:
    """Torch 3x3 conv weight `[Cout, Cin, 3, 3]` -> contiguous K-major `[9*Cin, Cout]` (row = (ky*3 + kx)*Cin + ci)."""
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"expected a 3x3 conv weight [Cout, Cin, 3, 3], got shape {tuple(weight.shape)}")
    cout, cin = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(9 * cin, cout).contiguous()


def pack_conv1x1_weight(weight: torch.Tensor) -> torch.Tensor:
    """Torch 1x1 conv weight `[Cout, Cin, 1, 1]` -> contiguous K-major `[Cin, Cout]`."""
    if weight.dim() != 4 or weight.shape[2:] != (1, 1):
        raise ValueError(f"expected a 1x1 conv weight [Cout, Cin, 1, 1], got shape {tuple(weight.shape)}")
    return weight[:, :, 0, 0].t().contiguous()


def unpack_conv3x3_weight(weight: torch.Tensor, cin: int) -> torch.Tensor:
    """A 3x3 weight in torch layout `[Cout, Cin/groups, 3, 3]`: returned as is, or unpacked from `[9*Cin, Cout]`."""
    if weight.dim() == 4:
        return weight
    if weight.dim() == 2 and weight.shape[0] == 9 * cin:
        return weight.reshape(3, 3, cin, weight.shape[1]).permute(3, 2, 0, 1)
    raise ValueError(
        f"conv3x3 weight must be [Cout, Cin/groups, 3, 3] or packed [9*Cin, Cout] with Cin={cin}, "
        f"got shape {tuple(weight.shape)}"
    )


def conv1x1_matrix(weight: torch.Tensor, cin: int) -> torch.Tensor:
    """Return the 1x1 weight as a K-major `[Cin, Cout]` matrix (a view when possible)."""
    if weight.dim() == 4:
        if weight.shape[2:] != (1, 1) or weight.shape[1] != cin:
            raise ValueError(f"1x1 conv weight must be [Cout, {cin}, 1, 1], got shape {tuple(weight.shape)}")
        return weight[:, :, 0, 0].t()
    if weight.dim() == 2 and weight.shape[0] == cin:
        return weight
    raise ValueError(f"1x1 conv weight must be [Cout, {cin}, 1, 1] or packed [{cin}, Cout], got {tuple(weight.shape)}")


# ---------------------------------------------------------------------------------------------------------------
# channel skipping


def conv1x1_as_2d(weight: torch.Tensor, name: str) -> torch.Tensor:
    """A 1x1 conv or linear weight `[out, in]` or `[out, in, 1, 1]` as the 2-D `[out, in]` (a view)."""
    if weight.dim() == 4:
        if weight.shape[2:] != (1, 1):
            raise ValueError(f"{name} must be a 1x1 conv weight, got shape {tuple(weight.shape)}")
        return weight[:, :, 0, 0]
    if weight.dim() != 2:
        raise ValueError(f"{name} must be [out, in] or [out, in, 1, 1], got shape {tuple(weight.shape)}")
    return weight


def pack_bottleneck_weights(
    w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copies of the folded conv weights in the memory layouts the kernels gather fastest, same logical shapes.

    `w1` -> `[w, Cin]` with `Cin` contiguous (rows gathered); `w2` -> `[w, w, 3, 3]` stored as
    `[3, 3, w_in, w_out]` (both channel dims gathered, output channels contiguous); `w3` -> `[Cout, w]`
    stored as `[w, Cout]` (rows of the stored matrix gathered). Call once at deployment.
    """
    w1p = conv1x1_as_2d(w1, "w1").contiguous()
    if w2.dim() != 4 or w2.shape[2:] != (3, 3):
        raise ValueError(f"w2 must be [w_out, w_in, 3, 3], got {tuple(w2.shape)}")
    w2p = w2.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
    w3p = conv1x1_as_2d(w3, "w3").t().contiguous().t()
    return w1p, w2p, w3p


# ---------------------------------------------------------------------------------------------------------------
# the stem


def stem_k_row(kw: int, cin: int) -> int:
    """Padded K per kernel row: the next power of two of KW * C, at least 16 (tl.dot's narrowest K)."""
    return max(16, next_power_of_2(kw * cin))


def pack_stem_weight(weight: torch.Tensor) -> torch.Tensor:
    """`[Cout, C, KH, KW]` → `[KH * k_row, Cout]` (see the module docstring)."""
    if weight.dim() != 4:
        raise ValueError(f"stem weight must be [Cout, C, KH, KW], got shape {tuple(weight.shape)}")
    cout, cin, kh, kw = weight.shape
    k_row = stem_k_row(kw, cin)
    rows = weight.permute(2, 3, 1, 0).reshape(kh, kw * cin, cout)  # [ky, kx * C + c, co]
    return F.pad(rows, (0, 0, 0, k_row - kw * cin)).reshape(kh * k_row, cout).contiguous()


def unpack_stem_weight(packed: torch.Tensor, cin: int, kernel: tuple[int, int]) -> torch.Tensor:
    """Inverse of `pack_stem_weight`."""
    kh, kw = kernel
    k_row = stem_k_row(kw, cin)
    rows = packed.view(kh, k_row, -1)[:, : kw * cin]
    return rows.reshape(kh, kw, cin, -1).permute(3, 2, 0, 1)
