"""The network stem on the Triton stem kernel (`deploy(model, stem="triton")`): conv + bias + ReLU in one kernel.

The convolution is registered as the custom op ``laudnet::stem_conv`` so that `torch.compile` keeps it as one opaque
call in the graph (and fuses the max-pool that follows) instead of tracing into the kernel launcher.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from laudnet.kernels import dispatch
from laudnet.kernels.weights import pack_stem_weight


@torch.library.custom_op("laudnet::stem_conv", mutates_args=())
def stem_conv_op(x: Tensor, weight: Tensor, bias: Tensor, kh: int, kw: int, stride: int, padding: int) -> Tensor:
    """relu(conv(x) + bias) for an NHWC `x` and a packed weight (`dispatch.stem_conv`); a new NHWC tensor."""
    return dispatch.stem_conv(x.contiguous(), weight, bias, (kh, kw), stride, padding)


@stem_conv_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, kh: int, kw: int, stride: int, padding: int) -> Tensor:
    n, h, w, _ = x.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    return x.new_empty((n, ho, wo, weight.shape[1]))


class TritonStemConv(nn.Module):
    """A folded stem conv followed by ReLU, as one kernel; NCHW (channels_last) in and out, like the modules it
    replaces."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        square = conv.stride[0] == conv.stride[1] and conv.padding[0] == conv.padding[1]
        if conv.groups != 1 or conv.dilation != (1, 1) or not square or isinstance(conv.padding, str):
            raise ValueError(f"the Triton stem takes a plain conv with equal strides and paddings, got {conv}")
        self.kernel = tuple(conv.kernel_size)
        self.stride, self.padding = conv.stride[0], conv.padding[0]
        self.register_buffer("weight", pack_stem_weight(conv.weight.detach()))
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        y = stem_conv_op(x.permute(0, 2, 3, 1), self.weight, self.bias, *self.kernel, self.stride, self.padding)
        return y.permute(0, 3, 1, 2)  # channels_last NCHW
