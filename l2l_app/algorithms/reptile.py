"""Reptile (Nichol, Achiam & Schulman, 2018), per-task loop engine.

Per task: copy the meta-weights theta, run k inner steps of SGD or Adam (beta1 = 0, as
in the paper) on mini-batches of the task's support set, giving theta~.  The meta
update theta <- theta + eps * mean(theta~ - theta) is expressed as a gradient:
`meta_step` writes theta - mean(theta~) into `.grad`, and the trainer steps plain SGD
with lr = eps (linearly annealed from --meta-lr to --meta-lr-final).
The inner optimiser state starts fresh for every task.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import batchnorm_mode
from ..tasks import EpisodeBatch
from .base import MetaLearner, accuracy

ADAM_BETAS = (0.0, 0.999)
ADAM_EPS = 1e-8


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


class ReptileSettings:
    """Hyperparameters and the mini-batch generator, shared by the loop and batched engines
    (the same seed gives both the same schedules); the generator state is saved in checkpoints."""

    def _init_reptile(self, inner_lr: float, inner_steps: int, inner_batch: int, inner_optimizer: str,
                      test_inner_steps: int | None, transductive: bool, seed: int) -> None:
        if inner_optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown inner optimiser {inner_optimizer!r}; choose adam or sgd")
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.inner_batch = inner_batch
        self.inner_optimizer = inner_optimizer
        self.test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        self.transductive = transductive
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


class Reptile(ReptileSettings, MetaLearner):
    """Reptile with a fresh inner optimiser per task, one task at a time."""

    engine = "loop"

    def __init__(self, model: nn.Module, inner_lr: float, inner_steps: int, inner_batch: int,
                 inner_optimizer: str = "adam", test_inner_steps: int | None = None,
                 transductive: bool = True, seed: int = 0) -> None:
        MetaLearner.__init__(self, model)
        self._init_reptile(inner_lr, inner_steps, inner_batch, inner_optimizer, test_inner_steps,
                           transductive, seed)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, schedule: torch.Tensor) -> nn.Module:
        """A copy of the model trained on the support mini-batches in `schedule` [steps, inner_batch]."""
        fast = copy.deepcopy(self.model)
        opt = inner_optimizer(self.inner_optimizer, fast.parameters(), self.inner_lr)
        for idx in schedule:
            opt.zero_grad()
            F.cross_entropy(fast(support_x[idx]), support_y[idx]).backward()
            opt.step()
        return fast

    def meta_step(self, batch: EpisodeBatch, schedule: torch.Tensor | None = None) -> Dict[str, float]:
        """schedule: optional [B, steps, inner_batch] mini-batch indices (drawn from self.generator if None)."""
        self.zero_grad()
        if schedule is None:
            schedule = minibatch_schedule(batch.num_tasks, batch.support_x.shape[1], self.inner_batch,
                                          self.inner_steps, self.generator)
        meta = list(self.model.parameters())
        deltas = [torch.zeros_like(p) for p in meta]
        total_loss, total_acc = 0.0, 0.0
        for i, (sx, sy, qx, qy) in enumerate(batch.tasks()):
            fast = self.adapt(sx, sy, schedule[i])
            for d, p, q in zip(deltas, meta, fast.parameters()):
                d += (p.detach() - q.detach()) / batch.num_tasks
            with torch.no_grad():
                logits = query_logits(fast, sx, qx, self.transductive)
                total_loss += F.cross_entropy(logits, qy).item()
                total_acc += accuracy(logits, qy).item()
        for p, d in zip(meta, deltas):
            p.grad = d
        return {"loss": total_loss / batch.num_tasks, "accuracy": total_acc / batch.num_tasks}

    def predict(self, support_x, support_y, query_x, ways):
        gen = torch.Generator().manual_seed(0)
        schedule = minibatch_schedule(1, support_x.shape[0], self.inner_batch, self.test_inner_steps, gen)[0]
        fast = self.adapt(support_x, support_y, schedule)
        with torch.no_grad():
            return query_logits(fast, support_x, query_x, self.transductive)
