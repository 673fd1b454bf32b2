"""`BackboneSpec`: what a backbone module registers in `registry.BACKBONES`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Tuple

from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    name: the `--backbone` value; help: one line for the CLI and reports;
    build(input_shape, hidden, **options): a module mapping inputs [N, *input_shape] to features
    [N, feature_size], with the int attribute `.feature_size`; `inputs`: 'image' (input_shape
    (C, H, W) only) or 'any' (also feature vectors (D,)); `options`: the model settings
    (`ModelConfig` names) it reads besides `hidden`, passed as keywords.
    """

    name: str
    help: str
    build: Callable[..., nn.Module]
    inputs: str = "image"
    options: Tuple[str, ...] = ()
    #: whether `hidden` (--hidden) sets its width; an explicit --hidden is refused when it does not
    uses_hidden: bool = True
    #: the default of each option (what `l2l_app.config.resolve` records)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: problems(options) -> messages naming the flag, for option values it cannot build (config validation)
    problems: Optional[Callable[[Mapping[str, Any]], List[str]]] = None

    def accepts(self, input_shape: Tuple[int, ...]) -> bool:
        return self.inputs == "any" or len(input_shape) == 3

    def make(self, input_shape: Tuple[int, ...], hidden: int, **options: Any) -> nn.Module:
        return self.build(tuple(input_shape), hidden, **{k: v for k, v in options.items() if k in self.options})
