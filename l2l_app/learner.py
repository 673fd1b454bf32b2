"""What every algorithm module provides, and the meta-learner contract.

An algorithm is one module under `l2l_app/algorithms/` that holds its settings dataclass
(subclass of `AlgorithmSettings`, only its own fields), its loop learner, its batched learner
(or None: loop only), its meta-optimiser and evaluation protocol, and one `register(AlgorithmSpec)`.
Everything else (config, CLI, experiment builder, trainer, evaluation, bench, report, tests)
reads `l2l_app.registry.ALGORITHMS`.

The learner contract: `meta_gradient(batch)` fills `.grad` on `meta_parameters()` (mean over the
batch's tasks) and returns its metrics as 0-d tensors on the device, without a host
synchronisation (so a step can be queued, or captured in a CUDA graph, and read later);
`meta_step(batch)` is the same with the metrics read as floats.  Neither steps an optimiser.  MAML and ProtoNet
backpropagate the query loss; Reptile writes theta - mean(adapted theta) into `.grad` and is
stepped by plain SGD with lr = epsilon.  `state_dict()` covers everything a learner learns or
draws (the model, Meta-SGD's learning rates, Reptile's mini-batch generator), so checkpoints,
resume and evaluation need no special case.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Type)

import torch
import torch.nn.functional as F
from torch import nn

from .data.types import EpisodeBatch
from .registry import ALGORITHMS

if TYPE_CHECKING:  # pragma: no cover
    from .config import OptimConfig

Optimizers = Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of correct argmax predictions. logits [..., N, ways], labels [..., N] -> [...]."""
    return (logits.argmax(dim=-1) == labels).to(logits.dtype).mean(dim=-1)


TaskLogits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: a meta-step's metrics: 'loss' and 'accuracy' (means over the tasks; accuracy a fraction) as 0-d
#: float64 tensors on the device
StepMetrics = Dict[str, torch.Tensor]


class QueryMetrics:
    """Running sums of per-task query losses and accuracies, kept on the device (float64)."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | float = 0.0
        self.accuracy: torch.Tensor | float = 0.0

    def add(self, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """losses [...] (one per task), logits [..., Nq, ways], labels [..., Nq]."""
        self.loss = self.loss + losses.detach().double().sum()
        self.accuracy = self.accuracy + accuracy(logits.detach(), labels).double().sum()

    def means(self, num_tasks: int) -> StepMetrics:
        return {"loss": self.loss / num_tasks, "accuracy": self.accuracy / num_tasks}


def backprop_query_losses(batch: EpisodeBatch, task_logits: TaskLogits) -> StepMetrics:
    """The per-task loop of the loss-backpropagating learners: for each task, query logits
    `task_logits(support_x, support_y, query_x)` [Nq, ways], cross-entropy, backward of loss / B
    (so `.grad` accumulates the mean over tasks, and each task's graph is freed at once).
    Returns the mean query loss and accuracy (device scalars)."""
    totals = QueryMetrics()
    for sx, sy, qx, qy in batch.tasks():
        logits = task_logits(sx, sy, qx)
        loss = F.cross_entropy(logits, qy)
        (loss / batch.num_tasks).backward()
        totals.add(loss, logits, qy)
    return totals.means(batch.num_tasks)


# ----------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class AlgorithmSettings:
    """Base of every algorithm's settings dataclass (fields declared with `settings.setting`).

    A field name is also the setting's flat name (flag, recipe key, config-file key); two
    algorithms that share a name (inner_lr) share the flag, each with its own default and range.
    """

    def resolved(self) -> "AlgorithmSettings":
        """Every derived None replaced by its value (what config.json records)."""
        return self

    def problems(self) -> List[str]:
        """Cross-field errors, each naming its flags (ranges and choices are checked by config)."""
        return []

    def protocol(self) -> Dict[str, Any]:
        """What an evaluation of this algorithm records next to its number (batch norm, adaptation)."""
        return {"batchnorm": "batch statistics (transductive)"}


# --------------------------------------------------------------------------- meta-optimisers
@dataclass(frozen=True)
class MetaOptimizer:
    """How the meta-parameters are stepped: build(params, optim config, algorithm settings).

    `uses`: the optimiser settings (`OptimConfig` fields) that only this optimiser reads; they are
    refused for an algorithm with another optimiser.
    `capturable`: `build(..., capturable=True)` gives an optimiser whose step a CUDA graph can
    hold (`engine.graphs.CapturedTrainingStep`).  Its learning rate is either a float that
    changes seldom (Adam's step decay: the step is captured again after a change) or a device
    tensor the scheduler fills in place and the graph reads (Reptile's epsilon, annealed every step).
    `spans_iterations`: its schedule is laid out over --iterations (Reptile's epsilon reaches
    --meta-lr-final at the last one), so a run a time budget ends sooner stops mid-schedule; the
    trainer says so, and how many iterations the budget holds.
    `defaults`: optimiser settings whose default differs for it (flat names: Reptile's epsilon,
    --meta-lr, is 1.0 where Adam's learning rate is 0.001); a recipe, file or flag overrides them.
    """

    description: str
    uses: Tuple[str, ...]
    build: Callable[..., Optimizers]
    capturable: bool = False
    spans_iterations: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)


def _adam_with_step_decay(params: List[torch.Tensor], optim: "OptimConfig",
                          settings: AlgorithmSettings, capturable: bool = False) -> Optimizers:
    """Adam; `capturable` (for a CUDA graph): its step count kept on the device, so the step needs
    no host read, and fused (two kernel launches per step instead of a dozen foreach ones)."""
    optimizer = torch.optim.Adam(params, lr=optim.meta_lr, capturable=capturable, fused=True if capturable else None)
    if optim.lr_decay_every:
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, optim.lr_decay_every, optim.lr_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def apply_meta_gradient(learner: "MetaLearner", optimizer: torch.optim.Optimizer,
                        grad_clip: Optional[float] = None) -> None:
    """Clip the meta-gradient in `.grad` to norm `grad_clip` (None or 0: no clipping) and step the
    meta-optimiser: what follows `meta_gradient` in every training step, eager or captured."""
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(learner.meta_parameters(), grad_clip)
    optimizer.step()


#: what says how an optimiser's step runs, not what it computes: a checkpoint keeps none of them
#: (resuming takes the flags of the optimiser built for the resumed run, captured or not)
EXECUTION_FLAGS = ("capturable", "fused", "foreach", "differentiable")
#: the per-group hyper-parameters a scheduler may hold as device tensors
LR_KEYS = ("lr", "initial_lr")


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, torch.Tensor) else value


def _plain_scheduler_state(state: Mapping[str, Any]) -> Dict[str, Any]:
    """A scheduler's state dict with its learning rates (`base_lrs`, `_last_lr`) as floats."""
    return {k: [_plain(x) for x in v] if k in ("base_lrs", "_last_lr") else v for k, v in state.items()}


def optimizer_state(optimizer: torch.optim.Optimizer, scheduler: Any) -> Dict[str, Any]:
    """The optimiser's and scheduler's state for a checkpoint, independent of how the step runs:
    learning rates as floats (a capturable optimiser holds them as device tensors), no execution
    flags.  One host read of each tensor learning rate (at checkpoint time only)."""
    opt = optimizer.state_dict()
    opt["param_groups"] = [{k: _plain(v) for k, v in g.items() if k not in EXECUTION_FLAGS}
                           for g in opt["param_groups"]]
    return {"optimizer": opt, "scheduler": _plain_scheduler_state(scheduler.state_dict())}


def load_optimizer_state(optimizer: torch.optim.Optimizer, scheduler: Any, optimizer_saved: Mapping[str, Any],
                         scheduler_saved: Mapping[str, Any]) -> None:
    """Restore `optimizer_state` (or an older checkpoint's plain state dicts) into an optimiser and
    scheduler built for this run: their execution flags and learning-rate types are kept (a tensor
    learning rate is filled in place), so a run captured on a GPU resumes eagerly and back."""
    groups = []
    for now, saved in zip(optimizer.param_groups, optimizer_saved["param_groups"]):
        group = {k: v for k, v in saved.items() if k not in EXECUTION_FLAGS}
        group.update({k: now[k] for k in EXECUTION_FLAGS if k in now})
        groups.append(group)
    tensor_lrs = [{k: g[k] for k in LR_KEYS if isinstance(g.get(k), torch.Tensor)} for g in optimizer.param_groups]
    optimizer.load_state_dict({**optimizer_saved, "param_groups": groups})
    for group, tensors, saved in zip(optimizer.param_groups, tensor_lrs, groups):
        for key, tensor in tensors.items():
            tensor.fill_(_plain(saved[key]))
            group[key] = tensor
        if not (group.get("capturable") or group.get("fused")):  # an eager step reads its count on the host
            for p in group["params"]:
                step = optimizer.state.get(p, {}).get("step")
                if isinstance(step, torch.Tensor):
                    optimizer.state[p]["step"] = step.cpu()
    scheduler.load_state_dict(_plain_scheduler_state(scheduler_saved))


#: Adam on the query loss; optionally the lr times --lr-decay every --lr-decay-every steps
ADAM = MetaOptimizer("Adam on the query loss (optional step decay)", ("lr_decay", "lr_decay_every"),
                     _adam_with_step_decay, capturable=True)


# ------------------------------------------------------------------------------- the learner
class MetaLearner(abc.ABC):
    """An algorithm bound to one model, its settings and one engine."""

    #: the engine that computes the meta-batch ('loop' or 'batched')
    engine: str = "loop"

    def __init__(self, model: nn.Module, settings: AlgorithmSettings) -> None:
        self.model = model
        self.settings = settings.resolved()

    def named_meta_parameters(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """What the meta-optimiser learns, by name: the model's parameters (plus any of the learner's)."""
        return self.model.named_parameters()

    def meta_parameters(self) -> List[torch.Tensor]:
        return [p for _, p in self.named_meta_parameters()]

    def zero_grad(self) -> None:
        for p in self.meta_parameters():
            p.grad = None

    def extra_state(self) -> Dict[str, Any]:
        """State beyond the model's (learned rates, random generators); {} for most learners."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of `extra_state`."""

    def state_dict(self) -> Dict[str, Any]:
        """Everything this learner learns or draws: {'model': ..., **extra_state()}."""
        return {"model": self.model.state_dict(), **self.extra_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.load_extra_state({k: v for k, v in state.items() if k != "model"})

    @abc.abstractmethod
    def meta_gradient(self, batch: EpisodeBatch, **inputs: torch.Tensor) -> StepMetrics:
        """Fill `.grad` of the meta-parameters for `batch`; return {'loss', 'accuracy'} (means over
        tasks) as device scalars, with no host synchronisation.  `inputs`: the tensors of
        `step_inputs(batch)` (none for most learners)."""

    def meta_step(self, batch: EpisodeBatch, **inputs: torch.Tensor) -> Dict[str, float]:
        """`meta_gradient` with its metrics read as floats (one host synchronisation)."""
        return {k: float(v) for k, v in self.meta_gradient(batch, **inputs).items()}

    def step_inputs(self, batch: EpisodeBatch) -> Dict[str, torch.Tensor]:
        """Tensors a meta-step draws besides the batch (Reptile's mini-batch schedule), on the
        batch's device: a captured step (`engine.graphs`) copies them in like the batch."""
        return self.draw_step_inputs(batch.num_tasks, batch.support_x.shape[1], batch.support_x.device)

    def draw_step_inputs(self, num_tasks: int, num_support: int, device: torch.device) -> Dict[str, torch.Tensor]:
        """`step_inputs` for a meta-batch of `num_tasks` tasks of `num_support` support images each
        (none for most learners): what a captured whole step draws before it replays."""
        return {}

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


# ------------------------------------------------------------------------------ registration
@dataclass(frozen=True)
class Alias:
    """Another name for an algorithm with some settings fixed: fomaml = maml with first_order."""

    implies: Mapping[str, Any]
    meaning: str


#: device type -> the engine measured faster at a meta-batch of at least 2 tasks (`l2l-app bench`)
LOOP_ON_CPU_BATCHED_ON_CUDA: Mapping[str, str] = {"cpu": "loop", "cuda": "batched"}
#: MAML's family on a CPU: the batched engine for training tasks of at most this many images
#: (ways x (shots + queries)), the loop for larger ones.  On 2 threads the batched step (end to
#: end) was 1.4-2.7x faster at 10 and 40 images per task and 1.2-2.4x slower from 50 on (one
#: thread: 1.3x faster at 10, a tie at 40, 1.4x slower at 50): one vmapped step of many small tasks
#: saves the loop's per-task op launches, while large tasks are already compute-bound
#: (benchmarks/cpu_recipe_engines.sh; results/cpu/recipe-engines-{2threads,1thread}/)
SMALL_TASK_IMAGES = 40


@dataclass(frozen=True)
class AlgorithmSpec:
    """Everything the rest of the package needs to know about one algorithm.

    loop / batched: learner classes, constructed as `Loop(model, settings, seed=...)` and
    `Batched(model, settings, seed=..., chunk_size=..., compile=...)`; batched None: loop only.
    head: the model is the backbone plus a linear layer over `ways` classes, so training and
    evaluation episodes must have that many classes (False: the backbone alone, any ways).
    auto_engine: device type -> engine that `--engine auto` picks (measured with `l2l-app bench`).
    cpu_batched_up_to_images: on a CPU `--engine auto` picks the batched engine instead where a
    training task has at most this many images (`SMALL_TASK_IMAGES`; 0: never).
    eval_engine: device type -> engine that scores evaluation episodes, whatever engine trained
    (measured by benchmarks/eval_engines.py; results in benchmarks/results/*/eval_engines.json).
    gpu_tuning: the run settings (`compile`, `cudnn_benchmark`, `conv_impl`) of the batched
    training step measured fastest on a GPU for the algorithm's recipe, which `--engine auto`
    gives a training run on a GPU where the user left them unset (`experiment.resolve_tuning`);
    empty: not measured, the plain settings.
    """

    name: str
    summary: str
    settings: Type[AlgorithmSettings]
    loop: Type[MetaLearner]
    batched: Optional[Type[MetaLearner]]
    head: bool = True
    optimizer: MetaOptimizer = ADAM
    auto_engine: Mapping[str, str] = field(default_factory=lambda: dict(LOOP_ON_CPU_BATCHED_ON_CUDA))
    cpu_batched_up_to_images: int = 0
    eval_engine: Mapping[str, str] = field(default_factory=lambda: dict(LOOP_ON_CPU_BATCHED_ON_CUDA))
    gpu_tuning: Mapping[str, Any] = field(default_factory=dict)
    aliases: Mapping[str, Alias] = field(default_factory=dict)
    #: settings (flat names) of a short CPU run on Omniglot 5-way that learns visibly in seconds:
    #: the learning tests of every registered algorithm run it
    quick: Mapping[str, Any] = field(default_factory=dict)

    @property
    def engines(self) -> Tuple[str, ...]:
        return ("loop", "batched") if self.batched is not None else ("loop",)

    def setting_names(self) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.settings))


def register(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Add an algorithm to `registry.ALGORITHMS` (called once, at the bottom of its module)."""
    return ALGORITHMS.register(spec.name, spec)
