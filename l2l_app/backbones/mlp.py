"""`mlp`: a multilayer perceptron, the backbone for feature vectors (`--dataset features`).

Input [N, *input_shape] is flattened to [N, F] (F = D for vectors (D,), C*H*W for images, so it
also runs on image datasets), then each size h_i of `--mlp-hidden h_1,...,h_k` applies
Linear(h_{i-1}, h_i) -> ReLU (h_0 = F), giving features [N, h_k]; `feature_size` = h_k.

No batch norm and no module used twice: the network is a plain function of its parameters, so
torch.func's vmap / functional_call (the batched engines) compute exactly what the loop engine
computes.  `--hidden` (conv filters) does not apply; the sizes come from `--mlp-hidden`.
"""
from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES
from .spec import BackboneSpec

#: --mlp-hidden when none is given
DEFAULT_HIDDEN = "256,256"
#: deeper plain ReLU stacks without normalisation train poorly from few-shot gradients
MAX_LAYERS = 8
#: a 16384 x 16384 layer is already 268M weights, which the batched engine copies per task
MAX_WIDTH = 16384


def parse_hidden_sizes(text: Any) -> Tuple[int, ...]:
    """'256,256' -> (256, 256); ValueError saying what to write unless 1..MAX_LAYERS positive
    whole numbers, each at most MAX_WIDTH, separated by commas."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isdigit() and p.isascii() for p in parts):
        bad = next(p for p in parts if not (p.isdigit() and p.isascii()))
        raise ValueError(f"{bad!r} is not a positive whole number; write layer sizes separated by commas, "
                         f"e.g. {DEFAULT_HIDDEN}")
    sizes = tuple(int(p) for p in parts)
    if len(sizes) > MAX_LAYERS:
        raise ValueError(f"{len(sizes)} layers, at most {MAX_LAYERS} are allowed; give fewer sizes")
    if min(sizes) < 1:
        raise ValueError(f"a layer of {min(sizes)} units; every size must be at least 1")
    if max(sizes) > MAX_WIDTH:
        raise ValueError(f"a layer of {max(sizes)} units; at most {MAX_WIDTH} per layer "
                         f"({MAX_WIDTH}x{MAX_WIDTH} is already {MAX_WIDTH * MAX_WIDTH:,} weights)")
    return sizes


def hidden_problems(options: Mapping[str, Any]) -> List[str]:
    """Config validation: one message naming --mlp-hidden when its value cannot be built."""
    text = options.get("mlp_hidden")
    if text is None:
        return []
    try:
        parse_hidden_sizes(text)
    except ValueError as exc:
        return [f"--mlp-hidden {str(text)!r}: {exc}"]
    return []


class MLP(nn.Module):
    """Flatten, then Linear -> ReLU per hidden size: input [N, *input_shape] -> features [N, sizes[-1]]."""

    def __init__(self, in_features: int, sizes: Sequence[int]) -> None:
        super().__init__()
        if not sizes:
            raise ValueError("an MLP needs at least one hidden size")
        layers: List[nn.Module] = []
        width = in_features
        for size in sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.feature_size = int(sizes[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, *input_shape] (any shape whose trailing dims hold in_features numbers) -> [N, feature_size]."""
        return self.layers(x.flatten(1))


def _mlp(input_shape: Tuple[int, ...], hidden: int, mlp_hidden: Optional[str] = None) -> MLP:
    """The registered builder; `hidden` (conv filters) is not used."""
    text = DEFAULT_HIDDEN if mlp_hidden is None else mlp_hidden
    try:
        sizes = parse_hidden_sizes(text)
    except ValueError as exc:
        raise ConfigError(f"--mlp-hidden {str(text)!r}: {exc}") from None
    in_features = math.prod(input_shape)
    if in_features < 1:
        raise ConfigError(f"--backbone mlp needs inputs of at least one number, got input shape {tuple(input_shape)}; "
                          "build it with the data's input shape (a features dataset's D is read from the data)")
    return MLP(in_features, sizes)


BACKBONES.register("mlp", BackboneSpec(
    "mlp", "flatten, then Linear/ReLU layers of --mlp-hidden sizes (feature vectors; also flattened images)",
    _mlp, inputs="any", options=("mlp_hidden",), defaults={"mlp_hidden": DEFAULT_HIDDEN},
    problems=hidden_problems, uses_hidden=False))
