"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017), per-task loop engine.

Class prototypes are the mean support embeddings; logits are negative squared
Euclidean distances from each query embedding to each prototype.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import EpisodeBatch
from .base import MetaLearner, backprop_query_losses


def prototypes(support_emb: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean embedding per class. support_emb [..., N, D], support_y [..., N] -> [..., ways, D]."""
    one_hot = F.one_hot(support_y, ways).to(support_emb.dtype)          # [..., N, ways]
    sums = one_hot.transpose(-1, -2) @ support_emb                      # [..., ways, D]
    counts = one_hot.sum(dim=-2).unsqueeze(-1)                          # [..., ways, 1]
    return sums / counts


def squared_euclidean_logits(query_emb: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """-||q - c||^2. query_emb [..., M, D], protos [..., ways, D] -> [..., M, ways]."""
    return -(query_emb.unsqueeze(-2) - protos.unsqueeze(-3)).pow(2).sum(dim=-1)


def episode_logits(embed: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor,
                   query_x: torch.Tensor, ways: int) -> torch.Tensor:
    """Embed support and query together (one batch: batch-norm statistics of the whole episode).

    support_x [Ns, C, H, W], query_x [Nq, C, H, W] -> logits [Nq, ways].
    """
    emb = embed(torch.cat([support_x, query_x]))
    support_emb, query_emb = emb[: support_x.shape[0]], emb[support_x.shape[0]:]
    return squared_euclidean_logits(query_emb, prototypes(support_emb, support_y, ways))


class ProtoNet(MetaLearner):
    """ProtoNet head over an embedding network; one episode at a time."""

    engine = "loop"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)

    def meta_step(self, batch: EpisodeBatch) -> Dict[str, float]:
        self.zero_grad()
        return backprop_query_losses(
            batch, lambda sx, sy, qx: episode_logits(self.model, sx, sy, qx, batch.ways))

    def predict(self, support_x, support_y, query_x, ways):
        with torch.no_grad():
            return episode_logits(self.model, support_x, support_y, query_x, ways)
