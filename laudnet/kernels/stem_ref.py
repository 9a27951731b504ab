"""Reference for the network stem's convolution (`stem.py`): a dense conv on a few input channels + bias + ReLU, NHWC.

A ResNet's stem is a 7×7 stride-2 conv on 3 channels (a RegNet's a 3×3 stride-2 one). Its GEMM has K = 147 (27),
which library conv kernels serve poorly: cuDNN pads the 3 channels to 8 and runs a generic kernel, with separate
padding, bias and ReLU passes (measured in the README's "Inference engine" section).

The weight comes in torch's layout or packed (`weights.pack_stem_weight`, whose docstring describes the layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .weights import stem_k_row, unpack_stem_weight


def check_stem_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel: tuple[int, int],
                    stride: int, padding: int) -> tuple[int, int]:
    """Validate; returns the output size (HO, WO)."""
    if x.dim() != 4:
        raise ValueError(f"x must be an NHWC tensor [N, H, W, C], got shape {tuple(x.shape)}")
    n, h, w, cin = x.shape
    kh, kw = kernel
    if weight.dim() == 4:
        if tuple(weight.shape[1:]) != (cin, kh, kw):
            raise ValueError(f"stem weight {tuple(weight.shape)} does not match C = {cin}, kernel {kh}x{kw}")
    elif weight.dim() != 2 or weight.shape[0] != kh * stem_k_row(kw, cin):
        raise ValueError(f"packed stem weight must be [{kh * stem_k_row(kw, cin)}, Cout], got {tuple(weight.shape)}")
    cout = weight.shape[0] if weight.dim() == 4 else weight.shape[1]
    if bias is not None and bias.shape != (cout,):
        raise ValueError(f"bias must be [{cout}], got {tuple(bias.shape)}")
    if stride < 1 or padding < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"a {h}x{w} input is smaller than the {kh}x{kw} kernel with padding {padding}")
    return ho, wo


def stem_conv_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel: tuple[int, int],
                  stride: int, padding: int, relu: bool = True) -> torch.Tensor:
    """relu(conv(x) + bias) on an NHWC input; returns a new NHWC `[N, HO, WO, Cout]` tensor.

    Args:
        x: NHWC `[N, H, W, C]`.
        weight: `[Cout, C, KH, KW]` or packed (`pack_stem_weight`).
        bias: `[Cout]` or None.
        kernel: (KH, KW).
        stride, padding: of the convolution (the same along both axes).
        relu: apply ReLU after the bias.
    """
    check_stem_args(x, weight, bias, kernel, stride, padding)
    w4 = weight if weight.dim() == 4 else unpack_stem_weight(weight, x.shape[3], kernel)
    y = F.conv2d(x.permute(0, 3, 1, 2), w4.to(x.dtype), bias.to(x.dtype) if bias is not None else None,
                 stride=stride, padding=padding)
    y = y.relu() if relu else y
    return y.permute(0, 2, 3, 1).contiguous()
