"""Few-shot evaluation: fixed-seed episodes, mean accuracy and 95% confidence interval."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List

import torch

from .progress import Progress
from .data.types import TaskSource
from .learner import MetaLearner


@dataclass
class EvalResult:
    """Accuracy over `episodes` episodes (in %), with the protocol that produced it."""
    mean: float
    ci95: float
    std: float
    episodes: int
    protocol: Dict[str, Any] = field(default_factory=dict)
    accuracies: List[float] = field(default_factory=list)

    def to_dict(self, with_accuracies: bool = False) -> Dict[str, Any]:
        out = asdict(self)
        if not with_accuracies:
            out.pop("accuracies")
        return out

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.ci95:.2f}% (95% CI, {self.episodes} episodes)"


def mean_ci95(accuracies: torch.Tensor) -> tuple[float, float, float]:
    """(mean, 1.96·std/√n, std) of per-episode accuracies [n] (sample std, ddof=1)."""
    acc = accuracies.double()
    n = acc.numel()
    std = acc.std(unbiased=True).item() if n > 1 else 0.0
    return acc.mean().item(), 1.96 * std / math.sqrt(n), std


def evaluate(learner: MetaLearner, source: TaskSource, episodes: int, batch_size: int = 50,
             protocol: Dict[str, Any] | None = None, progress: bool = True,
             desc: str = "eval") -> EvalResult:
    """Adapt on each episode's support set and score its queries; accuracies in %.

    `source` must be freshly seeded for the result to be reproducible.
    """
    accs: list[torch.Tensor] = []
    bar = Progress(desc, episodes, enabled=progress, log_every=max(batch_size, episodes // 10), unit="episode")
    start = time.perf_counter()
    done = 0
    while done < episodes:
        n = min(batch_size, episodes - done)
        batch = source.sample(n)
        accs.append(learner.query_accuracy(batch).detach().double().cpu() * 100.0)
        done += n
        bar.update(done, time.perf_counter() - start)
    bar.close()
    all_accs = torch.cat(accs)
    mean, ci, std = mean_ci95(all_accs)
    return EvalResult(mean, ci, std, episodes, dict(protocol or {}), all_accs.tolist())
