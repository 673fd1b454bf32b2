"""The meta-learner contract shared by every algorithm and engine.

`meta_step(batch)` fills `.grad` on the meta-parameters (mean over the batch's tasks)
and returns metrics; it never steps an optimiser.  MAML and ProtoNet backpropagate
the query loss; Reptile writes theta - mean(adapted theta) into `.grad` and is
stepped by plain SGD with lr = epsilon.  One trainer serves all of them.
"""
from __future__ import annotations

import abc
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import EpisodeBatch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of correct argmax predictions. logits [..., N, ways], labels [..., N] -> [...]."""
    return (logits.argmax(dim=-1) == labels).to(logits.dtype).mean(dim=-1)


TaskLogits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def backprop_query_losses(batch: EpisodeBatch, task_logits: TaskLogits) -> Dict[str, float]:
    """The per-task loop shared by MAML and ProtoNet: for each task, query logits
    `task_logits(support_x, support_y, query_x)` [Nq, ways], cross-entropy, backward of loss / B
    (so `.grad` accumulates the mean over tasks, and each task's graph is freed at once).
    Returns the mean query loss and accuracy."""
    total_loss, total_acc = 0.0, 0.0
    for sx, sy, qx, qy in batch.tasks():
        logits = task_logits(sx, sy, qx)
        loss = F.cross_entropy(logits, qy)
        (loss / batch.num_tasks).backward()
        total_loss += loss.item()
        total_acc += accuracy(logits.detach(), qy).item()
    return {"loss": total_loss / batch.num_tasks, "accuracy": total_acc / batch.num_tasks}


class MetaLearner(abc.ABC):
    """An algorithm bound to one model (its meta-parameters) and one engine."""

    #: name of the engine that computes the meta-batch ('loop' or 'batched')
    engine: str = "loop"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def zero_grad(self) -> None:
        for p in self.model.parameters():
            p.grad = None

    @abc.abstractmethod
    def meta_step(self, batch: EpisodeBatch) -> Dict[str, float]:
        """Fill `.grad` of the meta-parameters for `batch`; return {'loss', 'accuracy'} (means over tasks)."""

    @abc.abstractmethod
    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                ways: int) -> torch.Tensor:
        """Adapt to one task's support set and return query logits [ways*queries, ways]."""

    def query_accuracy(self, batch: EpisodeBatch) -> torch.Tensor:
        """Per-task query accuracy after adaptation, [B] (evaluation; no meta-gradient)."""
        accs = []
        for sx, sy, qx, qy in batch.tasks():
            logits = self.predict(sx, sy, qx, batch.ways)
            accs.append(accuracy(logits.detach(), qy))
        return torch.stack(accs)
