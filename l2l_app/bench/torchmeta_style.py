"""A re-implementation of how Torchmeta computes MAML, for benchmarking against our engines.

Torchmeta (Deleu et al., 2019, https://github.com/tristandeleu/pytorch-meta) pins torch<1.10
and cannot be installed next to torch 2.x, so this module re-implements its *style* of
computation (written here from its documented design, not copied):

* modules whose ``forward(x, params=None)`` takes an explicit, optional dictionary of
  parameters (``MetaModule``); ``params=None`` means "use my own parameters";
  containers hand each child the sub-dictionary under the child's name (``get_subdict``);
* an inner update, ``gradient_update_parameters``, that calls ``torch.autograd.grad`` with
  ``create_graph=not first_order`` and builds a *new* ``OrderedDict`` of adapted tensors;
* one task at a time, the query losses of the whole meta-batch summed into one outer loss,
  divided by the batch size and backpropagated once at the end (as Torchmeta's MAML example does,
  so every task's graph stays alive until the backward: more memory than learn2learn's loop).

The network mirrors `backbones.Classifier(Conv4)` with the same parameter names
(``backbone.blocks.{i}.0`` conv, ``backbone.blocks.{i}.1`` batch norm, ``head``), so
``load_state_dict(classifier.state_dict())`` loads the same weights and meta-gradients can be
compared name by name.  Batch norm uses the statistics of the current batch (Torchmeta's MAML
example builds ``MetaBatchNorm2d(track_running_stats=False)``), like `TaskBatchNorm2d`.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..algorithms.maml import MAMLSettings
from ..backbones import BN_EPS, Classifier, Conv4, TaskBatchNorm2d
from ..data.types import EpisodeBatch
from ..learner import MetaLearner, accuracy

ParamDict = "OrderedDict[str, torch.Tensor]"


class MetaModule(nn.Module):
    """A module whose forward accepts `params`: a dict of tensors that replaces its own parameters."""

    def meta_named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[Tuple[str, nn.Parameter]]:
        return self.named_parameters(prefix=prefix, recurse=recurse)

    def get_subdict(self, params: Optional[Dict[str, torch.Tensor]], key: str) -> Optional[Dict[str, torch.Tensor]]:
        """The entries of `params` under `key.` with that prefix removed (None passes through)."""
        if params is None:
            return None
        pattern = re.compile(r"^" + re.escape(key) + r"\.(.+)")
        out = OrderedDict()
        for name, value in params.items():
            match = pattern.match(name)
            if match:
                out[match.group(1)] = value
        return out or None

    def _own(self, params: Optional[Dict[str, torch.Tensor]], name: str) -> torch.Tensor:
        return getattr(self, name) if params is None else params[name]


class MetaConv2d(nn.Conv2d, MetaModule):
    def forward(self, x: torch.Tensor, params: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        bias = self._own(params, "bias") if self.bias is not None else None
        return F.conv2d(x, self._own(params, "weight"), bias, self.stride, self.padding, self.dilation, self.groups)


class MetaLinear(nn.Linear, MetaModule):
    def forward(self, x: torch.Tensor, params: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        return F.linear(x, self._own(params, "weight"), self._own(params, "bias"))


class MetaBatchNorm2d(MetaModule):
    """Batch norm with batch statistics only (no running statistics), affine parameters from `params`."""

    def __init__(self, channels: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor, params: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        return F.batch_norm(x, None, None, self._own(params, "weight"), self._own(params, "bias"),
                            training=True, eps=self.eps)


class MetaSequential(nn.Sequential, MetaModule):
    """Sequential container: MetaModule children get their sub-dictionary, others are called plainly."""

    def forward(self, x: torch.Tensor, params: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        for name, module in self._modules.items():
            if isinstance(module, MetaModule):
                x = module(x, params=self.get_subdict(params, name))
            else:
                x = module(x)
        return x


class MetaConv4(MetaModule):
    """Conv4 (same blocks, names and feature size as `backbones.Conv4`) with explicit parameters."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28, max_pool: bool = True) -> None:
        super().__init__()
        stride = 1 if max_pool else 2
        blocks = []
        for i in range(4):
            layers = [MetaConv2d(in_channels if i == 0 else hidden, hidden, 3, stride=stride, padding=1),
                      MetaBatchNorm2d(hidden), nn.ReLU()]
            if max_pool:
                layers.append(nn.MaxPool2d(2))
            blocks.append(MetaSequential(*layers))
        self.blocks = MetaSequential(*blocks)
        side = image_size
        for _ in range(4):
            side = side // 2 if max_pool else (side + 1) // 2
        self.feature_size = hidden * side * side

    def forward(self, x: torch.Tensor, params: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        return self.blocks(x, params=self.get_subdict(params, "blocks")).flatten(1)


class MetaClassifier(MetaModule):
    """MetaConv4 features -> MetaLinear over `ways` classes; parameter names match `backbones.Classifier`."""

    def __init__(self, backbone: MetaConv4, ways: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = MetaLinear(backbone.feature_size, ways)
        self.feature_size = backbone.feature_size

    def forward(self, x: torch.Tensor, params: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        features = self.backbone(x, params=self.get_subdict(params, "backbone"))
        return self.head(features, params=self.get_subdict(params, "head"))


def from_classifier(model: nn.Module) -> MetaClassifier:
    """A MetaClassifier with the architecture and a copy of the weights of `Classifier(Conv4)` `model`."""
    if not isinstance(model, Classifier) or not isinstance(model.backbone, Conv4):
        raise TypeError(f"the torchmeta-style model mirrors Classifier(Conv4); got {type(model).__name__}")
    conv0 = model.backbone.blocks[0][0]
    bns = [m for m in model.modules() if isinstance(m, TaskBatchNorm2d)]
    max_pool = conv0.stride == (1, 1)
    backbone = MetaConv4(conv0.in_channels, conv0.out_channels, max_pool=max_pool)
    backbone.feature_size = model.backbone.feature_size  # the image side only sets this width
    meta = MetaClassifier(backbone, model.head.out_features)
    for bn in meta.modules():
        if isinstance(bn, MetaBatchNorm2d):
            bn.eps = bns[0].eps if bns else BN_EPS
    meta.load_state_dict(model.state_dict(), strict=True)
    p = next(model.parameters())
    return meta.to(device=p.device, dtype=p.dtype)


def gradient_update_parameters(model: MetaModule, loss: torch.Tensor,
                               params: Optional[Dict[str, torch.Tensor]] = None,
                               step_size: float = 0.5, first_order: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """One SGD step on `loss` w.r.t. `params` (default: the model's own), as a new OrderedDict.

    Second order (``first_order=False``) keeps the graph of the gradient (create_graph=True) so the
    meta-gradient flows through the update; first order treats the inner gradient as a constant.
    """
    if params is None:
        params = OrderedDict(model.meta_named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
    return OrderedDict((name, value - step_size * g) for (name, value), g in zip(params.items(), grads))


class TorchmetaMAML(MetaLearner):
    """MAML / FOMAML computed the Torchmeta way on a `MetaClassifier` (one task at a time)."""

    engine = "torchmeta"

    settings: MAMLSettings

    def __init__(self, model: MetaClassifier, settings: MAMLSettings) -> None:
        super().__init__(model, settings)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
              first_order: bool) -> "OrderedDict[str, torch.Tensor]":
        params = None
        for _ in range(steps):
            loss = F.cross_entropy(self.model(support_x, params=params), support_y)
            params = gradient_update_parameters(self.model, loss, params, self.settings.inner_lr, first_order)
        return params if params is not None else OrderedDict(self.model.meta_named_parameters())

    def meta_gradient(self, batch: EpisodeBatch) -> Dict[str, torch.Tensor]:
        self.zero_grad()
        outer_loss = torch.zeros((), device=batch.query_x.device, dtype=next(self.model.parameters()).dtype)
        acc = torch.zeros_like(outer_loss)
        for sx, sy, qx, qy in batch.tasks():
            params = self.adapt(sx, sy, self.settings.inner_steps, self.settings.first_order)
            logits = self.model(qx, params=params)
            outer_loss = outer_loss + F.cross_entropy(logits, qy)
            acc = acc + accuracy(logits.detach(), qy)
        outer_loss = outer_loss / batch.num_tasks
        outer_loss.backward()
        return {"loss": outer_loss.detach(), "accuracy": acc / batch.num_tasks}

    def predict(self, support_x, support_y, query_x, ways):
        params = self.adapt(support_x, support_y, self.settings.test_inner_steps, first_order=True)
        with torch.no_grad():
            return self.model(query_x, params=params)


def build(config, model: nn.Module) -> Tuple[Optional[TorchmetaMAML], Optional[str]]:
    """(the Torchmeta-style learner on a copy of `model`, None), or (None, why it does not apply):
    it computes MAML/FOMAML on Classifier(Conv4) only."""
    if type(config.algorithm) is not MAMLSettings:  # MAML itself, not an algorithm built on its settings
        return None, f"not applicable: Torchmeta-style computation is MAML/FOMAML only (--algo {config.algo})"
    try:
        return TorchmetaMAML(from_classifier(model), config.algorithm), None
    except TypeError as exc:
        return None, f"not applicable: {exc}"
