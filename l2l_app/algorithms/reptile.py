"""Reptile (Nichol, Achiam & Schulman, 2018).

Per task: copy the meta-weights theta, run k inner steps of SGD or Adam (beta1 = 0, as in the
paper) on mini-batches of the task's support set, giving theta~.  The meta update
theta <- theta + eps * mean(theta~ - theta) is expressed as a gradient: `meta_gradient` writes
theta - mean(theta~) into `.grad`, and the meta-optimiser is plain SGD with lr = eps, linearly
annealed from --meta-lr to --meta-lr-final.  The inner optimiser state starts fresh for every task.

* `Reptile` (loop engine): a deep copy and a torch.optim optimiser per task.
* `BatchedReptile`: `vmap` over tasks of functional SGD or Adam (torch.optim.Adam's formula,
  bias corrections included) on the mini-batches of `minibatch_schedule`, drawn from the
  learner's own generator exactly like the loop class.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..backbones import batchnorm_mode
from ..data.types import EpisodeBatch
from ..engine import BatchedLearner, Params, activation_bytes, adam_adapt, parameter_bytes, sgd_adapt, task_losses
from ..settings import FLOAT32_MAX, INNER_STEPS, RATE, Limit, setting
from ..learner import (AlgorithmSettings, AlgorithmSpec, MetaLearner, MetaOptimizer, Optimizers, QueryMetrics,
                       StepMetrics, accuracy, register)

ADAM_BETAS = (0.0, 0.999)
ADAM_EPS = 1e-8
INNER_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class ReptileSettings(AlgorithmSettings):
    inner_lr: float = setting(1e-3, "inner-loop learning rate", limit=RATE)
    inner_steps: int = setting(1, "inner-loop steps in training", limit=INNER_STEPS)
    test_inner_steps: Optional[int] = setting(None, "inner-loop steps at evaluation", limit=INNER_STEPS,
                                              shown_default="--inner-steps")
    inner_batch: int = setting(10, "inner mini-batch size",
                               limit=Limit(1, 100_000, why="more than any support set holds"))
    inner_optimizer: str = setting("adam", "inner optimiser (adam: beta1 = 0)", choices=INNER_OPTIMIZERS)
    transductive: bool = setting(True, "batch-norm statistics over all queries at once",
                                 flags=("--transductive", "--no-transductive"))
    meta_lr_final: Optional[float] = setting(None, "final epsilon (linear annealing from --meta-lr)",
                                             limit=Limit(0.0, FLOAT32_MAX, integer=False,
                                                         why="the largest float32"),
                                             shown_default="0")

    def resolved(self) -> "ReptileSettings":
        steps = self.inner_steps if self.test_inner_steps is None else self.test_inner_steps
        final = 0.0 if self.meta_lr_final is None else self.meta_lr_final
        return dataclasses.replace(self, test_inner_steps=steps, meta_lr_final=final)

    def protocol(self) -> Dict[str, Any]:
        s = self.resolved()
        batchnorm = super().protocol()["batchnorm"] if s.transductive else \
            "batch statistics of support + one query (non-transductive)"
        return {"batchnorm": batchnorm, "test_inner_steps": s.test_inner_steps, "inner_lr": s.inner_lr}



def _sgd_with_linear_annealing(params: List[torch.Tensor], optim, settings: ReptileSettings,
                               capturable: bool = False) -> Optimizers:
    """Plain SGD with lr = epsilon, annealed linearly from --meta-lr to --meta-lr-final over --iterations.

    `capturable` (for a CUDA graph): epsilon is a 0-d tensor on the parameters' device, filled in
    place by the scheduler (no host read) and read by a fused SGD step inside the graph, so the
    annealing needs no new capture.  The schedule's base stays a float, so computing the next
    epsilon reads nothing back from the device.
    """
    if capturable:
        lr = torch.tensor(float(optim.meta_lr), device=params[0].device, dtype=params[0].dtype)
        optimizer = torch.optim.SGD(params, lr=lr, fused=True)
        optimizer.param_groups[0]["initial_lr"] = float(optim.meta_lr)
    else:
        optimizer = torch.optim.SGD(params, lr=optim.meta_lr)
    ratio = settings.resolved().meta_lr_final / optim.meta_lr

    def linear(step: int) -> float:
        return 1.0 + (ratio - 1.0) * min(step / optim.iterations, 1.0)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, linear)


REPTILE_SGD = MetaOptimizer("SGD with lr = epsilon, annealed linearly to --meta-lr-final", (),
                            _sgd_with_linear_annealing, capturable=True, spans_iterations=True,
                            defaults={"meta_lr": 1.0})  # Nichol et al.'s epsilon: the whole step towards the mean


def minibatch_schedule(num_tasks: int, num_support: int, inner_batch: int, steps: int,
                       generator: torch.Generator) -> torch.Tensor:
    """Indices of each inner step's mini-batch, [num_tasks, steps, min(inner_batch, num_support)].

    Each task walks through its own random permutation of the support set, cycling
    (so every example is used before any is repeated).  A batch never exceeds the support
    set: a batch of 10 from 5 images would hold each twice, which gives the same mean loss,
    gradient and batch-norm statistics as the 5 images once, at twice the cost.
    """
    inner_batch = min(inner_batch, num_support)
    perms = torch.stack([torch.randperm(num_support, generator=generator) for _ in range(num_tasks)])
    positions = torch.arange(steps * inner_batch) % num_support
    return perms[:, positions].reshape(num_tasks, steps, inner_batch)


def evaluation_schedule(num_support: int, settings: ReptileSettings) -> torch.Tensor:
    """The one schedule used to adapt at evaluation, [1, test_inner_steps, batch]: from a fresh
    generator seeded 0, so an evaluation draws nothing from the training generator."""
    gen = torch.Generator().manual_seed(0)
    return minibatch_schedule(1, num_support, settings.inner_batch, settings.test_inner_steps, gen)


def inner_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown inner optimiser {name!r}; choose adam or sgd")


def query_logits(model: nn.Module, support_x: torch.Tensor, query_x: torch.Tensor,
                 transductive: bool) -> torch.Tensor:
    """Query logits [Nq, ways] after adaptation.

    transductive: the query set is one batch (batch-norm statistics over all queries);
    otherwise each query is classified alone, in a batch with the support set.
    """
    if transductive:
        return model(query_x)
    nq, ns = query_x.shape[0], support_x.shape[0]
    joined = torch.cat([support_x.unsqueeze(0).expand(nq, *support_x.shape), query_x.unsqueeze(1)], 1)
    with batchnorm_mode(model, "primitive", tasks=nq):
        logits = model(joined.flatten(0, 1))
    return logits.reshape(nq, ns + 1, -1)[:, -1]


class _MinibatchGenerator:
    """The mini-batch generator both engines draw from (the same seed gives the same schedules);
    its state is part of the learner's state (checkpoints, resume)."""

    settings: ReptileSettings

    def _init_generator(self, seed: int) -> None:
        if self.settings.inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"unknown inner optimiser {self.settings.inner_optimizer!r}; choose adam or sgd")
        self.generator = torch.Generator().manual_seed(seed)

    def draw_step_inputs(self, num_tasks: int, num_support: int, device: torch.device) -> Dict[str, torch.Tensor]:
        """The meta-step's mini-batch schedule [B, inner_steps, inner_batch], drawn now, on `device`."""
        s = self.settings
        schedule = minibatch_schedule(num_tasks, num_support, s.inner_batch, s.inner_steps, self.generator)
        if device.type == "cuda":
            # from pinned memory the copy is queued behind the GPU's work; from pageable memory it would
            # wait for that work to finish, a host synchronisation every step (the caching host allocator
            # keeps the pinned block until the copy is done)
            schedule = schedule.pin_memory()
        return {"schedule": schedule.to(device, non_blocking=True)}

    def extra_state(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())  # a checkpoint mapped to a GPU holds it there


class Reptile(_MinibatchGenerator, MetaLearner):
    """Reptile with a fresh inner optimiser per task, one task at a time."""

    engine = "loop"

    def __init__(self, model: nn.Module, settings: ReptileSettings, seed: int = 0) -> None:
        MetaLearner.__init__(self, model, settings)
        self._init_generator(seed)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, schedule: torch.Tensor) -> nn.Module:
        """A copy of the model trained on the support mini-batches in `schedule` [steps, inner_batch]."""
        fast = copy.deepcopy(self.model)
        opt = inner_optimizer(self.settings.inner_optimizer, fast.parameters(), self.settings.inner_lr)
        for idx in schedule:
            opt.zero_grad()
            F.cross_entropy(fast(support_x[idx]), support_y[idx]).backward()
            opt.step()
        return fast

    def meta_gradient(self, batch: EpisodeBatch, schedule: torch.Tensor | None = None) -> StepMetrics:
        """schedule: optional [B, steps, inner_batch] mini-batch indices (drawn from self.generator if None)."""
        self.zero_grad()
        if schedule is None:
            schedule = self.step_inputs(batch)["schedule"]
        meta = list(self.model.parameters())
        deltas = [torch.zeros_like(p) for p in meta]
        totals = QueryMetrics()
        for i, (sx, sy, qx, qy) in enumerate(batch.tasks()):
            fast = self.adapt(sx, sy, schedule[i])
            for d, p, q in zip(deltas, meta, fast.parameters()):
                d += (p.detach() - q.detach()) / batch.num_tasks
            with torch.no_grad():
                logits = query_logits(fast, sx, qx, self.settings.transductive)
                totals.add(F.cross_entropy(logits, qy), logits, qy)
        for p, d in zip(meta, deltas):
            p.grad = d
        return totals.means(batch.num_tasks)

    def predict(self, support_x, support_y, query_x, ways):
        fast = self.adapt(support_x, support_y, evaluation_schedule(support_x.shape[0], self.settings)[0])
        with torch.no_grad():
            return query_logits(fast, support_x, query_x, self.settings.transductive)


class BatchedReptile(_MinibatchGenerator, BatchedLearner):
    """Reptile with `vmap` over tasks of functional SGD / Adam (beta1 = 0).

    Same `meta_step(batch, schedule=None)` as `Reptile`; the same seed gives the same mini-batch
    schedules (same generator consumption).
    """

    def __init__(self, model: nn.Module, settings: ReptileSettings, seed: int = 0,
                 chunk_size: int | None = None, compile: bool | str = False, bn_impl: str = "primitive") -> None:
        BatchedLearner.__init__(self, model, settings, chunk_size, compile)
        self._init_generator(seed)
        self.bn_impl = bn_impl

    def _loss(self, p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.model, p, (x,)), y)

    def _batched_adapt(self, params: Params, xs: torch.Tensor, ys: torch.Tensor) -> Params:
        """xs [B, steps, inner_batch, C, H, W], ys [B, steps, inner_batch] -> params with a leading [B]."""
        s = self.settings

        def task(xs_, ys_):
            if s.inner_optimizer == "sgd":
                return sgd_adapt(self._loss, params, xs_, ys_, s.inner_lr)
            return adam_adapt(self._loss, params, xs_, ys_, s.inner_lr, ADAM_BETAS, ADAM_EPS)
        return vmap(task)(xs, ys)

    def _query_logits(self, fast: Params, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Batched `query_logits`: fast [B, ...], support_x [B, Ns, ...], query_x [B, Nq, ...]."""
        if self.settings.transductive:
            with batchnorm_mode(self.model, self.bn_impl):
                return vmap(lambda p, q: functional_call(self.model, p, (q,)))(fast, query_x)
        nq, ns = query_x.shape[1], support_x.shape[1]

        def task(p, s, q):
            joined = torch.cat([s.unsqueeze(0).expand(nq, *s.shape), q.unsqueeze(1)], 1)
            logits = functional_call(self.model, p, (joined.flatten(0, 1),))
            return logits.reshape(nq, ns + 1, -1)[:, -1]
        with batchnorm_mode(self.model, "primitive", tasks=nq):
            return vmap(task)(fast, support_x, query_x)

    def _adapted(self, sx: torch.Tensor, sy: torch.Tensor, schedule: torch.Tensor) -> Params:
        """Adapted parameters [B, ...] for support sets sx [B, Ns, ...] and schedule [B, steps, inner_batch]."""
        rows = torch.arange(sx.shape[0], device=sx.device)[:, None, None]
        idx = schedule.to(sx.device)
        fn = self.compiled("adapt", self._batched_adapt)
        with batchnorm_mode(self.model, self.bn_impl), torch.no_grad():
            return fn(self.detached_params(), sx[rows, idx], sy[rows, idx])

    def meta_gradient(self, batch: EpisodeBatch, schedule: torch.Tensor | None = None) -> StepMetrics:
        """schedule: optional [B, steps, inner_batch] mini-batch indices (drawn from self.generator if None)."""
        self.zero_grad()
        b = batch.num_tasks
        if schedule is None:
            schedule = self.step_inputs(batch)["schedule"]
        meta = self.detached_params()
        deltas = {k: torch.zeros_like(p) for k, p in meta.items()}
        totals = QueryMetrics()
        for start, c in self.chunks(batch):
            fast = self._adapted(c.support_x, c.support_y, schedule[start:start + c.num_tasks])
            with torch.no_grad():
                for k in deltas:
                    deltas[k] += ((meta[k] - fast[k]) / b).sum(dim=0)
                logits = self._query_logits(fast, c.support_x, c.query_x)
                totals.add(task_losses(logits, c.query_y), logits, c.query_y)
        for k, p in self.model.named_parameters():
            p.grad = deltas[k]
        return totals.means(b)

    def _eval_logits(self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        # Like the loop's predict: one schedule, the same for every task.
        one = evaluation_schedule(sx.shape[1], self.settings)
        fast = self._adapted(sx, sy, one.expand(sx.shape[0], *one.shape[1:]))
        with torch.no_grad():
            return self._query_logits(fast, sx, qx)

    def predict(self, support_x, support_y, query_x, ways):
        return self._eval_logits(support_x[None], support_y[None], query_x[None])[0]

    def query_accuracy(self, batch: EpisodeBatch) -> torch.Tensor:
        return torch.cat([accuracy(self._eval_logits(c.support_x, c.support_y, c.query_x), c.query_y)
                          for _, c in self.chunks(batch)])

    def measure_step(self, batch: EpisodeBatch) -> None:
        gen = torch.Generator().manual_seed(0)
        schedule = minibatch_schedule(batch.num_tasks, batch.support_x.shape[1], self.settings.inner_batch,
                                      self.settings.inner_steps, gen)
        self.meta_step(batch, schedule=schedule)

    def task_bytes(self, batch: EpisodeBatch) -> int:
        """One inner mini-batch forward/backward at a time (x2) and the query forward, plus the
        per-task parameters, gradients and optimiser state (x4)."""
        sx, qx = batch.support_x[0], batch.query_x[0]
        acts = 2 * activation_bytes(self.model, sx[: self.settings.inner_batch]) + activation_bytes(self.model, qx)
        return acts + 4 * parameter_bytes(self.model)


# CPU (2 cores): the loop; the batched engine is 1.6x slower at 32 tasks.  CUDA: batched.
register(AlgorithmSpec(
    name="reptile", summary="Reptile (Nichol et al., 2018): move the initialisation towards adapted weights",
    settings=ReptileSettings, loop=Reptile, batched=BatchedReptile, optimizer=REPTILE_SGD,
    quick=dict(meta_batch=5, inner_lr=1e-3, inner_steps=5, inner_batch=10, train_shots=5, meta_lr=1.0,
                test_inner_steps=10, iterations=40)))
