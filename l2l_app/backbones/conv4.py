"""Conv4 (Vinyals et al. 2016; Finn et al. 2017): four 3x3 conv -> batch norm -> ReLU blocks.

Registers `conv4` (2x2 max-pool after each block) and `conv4-strided` (stride-2 convolutions
instead of pooling, as in MAML's Omniglot network).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES
from .conv import TaskConv2d
from .norm import TaskBatchNorm2d
from .spec import BackboneSpec


def conv_block(in_channels: int, out_channels: int, max_pool: bool) -> nn.Sequential:
    """3x3 conv -> batch norm -> ReLU -> 2x2 max-pool (or stride-2 conv when max_pool=False)."""
    stride = 1 if max_pool else 2
    layers: list[nn.Module] = [
        TaskConv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        TaskBatchNorm2d(out_channels),
        nn.ReLU(),
    ]
    if max_pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """Four conv blocks; input [N, C, H, W] -> features [N, feature_size].

    Omniglot 1x28x28 with 64 filters -> 64 features; mini-ImageNet 3x84x84 with 32 filters -> 800.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
                 max_pool: bool = True) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[conv_block(in_channels if i == 0 else hidden, hidden, max_pool)
                                      for i in range(4)])
        side = image_size
        for _ in range(4):
            side = side // 2 if max_pool else (side + 1) // 2
        if side < 1:
            raise ConfigError(f"--image-size {image_size} is too small for conv4: four 2x2 max-pools need at least "
                              f"16 pixels; pass --image-size 16 or more")
        self.feature_size = hidden * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)


def _conv4(input_shape: Tuple[int, ...], hidden: int) -> nn.Module:
    return Conv4(input_shape[0], hidden, input_shape[-1], max_pool=True)


def _conv4_strided(input_shape: Tuple[int, ...], hidden: int) -> nn.Module:
    return Conv4(input_shape[0], hidden, input_shape[-1], max_pool=False)


BACKBONES.register("conv4", BackboneSpec(
    "conv4", "four 3x3 conv/batch-norm/ReLU blocks with 2x2 max-pool (Vinyals et al. 2016)", _conv4))
BACKBONES.register("conv4-strided", BackboneSpec(
    "conv4-strided", "four 3x3 stride-2 conv/batch-norm/ReLU blocks, no pooling (MAML's Omniglot net)",
    _conv4_strided))
