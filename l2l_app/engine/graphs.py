"""Training steps captured once as CUDA graphs and replayed.

A batched learner's meta-step on a fixed episode shape launches the same kernels on tensors of
the same shapes every time: hundreds of small kernels whose launch cost (Python, the dispatcher,
vmap's batching rules) dwarfs their arithmetic on a GPU.  Recording them once with
`torch.cuda.CUDAGraph` and replaying the recording makes a step one launch, with no host
synchronisation (the metrics come back as device tensors, read by the trainer every few steps).

Two extents, both built on `GraphedCall`:

* `CapturedMetaGradient`: `learner.meta_gradient(batch, **learner.step_inputs(batch))`, from the
  episode tensors to `.grad`.  The episodes are drawn eagerly and copied into the graph's input
  buffers; clipping and the optimiser step run eagerly after the replay (and, under torchrun,
  after the all-reduce).  Any batched learner.
* `CapturedTrainingStep`: the whole step -- the tensor sampler's episode gather, the
  meta-gradient, gradient clipping and the optimiser step.  Only the random draws run outside:
  the sampler's two (with its own generator) and the learner's step inputs (Reptile's mini-batch
  schedule, from the learner's generator), exactly as an eager step draws them, so resume and the
  episode sequence are unchanged; they are copied in like the batch.  Needs the tensor sampler
  and an optimiser built graph-safe (`MetaOptimizer.capturable`: Adam fused with its step count
  on the device; Reptile's SGD fused with epsilon a device tensor the graph reads); a change of a
  float learning rate (a step decay) captures the step again.

Both replay the kernels an eager step launches, so a captured step computes what an eager step
computes: benchmarks/engine_parity.py finds them within 5.4e-14 in float64 on an H200, the
run-to-run spread of two eager steps there (GPU reductions are not deterministic).

On a CPU (tests) the `eager` backend keeps the whole protocol -- warm-up calls, static buffers
the inputs are copied into, metrics cloned out, captures counted -- and calls the function on the
buffers instead of replaying a graph.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..data.samplers import TensorTaskSource
from ..data.types import EpisodeBatch
from ..learner import MetaLearner, StepMetrics, apply_meta_gradient

#: eager steps before the capture (cuDNN's autotuner, torch.compile and the optimiser's lazy
#: state need a few calls)
GRAPH_WARMUP_STEPS = 3
#: what a graphed function takes and returns: tensors by name
Tensors = Dict[str, torch.Tensor]


class GraphedCall:
    """`fn(**tensors) -> {name: 0-d tensor}` run through one CUDA graph.

    The first `warmup` calls run `fn` eagerly (on a side stream on a GPU, as capture requires);
    the next call copies its tensors into static buffers and captures `fn` on them; every later
    call copies its tensors into the buffers and replays.  The tensors' shapes and dtypes must
    not change after the capture.  The outputs handed back are clones, owned by the caller.
    `recapture()` drops the graph: the next call captures again (no warm-up).
    `before_capture` runs just before each capture (a learner's `zero_grad`, so that `.grad` is
    allocated inside the graph's memory pool and replays write into it).
    """

    def __init__(self, fn: Callable[..., Tensors], warmup: int = GRAPH_WARMUP_STEPS,
                 backend: Optional[str] = None, before_capture: Callable[[], None] = lambda: None) -> None:
        if backend not in (None, "cuda", "eager"):
            raise ValueError(f"graph backend must be 'cuda', 'eager' or None (from the inputs' device), "
                             f"got {backend!r}")
        self.fn = fn
        self.before_capture = before_capture
        self.warmup = warmup
        self.backend = backend
        self.calls = 0
        #: how many times `fn` was captured (1, plus one per `recapture`)
        self.captures = 0
        #: the captured graph's replay (a bound method: it keeps the graph and its memory alive)
        self._replay: Optional[Callable[[], None]] = None
        self._static_in: Tensors = {}
        self._static_out: Tensors = {}

    @property
    def captured(self) -> bool:
        return self._replay is not None

    def recapture(self) -> None:
        self._replay = None

    def __call__(self, **tensors: torch.Tensor) -> Tensors:
        first = next(iter(tensors.values()))
        backend = self.backend or ("cuda" if first.is_cuda else "eager")
        self.calls += 1
        if not self.captured and self.calls <= self.warmup:
            if backend != "cuda":
                return self.fn(**tensors)
            side = torch.cuda.Stream(first.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.fn(**tensors)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if not self.captured:
            self._capture(tensors, backend, first.device)
        else:
            self._copy_in(tensors)
        self._replay()
        return {k: v.clone() for k, v in self._static_out.items()}

    def _copy_in(self, tensors: Tensors) -> None:
        if tensors.keys() != self._static_in.keys():
            raise ValueError(f"a captured step takes the inputs {sorted(self._static_in)}, got {sorted(tensors)}")
        for name, value in tensors.items():
            static = self._static_in[name]
            if static.shape != value.shape or static.dtype != value.dtype:
                raise ValueError(f"a captured step needs inputs of one shape: {name} was {tuple(static.shape)} "
                                 f"{static.dtype} at capture, now {tuple(value.shape)} {value.dtype}")
            static.copy_(value, non_blocking=True)

    def _capture(self, tensors: Tensors, backend: str, device: torch.device) -> None:
        self._static_in = {k: v.clone() for k, v in tensors.items()}
        self.captures += 1
        self.before_capture()
        if backend == "cuda":
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._static_out = self.fn(**self._static_in)
            self._replay = graph.replay
        else:
            def replay() -> None:
                self._static_out = self.fn(**self._static_in)
            self._replay = replay


_BATCH_TENSORS = ("support_x", "support_y", "query_x", "query_y")


class CapturedMetaGradient:
    """`learner.meta_gradient` as one CUDA graph; call it like the learner's method.

    __call__(batch) -> metrics (0-d device tensors, owned by the caller: later replays do not
    overwrite them).  `.grad` of the meta-parameters is filled as by `meta_gradient`.
    """

    def __init__(self, learner: MetaLearner, warmup: int = GRAPH_WARMUP_STEPS,
                 backend: Optional[str] = None) -> None:
        self.learner = learner
        self.call = GraphedCall(self._meta_gradient, warmup, backend, before_capture=learner.zero_grad)
        self._episode_shape: Optional[Tuple[int, int, int]] = None  # (ways, shots, queries)

    @property
    def captured(self) -> bool:
        return self.call.captured

    def _meta_gradient(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                       query_y: torch.Tensor, **inputs: torch.Tensor) -> StepMetrics:
        batch = EpisodeBatch(support_x, support_y, query_x, query_y, *self._episode_shape)
        return self.learner.meta_gradient(batch, **inputs)

    def __call__(self, batch: EpisodeBatch) -> StepMetrics:
        shape = (batch.ways, batch.shots, batch.queries)
        if self._episode_shape is not None and shape != self._episode_shape:
            raise ValueError(f"a captured step needs episodes of one shape: (ways, shots, queries) was "
                             f"{self._episode_shape} at capture, now {shape}")
        self._episode_shape = shape
        return self.call(**{k: getattr(batch, k) for k in _BATCH_TENSORS}, **self.learner.step_inputs(batch))


class CapturedTrainingStep:
    """One whole training step as one CUDA graph: sample, meta-gradient, clip, optimiser step.

    `source`: a `TensorTaskSource` on the learner's device; `optimizer`: over the learner's
    meta-parameters, graph-safe on a GPU (`MetaOptimizer.build(..., capturable=True)`);
    `grad_clip`: max gradient norm or None.  __call__() -> the step's metrics (device scalars).
    """

    def __init__(self, learner: MetaLearner, source: TensorTaskSource, meta_batch: int,
                 optimizer: torch.optim.Optimizer,
                 grad_clip: Optional[float] = None, warmup: int = GRAPH_WARMUP_STEPS,
                 backend: Optional[str] = None) -> None:
        if not isinstance(source, TensorTaskSource):
            raise ValueError(f"the whole step can be captured with the tensor sampler only, not "
                             f"{type(source).__name__}; pass --sampler tensor")
        self.learner, self.source, self.meta_batch = learner, source, meta_batch
        self.optimizer, self.grad_clip = optimizer, grad_clip
        self.call = GraphedCall(self._step, warmup, backend, before_capture=learner.zero_grad)
        self._lrs: Optional[List[Optional[float]]] = None

    @property
    def captured(self) -> bool:
        return self.call.captured

    def _step(self, **tensors: torch.Tensor) -> StepMetrics:
        keys = {k: tensors.pop(k) for k in TensorTaskSource.KEY_NAMES}
        metrics = self.learner.meta_gradient(self.source.batch_from_keys(**keys), **tensors)
        apply_meta_gradient(self.learner, self.optimizer, self.grad_clip)
        return metrics

    def __call__(self) -> StepMetrics:
        # a float learning rate is held by the graph as captured: a change captures again; a tensor
        # one (filled in place by the scheduler) is read by the graph at each replay
        lrs = [None if isinstance(g["lr"], torch.Tensor) else float(g["lr"]) for g in self.optimizer.param_groups]
        if self.captured and lrs != self._lrs:
            self.call.recapture()
        self._lrs = lrs
        source = self.source
        keys = source.draw_keys(self.meta_batch)
        inputs = self.learner.draw_step_inputs(self.meta_batch, source.ways * source.shots, source.device)
        return self.call(**keys, **inputs)
