"""Episodes: the `EpisodeBatch` every meta-learner consumes, and the `TaskSource` protocol.

Two sources produce it (see `l2l_app.samplers`):

* `L2LTaskSource` builds tasks one at a time with learn2learn's `TaskDataset`
  (NWays, KShots, LoadData, RemapLabels) -- the reference.
* `TensorTaskSource` keeps the split as one uint8 tensor on the device and draws a
  whole meta-batch of episodes with a few tensor operations.

Both draw only from their own generator and expose `state_dict()` /
`load_state_dict()` so that a resumed run sees the same episodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Protocol, Tuple

import torch


@dataclass
class EpisodeBatch:
    """A meta-batch of B few-shot episodes, each `ways`-way `shots`-shot with `queries` queries per class.

    Shapes:
        support_x: [B, ways*shots, C, H, W] float in [0, 1]
        support_y: [B, ways*shots] long, labels in 0..ways-1
        query_x:   [B, ways*queries, C, H, W]
        query_y:   [B, ways*queries]
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int
    shots: int
    queries: int

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "EpisodeBatch":
        """Move to `device` (and cast images to `dtype` if given); labels stay long."""
        def images(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)
        return EpisodeBatch(images(self.support_x), self.support_y.to(device),
                            images(self.query_x), self.query_y.to(device),
                            self.ways, self.shots, self.queries)

    def task(self, i: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The i-th episode as (support_x, support_y, query_x, query_y), task dimension dropped."""
        return self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i]

    def tasks(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        for i in range(self.num_tasks):
            yield self.task(i)

    def chunks(self, size: int) -> Iterator["EpisodeBatch"]:
        """Split along the task dimension into consecutive batches of at most `size` tasks."""
        for start in range(0, self.num_tasks, size):
            sl = slice(start, start + size)
            yield EpisodeBatch(self.support_x[sl], self.support_y[sl], self.query_x[sl],
                               self.query_y[sl], self.ways, self.shots, self.queries)

    @staticmethod
    def stack(episodes: list[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
              ways: int, shots: int, queries: int) -> "EpisodeBatch":
        """Stack per-task (support_x, support_y, query_x, query_y) tuples into one batch."""
        sx, sy, qx, qy = (torch.stack(parts) for parts in zip(*episodes))
        return EpisodeBatch(sx, sy, qx, qy, ways, shots, queries)


class TaskSource(Protocol):
    """Anything that samples meta-batches of episodes from one split with its own RNG."""

    ways: int
    shots: int
    queries: int

    def sample(self, num_tasks: int) -> EpisodeBatch:
        ...

    def state_dict(self) -> Dict[str, Any]:
        ...

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        ...
