"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Class prototypes are the mean support embeddings; logits are negative squared Euclidean
distances from each query embedding to each prototype.  The model is the embedding alone (no
output layer), so a trained ProtoNet classifies episodes of any number of classes.

* `ProtoNet` (loop engine): one episode at a time, support and query embedded together.
* `BatchedProtoNet`: all tasks share the weights, so no `vmap` is needed: the episodes are
  folded into the batch dimension ([B*(Ns+Nq), C, H, W]), embedded with one large convolution
  per layer, and batch norm takes its statistics per task (`batchnorm_mode(model, impl, tasks=B)`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import batchnorm_mode
from ..data.types import EpisodeBatch
from ..engine import BatchedLearner, activation_bytes, task_losses
from ..learner import (AlgorithmSettings, AlgorithmSpec, MetaLearner, QueryMetrics, StepMetrics, accuracy,
                       backprop_query_losses, register)


@dataclass(frozen=True)
class ProtoNetSettings(AlgorithmSettings):
    """ProtoNet has no settings of its own (episode shape, backbone and optimiser are shared)."""


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

    def __init__(self, model: nn.Module, settings: ProtoNetSettings = ProtoNetSettings(), seed: int = 0) -> None:
        super().__init__(model, settings)

    def meta_gradient(self, batch: EpisodeBatch) -> StepMetrics:
        self.zero_grad()
        return backprop_query_losses(
            batch, lambda sx, sy, qx: episode_logits(self.model, sx, sy, qx, batch.ways))

    def predict(self, support_x, support_y, query_x, ways):
        with torch.no_grad():
            return episode_logits(self.model, support_x, support_y, query_x, ways)


class BatchedProtoNet(BatchedLearner):
    """ProtoNet with all episodes folded into one batch.

    bn_impl: 'native' (default: per-task statistics by moving the tasks into the channel
    dimension, one native/cuDNN batch_norm call; faster on CPU too) or 'primitive' (mean,
    variance, rsqrt); the same numbers to rounding.  No vmap here, so native is safe.
    """

    def __init__(self, model: nn.Module, settings: ProtoNetSettings = ProtoNetSettings(), seed: int = 0,
                 chunk_size: int | None = None, compile: bool | str = False, bn_impl: str = "native") -> None:
        super().__init__(model, settings, chunk_size, compile)
        if bn_impl not in ("native", "primitive"):
            raise ValueError(f"bn_impl must be 'native' or 'primitive', got {bn_impl!r}")
        self.bn_impl = bn_impl

    def _logits(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                ways: int) -> torch.Tensor:
        """support_x [B, Ns, C, H, W], support_y [B, Ns], query_x [B, Nq, ...] -> logits [B, Nq, ways].

        Must be called inside batchnorm_mode(model, impl, tasks=B).
        """
        b, ns = support_x.shape[:2]
        x = torch.cat([support_x, query_x], dim=1)                       # [B, Ns+Nq, C, H, W]
        emb = self.model(x.flatten(0, 1)).reshape(b, x.shape[1], -1)     # [B, Ns+Nq, D]
        return squared_euclidean_logits(emb[:, ns:], prototypes(emb[:, :ns], support_y, ways))

    def _folded_logits(self, sx, sy, qx, ways):
        fn = self.compiled("logits", self._logits)
        with batchnorm_mode(self.model, self.bn_impl, tasks=sx.shape[0]):
            return fn(sx, sy, qx, ways)

    def meta_gradient(self, batch: EpisodeBatch) -> StepMetrics:
        self.zero_grad()
        b = batch.num_tasks
        totals = QueryMetrics()
        for _, chunk in self.chunks(batch):
            logits = self._folded_logits(chunk.support_x, chunk.support_y, chunk.query_x, batch.ways)
            losses = task_losses(logits, chunk.query_y)
            (losses.sum() / b).backward()
            totals.add(losses, logits, chunk.query_y)
        return totals.means(b)

    def predict(self, support_x, support_y, query_x, ways):
        with torch.no_grad():
            return self._folded_logits(support_x[None], support_y[None], query_x[None], ways)[0]

    def query_accuracy(self, batch: EpisodeBatch) -> torch.Tensor:
        accs = []
        with torch.no_grad():
            for _, chunk in self.chunks(batch):
                logits = self._folded_logits(chunk.support_x, chunk.support_y, chunk.query_x, batch.ways)
                accs.append(accuracy(logits, chunk.query_y))
        return torch.cat(accs)

    def task_bytes(self, batch: EpisodeBatch) -> int:
        """One forward of the episode kept for backward, plus its gradient (x2)."""
        return 2 * activation_bytes(self.model, torch.cat([batch.support_x[0], batch.query_x[0]]))


# CPU (2 cores): the loop; the batched engine is 1.9x slower at 32 tasks.  CUDA: batched, 5-8x.
# The recipe's whole training step on an H200, end to end: 3.0 ms captured, 2.7 cuDNN-autotuned,
# 2.2 compiled, 1.8 compiled and autotuned (2.0 with NHWC tensors too); unfold convolutions are
# slower (9.4 ms uncompiled); benchmarks/results/gpu-h200/bench-protonet-omniglot-5w1s*/.
register(AlgorithmSpec(
    name="protonet", summary="Prototypical Networks (Snell et al., 2017): nearest class mean in embedding space",
    settings=ProtoNetSettings, loop=ProtoNet, batched=BatchedProtoNet, head=False,
    gpu_tuning={"compile": True, "cudnn_benchmark": True},
    quick=dict(train_ways=20, train_queries=5, meta_batch=1, iterations=40)))
