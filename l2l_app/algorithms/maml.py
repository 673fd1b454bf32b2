"""MAML (Finn, Abbeel & Levine, ICML 2017) on learn2learn's `l2l.algorithms.MAML`, per-task loop.

Per task: `clone()`, `adapt()` for `inner_steps` SGD steps on the support loss, then
the query loss; its gradient, averaged over the meta-batch, reaches the meta-parameters
through the clone (second order unless `first_order`, which gives FOMAML).
Batch norm uses batch statistics (see `l2l_app.backbones`), so no running statistics
are shared between clones.
"""
from __future__ import annotations

from typing import Dict

import learn2learn as l2l
import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import EpisodeBatch
from .base import MetaLearner, backprop_query_losses


class MAML(MetaLearner):
    """learn2learn MAML wrapper: clone / adapt / backward, one task at a time."""

    engine = "loop"

    def __init__(self, model: nn.Module, inner_lr: float, inner_steps: int,
                 test_inner_steps: int | None = None, first_order: bool = False) -> None:
        super().__init__(model)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        self.first_order = first_order
        self.maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=first_order)

    def _adapted(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
                 first_order: bool) -> nn.Module:
        learner = self.maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(support_x), support_y), first_order=first_order)
        return learner

    def meta_step(self, batch: EpisodeBatch) -> Dict[str, float]:
        self.zero_grad()
        return backprop_query_losses(
            batch, lambda sx, sy, qx: self._adapted(sx, sy, self.inner_steps, self.first_order)(qx))

    def predict(self, support_x, support_y, query_x, ways):
        learner = self._adapted(support_x, support_y, self.test_inner_steps, first_order=True)
        with torch.no_grad():
            return learner(query_x)
