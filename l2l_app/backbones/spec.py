"""`BackboneSpec`: what a backbone module registers in `registry.BACKBONES`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    name: the `--backbone` value; help: one line for the CLI and reports;
    build(in_channels, image_size, hidden): a module mapping [N, in_channels, image_size,
    image_size] to features [N, feature_size], with the int attribute `.feature_size`.
    """

    name: str
    help: str
    build: Callable[[int, int, int], nn.Module]
