"""A meta-gradient captured once as a CUDA graph and replayed every step.

A batched learner's meta-step on a fixed episode shape launches the same kernels on tensors of
the same shapes every time: hundreds of small kernels whose launch cost (Python, the dispatcher,
vmap's batching rules) dwarfs their arithmetic on a GPU.  `CapturedMetaGradient` records the step
once with `torch.cuda.CUDAGraph` and replays it: one launch per step, no host synchronisation
(the metrics come back as device tensors, read by the trainer every few steps).

Captured: `learner.meta_gradient(batch, **learner.step_inputs(batch))` -- everything from the
episode tensors to `.grad`.
Not captured: drawing the episodes (the tensor sampler runs eagerly, queued behind the previous
replay, and its batch is copied into the graph's static input buffers), gradient clipping and
the optimiser step (eager, after the replay -- and, under torchrun, after the all-reduce; the
learning rate may change every step) and validation.

The first `warmup` calls run eagerly on a side stream (lazy initialisation, compilation) and are
real steps, not discarded ones; the capture happens on the next call, which is then replayed.
The replayed kernels are the eager ones, so a captured step computes what an eager step computes:
benchmarks/engine_parity.py finds them within 5.4e-14 in float64 on an H200, the same
run-to-run spread as two eager steps there (GPU reductions are not deterministic).

On a CPU (tests) `backend='eager'` keeps the same static-buffer protocol and calls the function
on the buffers each step instead of replaying a graph.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ..data.types import EpisodeBatch
from ..learner import MetaLearner, StepMetrics

#: eager steps before the capture (cuDNN's autotuner and torch.compile need a few calls)
GRAPH_WARMUP_STEPS = 3


def _clone_batch(batch: EpisodeBatch) -> EpisodeBatch:
    return EpisodeBatch(batch.support_x.clone(), batch.support_y.clone(), batch.query_x.clone(),
                        batch.query_y.clone(), batch.ways, batch.shots, batch.queries)


def _copy_batch(dst: EpisodeBatch, src: EpisodeBatch) -> None:
    for name in ("support_x", "support_y", "query_x", "query_y"):
        a, b = getattr(dst, name), getattr(src, name)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"a captured meta-step needs episodes of one shape: {name} was "
                             f"{tuple(a.shape)} {a.dtype} at capture, now {tuple(b.shape)} {b.dtype}")
        a.copy_(b, non_blocking=True)


class CapturedMetaGradient:
    """`learner.meta_gradient` as one CUDA graph; call it like the learner's method.

    __call__(batch) -> metrics (0-d device tensors, owned by the caller: later replays do not
    overwrite them).  `.grad` of the meta-parameters is filled as by `meta_gradient`.
    """

    def __init__(self, learner: MetaLearner, warmup: int = GRAPH_WARMUP_STEPS,
                 backend: Optional[str] = None) -> None:
        self.learner = learner
        self.warmup = warmup
        self.backend = backend
        self.calls = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self._replay: Optional[Callable[[], None]] = None
        self._static_batch: Optional[EpisodeBatch] = None
        self._static_inputs: Dict[str, torch.Tensor] = {}
        self._static_out: StepMetrics = {}

    @property
    def captured(self) -> bool:
        return self._replay is not None

    def __call__(self, batch: EpisodeBatch) -> StepMetrics:
        inputs = self.learner.step_inputs(batch)
        backend = self.backend or ("cuda" if batch.support_x.is_cuda else "eager")
        self.calls += 1
        if not self.captured and self.calls <= self.warmup:
            if backend != "cuda":
                return self.learner.meta_gradient(batch, **inputs)
            side = torch.cuda.Stream(batch.support_x.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                metrics = self.learner.meta_gradient(batch, **inputs)
            torch.cuda.current_stream().wait_stream(side)
            return metrics
        if not self.captured:
            self._capture(batch, inputs, backend)
        else:
            _copy_batch(self._static_batch, batch)
            for k, v in inputs.items():
                self._static_inputs[k].copy_(v, non_blocking=True)
        self._replay()
        return {k: v.clone() for k, v in self._static_out.items()}

    def _capture(self, batch: EpisodeBatch, inputs: Dict[str, torch.Tensor], backend: str) -> None:
        self._static_batch = _clone_batch(batch)
        self._static_inputs = {k: v.clone() for k, v in inputs.items()}
        if backend == "cuda":
            torch.cuda.synchronize(batch.support_x.device)
            self.learner.zero_grad()  # .grad is allocated inside the graph's memory pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._static_out = self.learner.meta_gradient(self._static_batch, **self._static_inputs)
            self.graph, self._replay = graph, graph.replay
        else:
            def replay() -> None:
                self._static_out = self.learner.meta_gradient(self._static_batch, **self._static_inputs)
            self._replay = replay
