"""The batched engine: ProtoNet, MAML and Reptile for a whole meta-batch at once with `torch.func`.

Same mathematics as the per-task loop engine in `l2l_app.algorithms` (the reference; the
parity tests in `tests/test_batched.py` hold the two to 1e-10 in float64):

* `BatchedProtoNet`: all tasks share the weights, so no `vmap` is needed.  The episodes
  are folded into the batch dimension ([B*(Ns+Nq), C, H, W]), embedded with one large
  convolution per layer, and batch norm takes its statistics per task
  (`batchnorm_mode(model, impl, tasks=B)`).
* `BatchedMAML`: `vmap` over tasks of an inner loop written with `torch.func.grad`
  (second order: differentiated through; first order: inner gradients detached); the
  mean query loss is backpropagated to the model's parameters by ordinary autograd.
  Batch norm is the primitive-op implementation: the batching rule of native
  batch_norm's double backward is wrong under `vmap` (pytorch/functorch#534).
* `BatchedReptile`: `vmap` over tasks of functional SGD or Adam (torch.optim.Adam's
  formula, bias corrections included) on the mini-batches of
  `algorithms.reptile.minibatch_schedule`, drawn from the learner's own generator exactly
  like the loop class; theta - mean(theta~) is written into `.grad`.

Engine options common to all three:

* ``chunk_size``: process the meta-batch in consecutive chunks of at most that many tasks
  (gradients accumulated with weight chunk/B) to bound memory; `choose_chunk_size` picks one.
* ``compile``: wrap the batched per-chunk function in `torch.compile`; `compile_seconds`
  is the wall time of the first call (compilation plus one execution).

`set_tf32` switches TF32 matmul/convolutions on CUDA (off is needed for the parity tests
on Ampere+ GPUs; TF32 does not exist on CPU).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .algorithms.base import MetaLearner, accuracy
from .algorithms.protonet import prototypes, squared_euclidean_logits
from .algorithms.reptile import ADAM_BETAS, ADAM_EPS, ReptileSettings, minibatch_schedule
from .backbones import assert_no_aliased_submodules, batchnorm_mode
from .runtime import set_tf32  # noqa: F401  (re-exported: the engine's TF32 switch)
from .tasks import EpisodeBatch

Params = Dict[str, torch.Tensor]

__all__ = ["BatchedProtoNet", "BatchedMAML", "BatchedReptile", "BATCHED", "choose_chunk_size",
           "set_tf32"]


def _task_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-task mean cross-entropy. logits [B, N, ways], labels [B, N] -> [B]."""
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(dim=1)


class _BatchedLearner(MetaLearner):
    """Shared engine plumbing: validation, chunking, optional torch.compile."""

    engine = "batched"

    def __init__(self, model: nn.Module, chunk_size: int | None = None, compile: bool = False) -> None:
        super().__init__(model)
        assert_no_aliased_submodules(model)
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None (no chunking), got {chunk_size!r}; "
                             "fix --chunk-size")
        self.chunk_size = chunk_size
        #: torch.compile mode: None (eager), "default", or e.g. "reduce-overhead" (CUDA graphs);
        #: compile=True means "default"
        self.compile_mode: str | None = compile if isinstance(compile, str) else ("default" if compile else None)
        self.compile = self.compile_mode is not None
        #: seconds taken by the first call of the compiled function (compilation + one run); None until then
        self.compile_seconds: float | None = None
        self._compiled: Dict[str, Callable] = {}

    def _chunks(self, batch: EpisodeBatch):
        if self.chunk_size is None or self.chunk_size >= batch.num_tasks:
            yield 0, batch
            return
        for k, chunk in enumerate(batch.chunks(self.chunk_size)):
            yield k * self.chunk_size, chunk

    def _fn(self, name: str, fn: Callable) -> Callable:
        """`fn`, or its torch.compile'd version (timed on the first call) when compiling."""
        if not self.compile:
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

    def _params(self) -> Params:
        """The model's parameters by name (the real leaves: autograd reaches them)."""
        return dict(self.model.named_parameters())

    def _detached_params(self) -> Params:
        return {k: p.detach() for k, p in self.model.named_parameters()}

    def _measure_step(self, batch: EpisodeBatch) -> None:
        """One meta_step that leaves no trace in the learner's random state (used by choose_chunk_size)."""
        self.meta_step(batch)


# ----------------------------------------------------------------------------------------- ProtoNet
class BatchedProtoNet(_BatchedLearner):
    """Prototypical Networks (Snell et al., 2017) with all episodes folded into one batch.

    bn_impl: 'native' (default: per-task statistics by moving the tasks into the channel
    dimension, one native/cuDNN batch_norm call; faster on CPU too) or 'primitive' (mean,
    variance, rsqrt); the same numbers to rounding.  No vmap here, so native is safe.
    """

    def __init__(self, model: nn.Module, chunk_size: int | None = None, compile: bool = False,
                 bn_impl: str = "native") -> None:
        super().__init__(model, chunk_size, compile)
        if bn_impl not in ("native", "primitive"):
            raise ValueError(f"bn_impl must be 'native' or 'primitive', got {bn_impl!r}")
        self.bn_impl = bn_impl

    def _logits(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                ways: int) -> torch.Tensor:
        """support_x [B, Ns, C, H, W], support_y [B, Ns], query_x [B, Nq, ...] -> logits [B, Nq, ways].

        Must be called inside batchnorm_mode(model, impl, tasks=B).
        """
        b, ns = support_x.shape[:2]
        x = torch.cat([support_x, query_x], dim=1)                       # [B, Ns+Nq, C, H, W]
        emb = self.model(x.flatten(0, 1)).reshape(b, x.shape[1], -1)     # [B, Ns+Nq, D]
        return squared_euclidean_logits(emb[:, ns:], prototypes(emb[:, :ns], support_y, ways))

    def _folded_logits(self, sx, sy, qx, ways):
        fn = self._fn("logits", self._logits)
        with batchnorm_mode(self.model, self.bn_impl, tasks=sx.shape[0]):
            return fn(sx, sy, qx, ways)

    def meta_step(self, batch: EpisodeBatch) -> Dict[str, float]:
        self.zero_grad()
        b = batch.num_tasks
        total_loss, total_acc = 0.0, 0.0
        for _, chunk in self._chunks(batch):
            logits = self._folded_logits(chunk.support_x, chunk.support_y, chunk.query_x, batch.ways)
            losses = _task_losses(logits, chunk.query_y)
            (losses.sum() / b).backward()
            total_loss += losses.detach().sum().item()
            total_acc += accuracy(logits.detach(), chunk.query_y).sum().item()
        return {"loss": total_loss / b, "accuracy": total_acc / b}

    def predict(self, support_x, support_y, query_x, ways):
        with torch.no_grad():
            return self._folded_logits(support_x[None], support_y[None], query_x[None], ways)[0]

    def query_accuracy(self, batch: EpisodeBatch) -> torch.Tensor:
        accs = []
        with torch.no_grad():
            for _, chunk in self._chunks(batch):
                logits = self._folded_logits(chunk.support_x, chunk.support_y, chunk.query_x, batch.ways)
                accs.append(accuracy(logits, chunk.query_y))
        return torch.cat(accs)


# --------------------------------------------------------------------------------------------- MAML
class BatchedMAML(_BatchedLearner):
    """MAML (Finn et al., 2017) with `vmap` over tasks of a `torch.func.grad` inner loop.

    Same constructor as `algorithms.maml.MAML` plus the engine options.  Batch norm is
    always the primitive-op implementation under vmap (pytorch/functorch#534);
    ``bn_impl='native'`` exists only so the tests can show that bug.
    """

    def __init__(self, model: nn.Module, inner_lr: float, inner_steps: int,
                 test_inner_steps: int | None = None, first_order: bool = False,
                 chunk_size: int | None = None, compile: bool = False, bn_impl: str = "primitive") -> None:
        super().__init__(model, chunk_size, compile)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        self.first_order = first_order
        self.bn_impl = bn_impl

    def _adapt(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
               first_order: bool) -> Params:
        """One task: `steps` SGD steps on the support loss. support_x [Ns, C, H, W] -> adapted params."""
        def support_loss(p: Params) -> torch.Tensor:
            return F.cross_entropy(functional_call(self.model, p, (support_x,)), support_y)

        fast = params
        for _ in range(steps):
            grads = grad(support_loss)(fast)
            if first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            fast = {k: fast[k] - self.inner_lr * grads[k] for k in fast}
        return fast

    def _task_query(self, params: Params, support_x, support_y, query_x, query_y, steps: int,
                    first_order: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """One task: (query loss, query logits [Nq, ways]) after adaptation."""
        fast = self._adapt(params, support_x, support_y, steps, first_order)
        logits = functional_call(self.model, fast, (query_x,))
        return F.cross_entropy(logits, query_y), logits

    def _batched_query(self, params: Params, sx, sy, qx, qy, steps: int, first_order: bool):
        """All tasks of a chunk: (losses [B], logits [B, Nq, ways])."""
        def task(sx_, sy_, qx_, qy_):
            return self._task_query(params, sx_, sy_, qx_, qy_, steps, first_order)
        return vmap(task)(sx, sy, qx, qy)

    def meta_step(self, batch: EpisodeBatch) -> Dict[str, float]:
        self.zero_grad()
        b = batch.num_tasks
        params = self._params()
        fn = self._fn("query", self._batched_query)
        total_loss, total_acc = 0.0, 0.0
        with batchnorm_mode(self.model, self.bn_impl):
            for _, c in self._chunks(batch):
                losses, logits = fn(params, c.support_x, c.support_y, c.query_x, c.query_y,
                                    self.inner_steps, self.first_order)
                (losses.sum() / b).backward()
                total_loss += losses.detach().sum().item()
                total_acc += accuracy(logits.detach(), c.query_y).sum().item()
        return {"loss": total_loss / b, "accuracy": total_acc / b}

    def _eval_logits(self, sx, sy, qx, qy) -> torch.Tensor:
        params = self._detached_params()
        with batchnorm_mode(self.model, self.bn_impl), torch.no_grad():
            return self._batched_query(params, sx, sy, qx, qy, self.test_inner_steps, True)[1]

    def predict(self, support_x, support_y, query_x, ways):
        dummy_y = torch.zeros(query_x.shape[0], dtype=torch.long, device=query_x.device)
        return self._eval_logits(support_x[None], support_y[None], query_x[None], dummy_y[None])[0]

    def query_accuracy(self, batch: EpisodeBatch) -> torch.Tensor:
        return torch.cat([accuracy(self._eval_logits(c.support_x, c.support_y, c.query_x, c.query_y),
                                   c.query_y) for _, c in self._chunks(batch)])


# ------------------------------------------------------------------------------------------ Reptile
def _sgd_adapt(loss_fn, params: Params, xs: torch.Tensor, ys: torch.Tensor, lr: float) -> Params:
    fast = params
    for t in range(xs.shape[0]):
        grads = grad(loss_fn)(fast, xs[t], ys[t])
        fast = {k: fast[k] - lr * grads[k] for k in fast}
    return fast


def _adam_adapt(loss_fn, params: Params, xs: torch.Tensor, ys: torch.Tensor, lr: float,
                betas: Tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS) -> Params:
    """Functional torch.optim.Adam (fresh state; single-tensor formula with bias corrections)."""
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


class BatchedReptile(ReptileSettings, _BatchedLearner):
    """Reptile (Nichol et al., 2018) with `vmap` over tasks of functional SGD / Adam (beta1 = 0).

    Same constructor and `meta_step(batch, schedule=None)` as `algorithms.reptile.Reptile`;
    the same seed gives the same mini-batch schedules (same generator consumption).
    """

    def __init__(self, model: nn.Module, inner_lr: float, inner_steps: int, inner_batch: int,
                 inner_optimizer: str = "adam", test_inner_steps: int | None = None,
                 transductive: bool = True, seed: int = 0, chunk_size: int | None = None,
                 compile: bool = False, bn_impl: str = "primitive") -> None:
        _BatchedLearner.__init__(self, model, chunk_size, compile)
        self._init_reptile(inner_lr, inner_steps, inner_batch, inner_optimizer, test_inner_steps,
                           transductive, seed)
        self.bn_impl = bn_impl

    def _loss(self, p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.model, p, (x,)), y)

    def _batched_adapt(self, params: Params, xs: torch.Tensor, ys: torch.Tensor) -> Params:
        """xs [B, steps, inner_batch, C, H, W], ys [B, steps, inner_batch] -> params with a leading [B]."""
        def task(xs_, ys_):
            if self.inner_optimizer == "sgd":
                return _sgd_adapt(self._loss, params, xs_, ys_, self.inner_lr)
            return _adam_adapt(self._loss, params, xs_, ys_, self.inner_lr)
        return vmap(task)(xs, ys)

    def _query_logits(self, fast: Params, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Batched `algorithms.reptile.query_logits`: fast [B, ...], support_x [B, Ns, ...], query_x [B, Nq, ...]."""
        if self.transductive:
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
        fn = self._fn("adapt", self._batched_adapt)
        with batchnorm_mode(self.model, self.bn_impl), torch.no_grad():
            return fn(self._detached_params(), sx[rows, idx], sy[rows, idx])

    def meta_step(self, batch: EpisodeBatch, schedule: torch.Tensor | None = None) -> Dict[str, float]:
        """schedule: optional [B, steps, inner_batch] mini-batch indices (drawn from self.generator if None)."""
        self.zero_grad()
        b = batch.num_tasks
        if schedule is None:
            schedule = minibatch_schedule(b, batch.support_x.shape[1], self.inner_batch,
                                          self.inner_steps, self.generator)
        meta = self._detached_params()
        deltas = {k: torch.zeros_like(p) for k, p in meta.items()}
        total_loss, total_acc = 0.0, 0.0
        for start, c in self._chunks(batch):
            fast = self._adapted(c.support_x, c.support_y, schedule[start:start + c.num_tasks])
            with torch.no_grad():
                for k in deltas:
                    deltas[k] += ((meta[k] - fast[k]) / b).sum(dim=0)
                logits = self._query_logits(fast, c.support_x, c.query_x)
                total_loss += _task_losses(logits, c.query_y).sum().item()
                total_acc += accuracy(logits, c.query_y).sum().item()
        for k, p in self.model.named_parameters():
            p.grad = deltas[k]
        return {"loss": total_loss / b, "accuracy": total_acc / b}

    def _eval_logits(self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        # Like the loop's predict: one schedule from a fresh generator seeded 0, the same for every task.
        gen = torch.Generator().manual_seed(0)
        one = minibatch_schedule(1, sx.shape[1], self.inner_batch, self.test_inner_steps, gen)
        fast = self._adapted(sx, sy, one.expand(sx.shape[0], *one.shape[1:]))
        with torch.no_grad():
            return self._query_logits(fast, sx, qx)

    def predict(self, support_x, support_y, query_x, ways):
        return self._eval_logits(support_x[None], support_y[None], query_x[None])[0]

    def query_accuracy(self, batch: EpisodeBatch) -> torch.Tensor:
        return torch.cat([accuracy(self._eval_logits(c.support_x, c.support_y, c.query_x), c.query_y)
                          for _, c in self._chunks(batch)])

    def _measure_step(self, batch: EpisodeBatch) -> None:
        gen = torch.Generator().manual_seed(0)
        schedule = minibatch_schedule(batch.num_tasks, batch.support_x.shape[1], self.inner_batch,
                                      self.inner_steps, gen)
        self.meta_step(batch, schedule=schedule)


BATCHED = {"protonet": BatchedProtoNet, "maml": BatchedMAML, "reptile": BatchedReptile}


# ------------------------------------------------------------------------------------ chunk sizing
def _activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
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


def _estimate_task_bytes(learner: MetaLearner, batch: EpisodeBatch) -> int:
    """Analytic per-task memory of one meta_step (CPU), from measured activation sizes.

    ProtoNet: one forward of the episode kept for backward, plus its gradient (x2).
    MAML: inner_steps support forwards + one query forward, each kept (x3 with second order:
    activations, their gradients, and the double-backward graph; x2 first order), plus
    (inner_steps+1) copies of the parameters (x2 with their gradients).
    Reptile: one inner mini-batch forward/backward at a time (x2) and the query forward,
    plus the per-task parameters, gradients and optimiser state (x4).
    """
    model = learner.model
    sx, qx = batch.support_x[0], batch.query_x[0]
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if isinstance(learner, BatchedProtoNet):
        return 2 * _activation_bytes(model, torch.cat([sx, qx]))
    if isinstance(learner, BatchedMAML):
        factor = 2 if learner.first_order else 3
        steps = learner.inner_steps
        acts = steps * _activation_bytes(model, sx) + _activation_bytes(model, qx)
        return factor * acts + 2 * (steps + 1) * param_bytes
    if isinstance(learner, BatchedReptile):
        acts = 2 * _activation_bytes(model, sx[: learner.inner_batch]) + _activation_bytes(model, qx)
        return acts + 4 * param_bytes
    raise TypeError(f"choose_chunk_size needs a batched learner ({', '.join(BATCHED)}), "
                    f"got {type(learner).__name__}")


def choose_chunk_size(learner: MetaLearner, batch: EpisodeBatch, max_memory_bytes: int) -> int:
    """Largest number of tasks per chunk whose meta_step should fit in `max_memory_bytes`.

    CUDA: measured.  One meta_step on 1 task and one on 2 tasks (peak
    `torch.cuda.max_memory_allocated` above the memory in use before), giving a per-task
    cost (difference) and a fixed cost; memory is assumed linear in the number of tasks.
    The learner's gradients and random state are restored.
    CPU: estimated analytically by `_estimate_task_bytes` (activation sizes measured with
    forward hooks on one task, times a per-algorithm factor); a rough, conservative guide.
    Returns a value in [1, batch.num_tasks].
    """
    b = batch.num_tasks
    device = batch.support_x.device
    if device.type == "cuda":
        saved = [None if p.grad is None else p.grad.clone() for p in learner.model.parameters()]
        peaks = []
        for n in (1, 2) if b >= 2 else (1,):
            sub = next(batch.chunks(n))
            learner.zero_grad()
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            old_chunk, learner.chunk_size = getattr(learner, "chunk_size", None), None
            try:
                learner._measure_step(sub)
            finally:
                learner.chunk_size = old_chunk
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
        for p, g in zip(learner.model.parameters(), saved):
            p.grad = g
        per_task = max(peaks[-1] - peaks[0], 1) if len(peaks) == 2 else peaks[0]
        fixed = max(peaks[0] - per_task, 0)
    else:
        per_task, fixed = max(_estimate_task_bytes(learner, batch), 1), 0
    return int(max(1, min(b, (max_memory_bytes - fixed) // per_task)))
