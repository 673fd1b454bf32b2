"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020, "Rapid Learning or
Feature Reuse? Towards Understanding the Effectiveness of MAML").

MAML whose inner loop adapts only the head, the final linear layer of `Classifier`.  Per task,
the body (`model.backbone`) embeds the support and the query images as it is; the head takes
`inner_steps` SGD steps of size `inner_lr` on the support loss of those features, starting from
its meta-learned initialisation; the query loss after adaptation, averaged over the meta-batch,
is backpropagated to the body and to the head's initialisation.  Second order differentiates
through the head's inner steps (so the body also gets a gradient through the support features);
first order treats the inner gradients as constants.  At evaluation the head takes
`test_inner_steps` first-order steps.

The head's adaptation is MAML's own, run on features instead of images: both engines hold a
MAML learner of the matching engine over `model.head` (`maml.MAML` / `maml.BatchedMAML`).

* `ANIL` (loop engine): one task at a time; body features of the support set and of the query
  set (two forwards, so batch norm takes the support's and the query's statistics, like MAML),
  then learn2learn's `l2l.algorithms.MAML(model.head)` clone / adapt on the support features.
* `BatchedANIL`: the body runs once per chunk of tasks, all support images folded into one
  batch with per-task batch-norm statistics (`batchnorm_mode(backbone, impl, tasks=B)`), the
  query images likewise; then `vmap` over tasks of a `torch.func.grad` inner loop on the head's
  parameters.  The mean query loss is backpropagated by ordinary autograd.  No vmap runs over
  the body, so native batch norm is safe (pytorch/functorch#534 concerns native batch norm's
  double backward under vmap; here the body needs only its first backward).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..backbones import batchnorm_mode
from ..data.types import EpisodeBatch
from ..engine import BatchedLearner, Params, activation_bytes, parameter_bytes, task_losses
from ..learner import (SMALL_TASK_IMAGES, AlgorithmSpec, MetaLearner, QueryMetrics, StepMetrics, accuracy,
                       backprop_query_losses, register)
from .maml import MAML, BatchedMAML, MAMLSettings


@dataclass(frozen=True)
class ANILSettings(MAMLSettings):
    """MAML's settings (same names, defaults, ranges and flags), applied to the head alone.

    The defaults are MAML's (inner_lr 0.4: Finn et al.'s Omniglot 5-way rate): the ANIL paper
    trains with MAML's architectures (its Section 4) and states no other rate in its main text;
    the recipes (`recipes/anil.recipes.json`) set MAML's published per-benchmark rates.
    """

    def protocol(self) -> Dict[str, Any]:
        return {**super().protocol(), "adapted": "head only"}

    def for_head(self) -> MAMLSettings:
        """The same values as MAML settings, for the MAML learner that adapts the head."""
        return MAMLSettings(**dataclasses.asdict(self))


def body_and_head(model: nn.Module) -> Tuple[nn.Module, nn.Linear]:
    """(model.backbone, model.head) of a `Classifier`; TypeError for a model without them."""
    body, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if not isinstance(body, nn.Module) or not isinstance(head, nn.Linear):
        raise TypeError(f"ANIL needs a Classifier (.backbone and a linear .head), got {type(model).__name__}")
    return body, head


class ANIL(MetaLearner):
    """ANIL one task at a time: the body's features, then learn2learn MAML on the head."""

    engine = "loop"
    settings: ANILSettings

    def __init__(self, model: nn.Module, settings: ANILSettings, seed: int = 0) -> None:
        super().__init__(model, settings)
        self.body, head = body_and_head(model)
        #: MAML over the head alone: l2l.algorithms.MAML(model.head, lr=inner_lr, first_order=...)
        self.head_learner = MAML(head, self.settings.for_head())

    def _query_logits(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """One task, training: support_x [Ns, C, H, W], support_y [Ns], query_x [Nq, C, H, W] ->
        query logits [Nq, ways] after `inner_steps` head steps on the support features [Ns, D]."""
        s = self.settings
        head = self.head_learner.adapted(self.body(support_x), support_y, s.inner_steps, s.first_order)
        return head(self.body(query_x))

    def meta_gradient(self, batch: EpisodeBatch) -> StepMetrics:
        self.zero_grad()
        return backprop_query_losses(batch, self._query_logits)

    def predict(self, support_x, support_y, query_x, ways):
        """`test_inner_steps` first-order head steps on the support features; query logits [Nq, ways]."""
        with torch.no_grad():
            support_features, query_features = self.body(support_x), self.body(query_x)
        return self.head_learner.predict(support_features, support_y, query_features, ways)


class BatchedANIL(BatchedLearner):
    """ANIL with the body run once per chunk (tasks folded into the batch) and `vmap` over the
    tasks of a `torch.func.grad` inner loop on the head.

    bn_impl: 'native' (default; per-task statistics in one native batch_norm call) or
    'primitive' (mean, variance, rsqrt); the same numbers to rounding.
    """

    settings: ANILSettings

    def __init__(self, model: nn.Module, settings: ANILSettings, seed: int = 0, chunk_size: int | None = None,
                 compile: bool | str = False, bn_impl: str = "native") -> None:
        super().__init__(model, settings, chunk_size, compile)
        if bn_impl not in ("native", "primitive"):
            raise ValueError(f"bn_impl must be 'native' or 'primitive', got {bn_impl!r}")
        self.bn_impl = bn_impl
        self.body, head = body_and_head(model)
        #: functional SGD on the head's parameters (`BatchedMAML.adapt` with the head as its model)
        self.head_learner = BatchedMAML(head, self.settings.for_head())

    def head_params(self, detached: bool = False) -> Params:
        """The head's parameters by name ('weight' [ways, D], 'bias' [ways]): the real leaves, or detached."""
        return {k: p.detach() if detached else p for k, p in self.head_learner.model.named_parameters()}

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, C, H, W] -> body features [B, N, D], one forward for the B*N images.

        Must be called inside batchnorm_mode(body, impl, tasks=B): statistics per task.
        """
        return self.body(x.flatten(0, 1)).reshape(x.shape[0], x.shape[1], -1)

    def _chunk_logits(self, head: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                      query_x: torch.Tensor, steps: int, first_order: bool) -> torch.Tensor:
        """support_x [B, Ns, C, H, W], support_y [B, Ns], query_x [B, Nq, C, H, W] -> query logits
        [B, Nq, ways] after `steps` SGD steps of the head (params `head`) on each task's support features."""
        support_features, query_features = self._features(support_x), self._features(query_x)

        def task(sf: torch.Tensor, sy: torch.Tensor, qf: torch.Tensor) -> torch.Tensor:
            fast = self.head_learner.adapt(head, sf, sy, steps, first_order)
            return functional_call(self.head_learner.model, fast, (qf,))

        return vmap(task)(support_features, support_y, query_features)

    def _logits(self, head: Params, chunk: EpisodeBatch, steps: int, first_order: bool) -> torch.Tensor:
        """Query logits [B, Nq, ways] of a chunk of B tasks, with batch norm per task."""
        fn = self.compiled("logits", self._chunk_logits)
        with batchnorm_mode(self.body, self.bn_impl, tasks=chunk.num_tasks):
            return fn(head, chunk.support_x, chunk.support_y, chunk.query_x, steps, first_order)

    def meta_gradient(self, batch: EpisodeBatch) -> StepMetrics:
        self.zero_grad()
        b, s = batch.num_tasks, self.settings
        head = self.head_params()
        totals = QueryMetrics()
        for _, chunk in self.chunks(batch):
            logits = self._logits(head, chunk, s.inner_steps, s.first_order)
            losses = task_losses(logits, chunk.query_y)
            (losses.sum() / b).backward()
            totals.add(losses, logits, chunk.query_y)
        return totals.means(b)

    def _eval_logits(self, chunk: EpisodeBatch) -> torch.Tensor:
        """Query logits [B, Nq, ways] after `test_inner_steps` first-order head steps (no meta-gradient)."""
        with torch.no_grad():
            return self._logits(self.head_params(detached=True), chunk, self.settings.test_inner_steps, True)

    def predict(self, support_x, support_y, query_x, ways):
        dummy_y = torch.zeros(query_x.shape[0], dtype=torch.long, device=query_x.device)
        one = EpisodeBatch(support_x[None], support_y[None], query_x[None], dummy_y[None], ways,
                           support_x.shape[0] // ways, query_x.shape[0] // ways)
        return self._eval_logits(one)[0]

    def query_accuracy(self, batch: EpisodeBatch) -> torch.Tensor:
        return torch.cat([accuracy(self._eval_logits(c), c.query_y) for _, c in self.chunks(batch)])

    def task_bytes(self, batch: EpisodeBatch) -> int:
        """One task's share of a meta_step, in bytes:

        * the body's forward of the support images and of the query images, kept for backward,
          plus their gradients (x2);
        * per inner step, the support features [Ns, D] and logits [Ns, ways] of the head's
          forward and backward (x3 with second order: values, gradients, double-backward graph;
          x2 first order);
        * (inner_steps + 1) copies of the head's parameters (x2 with their gradients).
        The body's parameters are shared by all tasks and not counted."""
        s = self.settings
        head = self.head_learner.model
        ns, element = batch.support_x.shape[1], batch.support_x.element_size()
        body = activation_bytes(self.body, batch.support_x[0]) + activation_bytes(self.body, batch.query_x[0])
        per_step = ns * (head.in_features + head.out_features) * element
        factor = 2 if s.first_order else 3
        return 2 * body + factor * s.inner_steps * per_step + 2 * (s.inner_steps + 1) * parameter_bytes(head)


# CPU (benchmarks/results/cpu/anil-omniglot-5w1s): the loop; batched is 0.72x at 32 tasks on one
# thread (though 1.99x faster than batched MAML).  CUDA (H100, benchmarks/results/gpu-h100/): batched,
# 9.3x the loop at 32 tasks (18.8 vs 175.6 ms).
# quick: 55.6-58.6% on seeds 0-3 (100 test episodes, hidden 32; about 11 s on one CPU core); the
# untrained model with 3 test-time head steps scores 35-39% there, so the run learns well above it.
register(AlgorithmSpec(
    name="anil", summary="ANIL (Raghu et al., 2020): MAML that adapts only the output layer",
    settings=ANILSettings, loop=ANIL, batched=BatchedANIL, cpu_batched_up_to_images=SMALL_TASK_IMAGES,
    quick=dict(meta_batch=4, inner_lr=0.4, inner_steps=1, test_inner_steps=3, train_queries=1, iterations=80)))
