"""Few-shot evaluation: fixed-seed episodes, mean accuracy and 95% confidence interval.

The episodes are drawn once, up front (`EpisodeSet`: indices into the split), from a freshly
seeded source -- learn2learn's sampler for `eval` and validation, whatever the engine or device,
so every engine scores the same episodes -- and scored `batch_size` at a time by the learner's
`query_accuracy` (the batched engine's vmap over episodes where the algorithm has one:
`Experiment.evaluation_learner`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import torch

from .progress import Progress
from .data.types import EpisodeBatch, TaskSource
from .learner import MetaLearner


class EvaluationStopped(Exception):
    """`evaluate`'s `should_stop` said stop (a signal, in training's validation): no result."""


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


class EpisodeSet:
    """A fixed set of episodes drawn once from `source`: support_idx [E, ways*shots] and
    query_idx [E, ways*queries], indices into the source's split; batches made on demand."""

    def __init__(self, source: TaskSource, episodes: int) -> None:
        self.source = source
        self.support_idx, self.query_idx = source.sample_indices(episodes)

    def __len__(self) -> int:
        return int(self.support_idx.shape[0])

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[EpisodeBatch]:
        """The first `limit` episodes (None: all) in order, `batch_size` at a time, as model inputs
        on the source's device."""
        total = len(self) if limit is None else min(limit, len(self))
        for start in range(0, total, batch_size):
            end = min(start + batch_size, total)
            yield self.source.batch_at(self.support_idx[start:end], self.query_idx[start:end])


def evaluate(learner: MetaLearner, episodes_from: Union[TaskSource, EpisodeSet], episodes: int,
             batch_size: int = 50, protocol: Dict[str, Any] | None = None, progress: bool = True,
             desc: str = "eval", quiet_seconds: float = 0.0,
             should_stop: Optional[Callable[[], bool]] = None) -> EvalResult:
    """Adapt on each episode's support set and score its queries; accuracies in %.

    `episodes_from`: a freshly seeded source (its first `episodes` episodes are drawn now) or an
    `EpisodeSet` drawn earlier (its first `episodes`).  `quiet_seconds`: show progress only once
    the evaluation has run this long.  `should_stop`: asked after each batch; True raises
    `EvaluationStopped`.
    """
    fixed = episodes_from if isinstance(episodes_from, EpisodeSet) else EpisodeSet(episodes_from, episodes)
    if len(fixed) < episodes:
        raise ValueError(f"the episode set holds {len(fixed)} episodes, fewer than the {episodes} asked for")
    accs: list[torch.Tensor] = []
    bar = Progress(desc, episodes, enabled=progress, log_every=max(batch_size, episodes // 10), unit="episode",
                   quiet_seconds=quiet_seconds)
    start = time.perf_counter()
    done = 0
    with bar:
        for batch in fixed.batches(batch_size, episodes):
            accs.append(learner.query_accuracy(batch).detach().double().cpu() * 100.0)
            done += batch.num_tasks
            bar.update(done, time.perf_counter() - start)
            if should_stop is not None and should_stop() and done < episodes:
                raise EvaluationStopped(f"stopped after {done} of {episodes} episodes")
    all_accs = torch.cat(accs)
    mean, ci, std = mean_ci95(all_accs)
    return EvalResult(mean, ci, std, episodes, dict(protocol or {}), all_accs.tolist())
