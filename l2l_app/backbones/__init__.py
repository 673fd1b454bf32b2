"""Backbones, one module each, registered by name in `registry.BACKBONES`; a linear-head classifier.

* `conv4.py`: `conv4` (max-pool) and `conv4-strided` (stride-2 convolutions);
* `resnet12.py`: `resnet12` (TADAM / MetaOptNet ResNet-12, global average pool);
* `norm.py`: `TaskBatchNorm2d` (batch statistics only, per task; native and primitive
  implementations) and the `batchnorm_mode` switch, used by every backbone;
* `spec.py`: `BackboneSpec`, what a backbone module registers.

Adding a backbone is adding a module here that calls `BACKBONES.register(name, BackboneSpec(...))`:
every public module of this package is imported below.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES, import_submodules
from .conv import CONV_IMPLS, TaskConv2d, conv_impl_mode, set_conv_impl
from .conv4 import Conv4, conv_block
from .norm import (BN_EPS, TaskBatchNorm2d, batchnorm_mode, bn_invariant_biases, conv_bn_pairs,
                   native_task_batch_norm, primitive_batch_norm)
from .spec import BackboneSpec

import_submodules(__name__)

__all__ = ["BACKBONES", "BackboneSpec", "build_backbone", "Classifier", "assert_no_aliased_submodules",
           "has_batch_norm", "CONV_IMPLS", "TaskConv2d", "conv_impl_mode", "set_conv_impl", "TaskBatchNorm2d",
           "batchnorm_mode",
           "BN_EPS", "primitive_batch_norm", "native_task_batch_norm", "conv_bn_pairs", "bn_invariant_biases",
           "Conv4", "conv_block"]


def build_backbone(name: str, input_shape: Tuple[int, ...], hidden: int, **options: Any) -> nn.Module:
    """The registered backbone `name` for inputs [N, *input_shape] ((C, H, W) images or (D,) vectors).

    Raises `BACKBONES.unknown(name)` (a ConfigError listing the valid names) for an unknown name,
    and a ConfigError when the backbone takes only images and the inputs are vectors.
    """
    spec = BACKBONES.get(name)
    if spec is None:
        raise BACKBONES.unknown(name)
    if not spec.accepts(tuple(input_shape)):
        takes_any = [n for n, s in BACKBONES.items() if s.inputs == "any"]
        raise ConfigError(f"--backbone {name} takes images, but the data are vectors of {input_shape[0]} numbers; "
                          f"use --backbone {' or '.join(takes_any) or 'with vector inputs'}")
    return spec.make(tuple(input_shape), hidden, **options)


class Classifier(nn.Module):
    """Backbone features followed by a linear layer over `ways` classes (MAML, Reptile).

    Parameters are named `backbone.*` and `head.*` (checkpoints depend on these names).
    """

    def __init__(self, backbone: nn.Module, ways: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_size, ways)
        self.feature_size = backbone.feature_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def has_batch_norm(model: nn.Module) -> bool:
    """Whether `model` normalises with batch statistics anywhere (a `TaskBatchNorm2d`)."""
    return any(isinstance(m, TaskBatchNorm2d) for m in model.modules())


def assert_no_aliased_submodules(model: nn.Module) -> None:
    """Raise if a submodule is registered under two names (breaks `functional_call`)."""
    seen: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in seen and seen[id(module)] != name:
            raise ValueError(f"submodule registered twice: {seen[id(module)]!r} and {name!r}")
        seen.setdefault(id(module), name)
