"""Task batch norm: batch statistics only, per task when several tasks are folded into dim 0.

Every normalisation layer of every backbone is a `TaskBatchNorm2d`: batch statistics in
training *and* evaluation (the transductive setting of the MAML paper and learn2learn's
examples), no running statistics, so nothing can leak between tasks or between a model and
its clones. It has two numerically equivalent implementations:

* ``native``: `torch.nn.functional.batch_norm` (cuDNN on a GPU);
* ``primitive``: mean, biased variance, rsqrt and an affine map.  Needed under
  `torch.func.vmap` with second-order gradients, where the batching rule of native
  batch_norm's double backward is wrong (pytorch/functorch#534).

It can also normalise a batch that holds several tasks folded into dim 0 with
per-task statistics (`tasks > 1`), which lets an engine run one large convolution
for all tasks that share the same weights.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5


def primitive_batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         tasks: int = 1, eps: float = BN_EPS) -> torch.Tensor:
    """Batch norm from primitive ops with statistics per task.

    x: [tasks*N, C, H, W] (or [tasks*N, C]); statistics over each task's N samples and the spatial dims.
    The variance is the mean square of the centred input, which is computed once and reused.
    Not `torch.var_mean`: under vmap its double backward left the batched MAML meta-gradient in
    float32 1.6e-3 (relative L2) from the float64 one, against 1e-6 this way and 8e-6 for the loop
    engine (tests/test_batched.py::test_float32_meta_gradient_is_as_accurate_as_the_loops).
    """
    shape = x.shape
    grouped = x.reshape(tasks, shape[0] // tasks, *shape[1:])
    dims = [1] + list(range(3, grouped.dim()))
    centered = grouped - grouped.mean(dim=dims, keepdim=True)
    var = (centered * centered).mean(dim=dims, keepdim=True)
    view = [1, 1, -1] + [1] * (grouped.dim() - 3)
    scale = torch.rsqrt(var + eps) * weight.reshape(view)
    out = centered * scale + bias.reshape(view)
    return out.reshape(shape)


def native_task_batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           tasks: int, eps: float = BN_EPS) -> torch.Tensor:
    """Per-task batch norm with one native (cuDNN) call: tasks moved into the channel dim.

    x: [tasks*N, C, ...] -> [N, tasks*C, ...], normalised with weight/bias repeated per task.
    Not for second-order gradients under `vmap` (see module docstring).
    """
    shape = x.shape
    n, c = shape[0] // tasks, shape[1]
    moved = x.reshape(tasks, n, *shape[1:]).transpose(0, 1).reshape(n, tasks * c, *shape[2:])
    out = F.batch_norm(moved, None, None, weight.repeat(tasks), bias.repeat(tasks), training=True, eps=eps)
    return out.reshape(n, tasks, *shape[1:]).transpose(0, 1).reshape(shape)


class TaskBatchNorm2d(nn.Module):
    """BatchNorm2d that always uses the current batch's statistics (no running stats).

    Parameters are named `weight` and `bias` like `nn.BatchNorm2d`.
    Attributes `impl` ('native' | 'primitive') and `tasks` are set by `batchnorm_mode`.
    """

    def __init__(self, channels: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.impl = "native"
        self.tasks = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "native" and self.tasks == 1:
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        if self.impl == "native":
            return native_task_batch_norm(x, self.weight, self.bias, self.tasks, self.eps)
        return primitive_batch_norm(x, self.weight, self.bias, self.tasks, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, batch statistics only"


@contextlib.contextmanager
def batchnorm_mode(model: nn.Module, impl: str = "primitive", tasks: int = 1) -> Iterator[nn.Module]:
    """Temporarily switch every TaskBatchNorm2d in `model` to `impl`, with `tasks` folded tasks."""
    if impl not in ("native", "primitive"):
        raise ValueError(f"batch-norm impl must be 'native' or 'primitive', got {impl!r}")
    layers = [m for m in model.modules() if isinstance(m, TaskBatchNorm2d)]
    saved = [(m.impl, m.tasks) for m in layers]
    for m in layers:
        m.impl, m.tasks = impl, tasks
    try:
        yield model
    finally:
        for m, (old_impl, old_tasks) in zip(layers, saved):
            m.impl, m.tasks = old_impl, old_tasks


def conv_bn_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """(conv, batch norm) module names for every conv with a bias followed directly by batch norm
    (consecutive children of an `nn.Sequential`)."""
    pairs = []
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (name, a), (bn_name, b) in zip(children, children[1:]):
                if isinstance(a, nn.Conv2d) and a.bias is not None and isinstance(b, TaskBatchNorm2d):
                    pairs.append((f"{prefix}.{name}" if prefix else name,
                                  f"{prefix}.{bn_name}" if prefix else bn_name))
    return pairs


def bn_invariant_biases(model: nn.Module) -> Set[str]:
    """Parameter names of the conv biases followed directly by batch norm.  Batch norm subtracts
    the per-channel mean, so their exact gradient is zero and a computed one is rounding noise
    (which Adam, dividing by its own magnitude, turns into steps of about its learning rate):
    comparisons of two engines' gradients leave them out."""
    return {f"{conv}.bias" for conv, _ in conv_bn_pairs(model)}
