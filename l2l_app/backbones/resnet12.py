"""ResNet-12 (Oreshkin et al., TADAM 2018; Lee et al., MetaOptNet 2019), the standard few-shot backbone.

Four residual blocks.  Each block: three 3x3 convolutions (no bias), each followed by a
`TaskBatchNorm2d`, with LeakyReLU(0.1) after the first two; a 1x1 convolution + norm shortcut
added to the third's output; LeakyReLU(0.1); then a 2x2 max-pool.  Widths
(hidden, 2.5*hidden, 5*hidden, 10*hidden): the default hidden=64 gives the usual
64-160-320-640 (about 12.4M parameters).  A global average pool over what is left of the
image ends the network, so `feature_size = 10 * hidden` whatever the input size
(1x28x28 Omniglot: 1x1 left; 3x84x84 mini-ImageNet: 5x5 left).

Differences from the papers' training recipes: DropBlock (Ghiasi et al. 2018, used by
MetaOptNet) is not included, and every normalisation layer is a `TaskBatchNorm2d` (batch
statistics only, no running statistics; primitive implementation available for `vmap`
with second-order gradients), like the other backbones of this package.

Registers `resnet12`.  This file is all it takes to add the backbone.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES
from .conv import TaskConv2d
from .norm import TaskBatchNorm2d
from .spec import BackboneSpec

LEAKY_SLOPE = 0.1
BLOCKS = 4


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return TaskConv2d(in_channels, out_channels, 3, padding=1, bias=False)


class ResidualBlock12(nn.Module):
    """3 x (3x3 conv -> norm [-> LeakyReLU]) + (1x1 conv -> norm) shortcut, LeakyReLU, 2x2 max-pool.

    [N, in_channels, H, W] -> [N, out_channels, H // 2, W // 2].
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.norm1 = TaskBatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.norm2 = TaskBatchNorm2d(out_channels)
        self.conv3 = _conv3x3(out_channels, out_channels)
        self.norm3 = TaskBatchNorm2d(out_channels)
        self.shortcut_conv = TaskConv2d(in_channels, out_channels, 1, bias=False)
        self.shortcut_norm = TaskBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.norm1(self.conv1(x)), LEAKY_SLOPE)
        out = F.leaky_relu(self.norm2(self.conv2(out)), LEAKY_SLOPE)
        out = self.norm3(self.conv3(out))
        out = F.leaky_relu(out + self.shortcut_norm(self.shortcut_conv(x)), LEAKY_SLOPE)
        return F.max_pool2d(out, 2)


def resnet12_widths(hidden: int) -> tuple[int, int, int, int]:
    """(hidden, 2.5*hidden rounded down, 5*hidden, 10*hidden): 64 -> (64, 160, 320, 640)."""
    return hidden, (5 * hidden) // 2, 5 * hidden, 10 * hidden


class ResNet12(nn.Module):
    """Four residual blocks and global average pooling; [N, C, H, W] -> [N, 10 * hidden].

    Needs H, W >= 16 (four 2x2 max-pools).  No DropBlock.  Convolutions are initialised
    with Kaiming-normal (fan_out, leaky_relu); norms start at weight 1, bias 0.
    """

    def __init__(self, in_channels: int = 3, hidden: int = 64, image_size: int = 84) -> None:
        super().__init__()
        if image_size < 2 ** BLOCKS:
            raise ConfigError(f"--backbone resnet12 needs images of at least {2 ** BLOCKS}x{2 ** BLOCKS} "
                              f"pixels (four 2x2 max-pools), got {image_size}x{image_size}; "
                              "choose another --backbone for this dataset")
        widths = resnet12_widths(hidden)
        ins = (in_channels,) + widths[:-1]
        self.blocks = nn.Sequential(*[ResidualBlock12(i, o) for i, o in zip(ins, widths)])
        self.feature_size = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))


def _resnet12(input_shape: Tuple[int, ...], hidden: int) -> nn.Module:
    in_channels, image_size = input_shape[0], input_shape[-1]
    return ResNet12(in_channels, hidden, image_size)


BACKBONES.register("resnet12", BackboneSpec(
    "resnet12", "ResNet-12 (TADAM/MetaOptNet): 4 residual blocks, widths hidden x (1, 2.5, 5, 10), "
    "global average pool; no DropBlock", _resnet12))
