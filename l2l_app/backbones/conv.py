"""Task convolution: `nn.Conv2d` with other, numerically equivalent implementations.

* ``native``: `torch.nn.functional.conv2d` (cuDNN on a GPU).  Under `vmap` with per-task weights
  (MAML's adapted parameters) it becomes a grouped convolution, one group per task.
* ``channels-last``: `conv2d` on NHWC tensors (`torch.channels_last`), which cuDNN may run with
  other kernels; the outputs stay NHWC through batch norm, ReLU and pooling.  vmap cannot hold a
  channels-last tensor, so under torch.func's transforms (the MAML family's batched engines) it
  computes natively: it is for the engines without vmap (ProtoNet's batched engine, every loop
  engine).
* ``unfold``: im2col (`F.unfold`) and one matrix product.  Under `vmap` the product with per-task
  weights becomes one batched GEMM, which on a GPU can beat cuDNN's grouped kernels for the
  small images of few-shot learning.

`l2l-app bench --conv-impl NAME` measures each.  All give the same numbers to rounding
(tests/test_backbones.py holds them to 1e-12 in float64, gradients of gradients under vmap
included).  The parameters, their names and the state dict are `nn.Conv2d`'s, so checkpoints
do not depend on the implementation.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

CONV_IMPLS = ("native", "channels-last", "unfold")


def unfold_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """conv2d (zero padding, no dilation, one group) as im2col + matmul.

    x [N, Cin, H, W], weight [Cout, Cin, kh, kw], bias [Cout] or None -> [N, Cout, Ho, Wo].
    """
    n, _, h, w = x.shape
    cout, _, kh, kw = weight.shape
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)             # [N, Cin*kh*kw, L]
    out = torch.einsum("ok,nkl->nol", weight.reshape(cout, -1), cols)          # [N, Cout, L]
    if bias is not None:
        out = out + bias[:, None]
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    return out.reshape(n, cout, ho, wo)


def under_functorch_transform() -> bool:
    """Whether this runs inside a torch.func transform (vmap, grad), whose tensors cannot be NHWC.

    Asked of the transform stack, not of a tensor (`is_functorch_wrapped_tensor`), because
    torch.compile traces the stack's level but breaks its graph at the tensor query.
    """
    return torch._C._functorch.maybe_current_level() is not None


class TaskConv2d(nn.Conv2d):
    """`nn.Conv2d` whose `impl` (one of CONV_IMPLS) picks how it computes (`set_conv_impl`).

    'unfold' covers zero padding, no dilation and one group (every backbone's convolutions);
    any other convolution stays native.  'channels-last' computes natively under torch.func.
    """

    impl: str = "native"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.impl == "unfold" and self.groups == 1 and self.dilation == (1, 1)
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)):
            return unfold_conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if self.impl == "channels-last" and x.dim() == 4 and not under_functorch_transform():
            nhwc = torch.channels_last
            return self._conv_forward(x.contiguous(memory_format=nhwc), self.weight.contiguous(memory_format=nhwc),
                                      self.bias)
        return super().forward(x)


def set_conv_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every TaskConv2d in `model` to `impl`; returns the model."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"convolution impl must be one of {', '.join(CONV_IMPLS)}, got {impl!r}")
    for m in model.modules():
        if isinstance(m, TaskConv2d):
            m.impl = impl
    return model


@contextlib.contextmanager
def conv_impl_mode(model: nn.Module, impl: str) -> Iterator[nn.Module]:
    """Temporarily switch every TaskConv2d in `model` to `impl` (each one's own impl restored after)."""
    convs = [m for m in model.modules() if isinstance(m, TaskConv2d)]
    saved = [m.impl for m in convs]
    set_conv_impl(model, impl)
    try:
        yield model
    finally:
        for m, old in zip(convs, saved):
            m.impl = old
