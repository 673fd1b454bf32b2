"""MAML (Finn, Abbeel & Levine, ICML 2017) and its first-order approximation, FOMAML.

Per task: `inner_steps` SGD steps of size `inner_lr` on the support loss, starting from the
meta-parameters; the query loss after adaptation, averaged over the meta-batch, is the
meta-loss.  Second order differentiates through the inner steps; first order (FOMAML) treats
the inner gradients as constants.  At evaluation the adaptation runs `test_inner_steps` steps.

* `MAML` (loop engine): learn2learn's `l2l.algorithms.MAML`, `clone()` / `adapt()` per task.
* `BatchedMAML`: `vmap` over tasks of an inner loop written with `torch.func.grad`; the mean
  query loss is backpropagated to the model's parameters by ordinary autograd.  Batch norm is
  the primitive-op implementation (pytorch/functorch#534).
Batch norm uses batch statistics (see `l2l_app.backbones`), so clones share no running statistics.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..backbones import batchnorm_mode
from ..data.types import EpisodeBatch
from ..engine import BatchedLearner, Params, activation_bytes, parameter_bytes
from ..settings import INNER_STEPS, RATE, Limit, setting
from ..learner import (SMALL_TASK_IMAGES, AlgorithmSettings, AlgorithmSpec, Alias, MetaLearner, QueryMetrics,
                       StepMetrics, accuracy, backprop_query_losses, register)

if TYPE_CHECKING:  # learn2learn is imported when a loop learner is built (slow: torchvision)
    import learn2learn as l2l


@dataclass(frozen=True)
class MAMLSettings(AlgorithmSettings):
    inner_lr: float = setting(0.4, "inner-loop learning rate", limit=RATE)
    inner_steps: int = setting(1, "inner-loop steps in training",
                               limit=Limit(1, INNER_STEPS.high, why=INNER_STEPS.why))
    test_inner_steps: Optional[int] = setting(None, "inner-loop steps at evaluation", limit=INNER_STEPS,
                                              shown_default="--inner-steps")
    first_order: bool = setting(False, "first-order approximation: inner gradients taken as constants (FOMAML)",
                                flags=("--first-order", "--second-order"))

    def resolved(self) -> "MAMLSettings":
        steps = self.inner_steps if self.test_inner_steps is None else self.test_inner_steps
        return dataclasses.replace(self, test_inner_steps=steps)

    def protocol(self) -> Dict[str, Any]:
        s = self.resolved()
        return {**super().protocol(), "test_inner_steps": s.test_inner_steps, "inner_lr": s.inner_lr}



class MAML(MetaLearner):
    """learn2learn MAML wrapper: clone / adapt / backward, one task at a time."""

    engine = "loop"
    settings: MAMLSettings

    def __init__(self, model: nn.Module, settings: MAMLSettings, seed: int = 0) -> None:
        super().__init__(model, settings)
        self.maml = self.wrap(model)

    def wrap(self, model: nn.Module) -> l2l.algorithms.MAML:
        """The learn2learn module whose clone() / adapt() make the inner loop (MAML's: one rate)."""
        import learn2learn as l2l
        return l2l.algorithms.MAML(model, lr=self.settings.inner_lr, first_order=self.settings.first_order)

    def adapted(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
                first_order: bool) -> nn.Module:
        """A clone of the model after `steps` SGD steps on the support loss (support_x [Ns, C, H, W])."""
        learner = self.maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(support_x), support_y), first_order=first_order)
        return learner

    def meta_gradient(self, batch: EpisodeBatch) -> StepMetrics:
        self.zero_grad()
        s = self.settings
        return backprop_query_losses(
            batch, lambda sx, sy, qx: self.adapted(sx, sy, s.inner_steps, s.first_order)(qx))

    def predict(self, support_x, support_y, query_x, ways):
        learner = self.adapted(support_x, support_y, self.settings.test_inner_steps, first_order=True)
        with torch.no_grad():
            return learner(query_x)


class BatchedMAML(BatchedLearner):
    """MAML with `vmap` over tasks of a `torch.func.grad` inner loop.

    Batch norm is always the primitive-op implementation under vmap (pytorch/functorch#534);
    ``bn_impl='native'`` exists only so the tests can show that bug.
    """

    settings: MAMLSettings

    def __init__(self, model: nn.Module, settings: MAMLSettings, seed: int = 0, chunk_size: int | None = None,
                 compile: bool | str = False, bn_impl: str = "primitive") -> None:
        super().__init__(model, settings, chunk_size, compile)
        self.bn_impl = bn_impl

    def adapt(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
              first_order: bool) -> Params:
        """One task: `steps` SGD steps on the support loss. support_x [Ns, C, H, W] -> adapted params."""
        def support_loss(p: Params) -> torch.Tensor:
            return F.cross_entropy(functional_call(self.model, p, (support_x,)), support_y)

        fast = params
        for _ in range(steps):
            grads = grad(support_loss)(fast)
            if first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            fast = {k: self.inner_step(k, fast[k], grads[k]) for k in fast}
        return fast

    def inner_step(self, name: str, value: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """One SGD step of parameter `name`: value - inner_lr * gradient (any shape)."""
        return value - self.settings.inner_lr * gradient

    def _task_query(self, params: Params, support_x, support_y, query_x, query_y, steps: int,
                    first_order: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """One task: (query loss, query logits [Nq, ways]) after adaptation."""
        fast = self.adapt(params, support_x, support_y, steps, first_order)
        logits = functional_call(self.model, fast, (query_x,))
        return F.cross_entropy(logits, query_y), logits

    def _batched_query(self, params: Params, sx, sy, qx, qy, steps: int, first_order: bool):
        """All tasks of a chunk: (losses [B], logits [B, Nq, ways])."""
        def task(sx_, sy_, qx_, qy_):
            return self._task_query(params, sx_, sy_, qx_, qy_, steps, first_order)
        return vmap(task)(sx, sy, qx, qy)

    def meta_gradient(self, batch: EpisodeBatch) -> StepMetrics:
        self.zero_grad()
        b = batch.num_tasks
        params = self.params()
        fn = self.compiled("query", self._batched_query)
        totals = QueryMetrics()
        with batchnorm_mode(self.model, self.bn_impl):
            for _, c in self.chunks(batch):
                losses, logits = fn(params, c.support_x, c.support_y, c.query_x, c.query_y,
                                    self.settings.inner_steps, self.settings.first_order)
                (losses.sum() / b).backward()
                totals.add(losses, logits, c.query_y)
        return totals.means(b)

    def _eval_logits(self, sx, sy, qx, qy) -> torch.Tensor:
        params = self.detached_params()
        with batchnorm_mode(self.model, self.bn_impl), torch.no_grad():
            return self._batched_query(params, sx, sy, qx, qy, self.settings.test_inner_steps, True)[1]

    def predict(self, support_x, support_y, query_x, ways):
        dummy_y = torch.zeros(query_x.shape[0], dtype=torch.long, device=query_x.device)
        return self._eval_logits(support_x[None], support_y[None], query_x[None], dummy_y[None])[0]

    def query_accuracy(self, batch: EpisodeBatch) -> torch.Tensor:
        return torch.cat([accuracy(self._eval_logits(c.support_x, c.support_y, c.query_x, c.query_y),
                                   c.query_y) for _, c in self.chunks(batch)])

    def task_bytes(self, batch: EpisodeBatch) -> int:
        """inner_steps support forwards + one query forward, each kept (x3 with second order:
        activations, their gradients and the double-backward graph; x2 first order), plus
        (inner_steps+1) copies of the parameters (x2 with their gradients)."""
        factor = 2 if self.settings.first_order else 3
        steps = self.settings.inner_steps
        acts = steps * activation_bytes(self.model, batch.support_x[0]) + \
            activation_bytes(self.model, batch.query_x[0])
        return factor * acts + 2 * (steps + 1) * parameter_bytes(self.model)


# CPU (2 cores): the loop; the batched engine is 3.5x slower at 32 tasks.  CUDA (H200): batched,
# 5-8x at 32 tasks (at one task the loop is faster: 11.5 vs 19.8 ms).  The recipe's whole training
# step on an H200, end to end: 6.2 ms captured, 5.8 cuDNN-autotuned, 4.6 compiled, 4.0 compiled and
# autotuned, 1.75 compiled with unfold convolutions (vmap's per-task weights as batched matrix
# products; 10.0 ms uncompiled); benchmarks/results/gpu-h200/bench-maml-omniglot-5w1s*/.
register(AlgorithmSpec(
    name="maml", summary="MAML (Finn et al., 2017): a few SGD steps from a meta-learned initialisation",
    settings=MAMLSettings, loop=MAML, batched=BatchedMAML, gpu_tuning={"compile": True, "conv_impl": "unfold"},
    aliases={"fomaml": Alias({"first_order": True}, "first-order MAML")},
    cpu_batched_up_to_images=SMALL_TASK_IMAGES,
    quick=dict(meta_batch=4, inner_lr=0.4, inner_steps=1, test_inner_steps=3, train_queries=1, iterations=100)))
