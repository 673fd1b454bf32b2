"""What the batched learners share: chunking, torch.compile, functional optimisers, chunk sizing.

Each algorithm module holds its own batched learner (a `BatchedLearner`); the mathematics is the
same as its loop learner, and the parity tests hold the two to 1e-10 in float64.  Under `vmap`
with second-order gradients batch norm must be the primitive-op implementation: the batching
rule of native batch_norm's double backward is wrong (pytorch/functorch#534).

Engine options:

* ``chunk_size``: process the meta-batch in consecutive chunks of at most that many tasks
  (gradients accumulated with weight chunk/B) to bound memory; `choose_chunk_size` picks one.
* ``compile``: wrap the batched per-chunk function in `torch.compile`; `compile_seconds`
  is the wall time of the first call (compilation plus one execution).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad

from ..learner import AlgorithmSettings, MetaLearner
from ..backbones import assert_no_aliased_submodules, batchnorm_mode
from ..data.types import EpisodeBatch

Params = Dict[str, torch.Tensor]
#: loss(params, x, y) -> scalar, for the functional optimisers
LossFn = Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]


def task_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-task mean cross-entropy. logits [B, N, ways], labels [B, N] -> [B]."""
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(dim=1)


class BatchedLearner(MetaLearner):
    """Engine plumbing: validation, chunking, optional torch.compile, the memory estimate hook."""

    engine = "batched"

    def __init__(self, model: nn.Module, settings: AlgorithmSettings, chunk_size: int | None = None,
                 compile: bool | str = False) -> None:
        super().__init__(model, settings)
        assert_no_aliased_submodules(model)
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None (no chunking), got {chunk_size!r}; "
                             "fix --chunk-size")
        self.chunk_size = chunk_size
        #: torch.compile mode: None (eager), "default", or e.g. "reduce-overhead" (CUDA graphs);
        #: compile=True means "default"
        self.compile_mode: str | None = compile if isinstance(compile, str) else ("default" if compile else None)
        #: seconds taken by the first call of the compiled function (compilation + one run); None until then
        self.compile_seconds: float | None = None
        self._compiled: Dict[str, Callable] = {}

    def chunks(self, batch: EpisodeBatch) -> Iterator[Tuple[int, EpisodeBatch]]:
        """(index of the first task, chunk) over the meta-batch, at most `chunk_size` tasks each."""
        if self.chunk_size is None or self.chunk_size >= batch.num_tasks:
            yield 0, batch
            return
        for k, chunk in enumerate(batch.chunks(self.chunk_size)):
            yield k * self.chunk_size, chunk

    def compiled(self, name: str, fn: Callable) -> Callable:
        """`fn`, or its torch.compile'd version (timed on the first call) when compiling."""
        if self.compile_mode is None:
            return fn
        if name not in self._compiled:
            compiled = torch.compile(fn, mode=self.compile_mode)
            cuda_graphs = self.compile_mode == "reduce-overhead"

            def call(*args, **kwargs):
                if cuda_graphs:  # each call is a new step: its outputs may replace the last step's
                    torch.compiler.cudagraph_mark_step_begin()
                return compiled(*args, **kwargs)

            def first_call(*args, **kwargs):
                start = time.perf_counter()
                out = call(*args, **kwargs)
                if self.compile_seconds is None:
                    self.compile_seconds = time.perf_counter() - start
                self._compiled[name] = call
                return out
            self._compiled[name] = first_call
        return self._compiled[name]

    def params(self) -> Params:
        """The model's parameters by name (the real leaves: autograd reaches them)."""
        return dict(self.model.named_parameters())

    def detached_params(self) -> Params:
        return {k: p.detach() for k, p in self.model.named_parameters()}

    def measure_step(self, batch: EpisodeBatch) -> None:
        """One meta_step that leaves no trace in the learner's random state (used by choose_chunk_size)."""
        self.meta_step(batch)

    def task_bytes(self, batch: EpisodeBatch) -> int:
        """Analytic memory of one task's meta_step on the CPU (bytes), for `choose_chunk_size`."""
        raise NotImplementedError(f"{type(self).__name__} has no memory estimate; give --chunk-size instead "
                                  f"of --max-memory")


# ------------------------------------------------------------------------ functional optimisers
def sgd_adapt(loss_fn: LossFn, params: Params, xs: torch.Tensor, ys: torch.Tensor, lr: float) -> Params:
    """xs.shape[0] steps of SGD, step t on (xs[t], ys[t]); returns the adapted parameters."""
    fast = params
    for t in range(xs.shape[0]):
        grads = grad(loss_fn)(fast, xs[t], ys[t])
        fast = {k: fast[k] - lr * grads[k] for k in fast}
    return fast


def adam_adapt(loss_fn: LossFn, params: Params, xs: torch.Tensor, ys: torch.Tensor, lr: float,
               betas: Tuple[float, float], eps: float) -> Params:
    """Functional torch.optim.Adam from a fresh state (single-tensor formula with bias corrections)."""
    beta1, beta2 = betas
    fast = params
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    for t in range(xs.shape[0]):
        step = t + 1
        grads = grad(loss_fn)(fast, xs[t], ys[t])
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        step_size = lr / bias_correction1
        new = {}
        for k in fast:
            g = grads[k]
            m[k] = m[k].lerp(g, 1 - beta1)
            v2[k] = v2[k] * beta2 + (1 - beta2) * g * g
            denom = v2[k].sqrt() / bias_correction2_sqrt + eps
            new[k] = fast[k] - step_size * (m[k] / denom)
        fast = new
    return fast


# ------------------------------------------------------------------------------ chunk sizing
def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one forward of x (a proxy for saved activations)."""
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad(), batchnorm_mode(model, "primitive"):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def choose_chunk_size(learner: MetaLearner, batch: EpisodeBatch, max_memory_bytes: int) -> int:
    """Largest number of tasks per chunk whose meta_step should fit in `max_memory_bytes`.

    CUDA: measured.  One meta_step on 1 task and one on 2 tasks (peak
    `torch.cuda.max_memory_allocated` above the memory in use before), giving a per-task
    cost (difference) and a fixed cost; memory is assumed linear in the number of tasks.
    The learner's gradients and random state are restored.
    CPU: estimated analytically by the learner's `task_bytes` (activation sizes measured with
    forward hooks on one task, times a per-algorithm factor); a rough, conservative guide.
    Returns a value in [1, batch.num_tasks].
    """
    if not isinstance(learner, BatchedLearner):
        raise TypeError(f"choose_chunk_size needs a batched learner, got {type(learner).__name__}")
    b = batch.num_tasks
    device = batch.support_x.device
    if device.type == "cuda":
        saved = [None if p.grad is None else p.grad.clone() for p in learner.meta_parameters()]
        peaks = []
        for n in (1, 2) if b >= 2 else (1,):
            sub = next(batch.chunks(n))
            learner.zero_grad()
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            old_chunk, learner.chunk_size = learner.chunk_size, None
            try:
                learner.measure_step(sub)
            finally:
                learner.chunk_size = old_chunk
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
        for p, g in zip(learner.meta_parameters(), saved):
            p.grad = g
        per_task = max(peaks[-1] - peaks[0], 1) if len(peaks) == 2 else peaks[0]
        fixed = max(peaks[0] - per_task, 0)
    else:
        per_task, fixed = max(learner.task_bytes(batch), 1), 0
    return int(max(1, min(b, (max_memory_bytes - fixed) // per_task)))
