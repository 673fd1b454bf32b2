"""Meta-SGD (Li, Zhou, Chen & Li, 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning", arXiv:1707.09835): MAML with a learned learning rate for every parameter entry.

Per task: `inner_steps` steps theta' = theta - alpha * grad L_support(theta) from the
meta-parameters, where alpha has the shape of theta (one rate per entry, `*` element-wise);
the query loss after adaptation, averaged over the meta-batch, is the meta-loss, and the
meta-optimiser (Adam) learns theta and alpha together.  Every entry of alpha starts at
`inner_lr`, as in learn2learn's MetaSGD (the paper's own initialisation of alpha for image
classification was not verified when this module was written).  The paper adapts in one
step (`inner_steps` 1); at evaluation the adaptation runs `test_inner_steps` steps with the
learned rates.  Second order differentiates through the inner gradients; first order treats
them as constants, and alpha still gets its gradient, through theta' = theta - alpha * g with
g held constant.

The rates live outside the model, on its device and dtype, in the model's parameter order and
named "lr.<parameter name>" on both engines: `named_meta_parameters()` hands them to the
meta-optimiser and `extra_state()` to checkpoints (resume, evaluation).

* `MetaSGD` (loop engine): learn2learn's `l2l.algorithms.MetaSGD` over the learner's rates,
  `clone()` / `adapt()` per task (MAML's loop learner with another `wrap`).
* `BatchedMetaSGD`: BatchedMAML (`vmap` over tasks of a `torch.func.grad` inner loop, primitive
  batch norm, pytorch/functorch#534) with another `inner_step`: fast[k] - alpha[k] * grads[k], the
  rates being the learner's leaf tensors, so ordinary autograd reaches them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping, Tuple

import torch
from torch import nn

from ..data.types import EpisodeBatch
from ..engine import parameter_bytes
from ..errors import CheckpointError
from ..learner import SMALL_TASK_IMAGES, AlgorithmSpec, register
from ..settings import RATE, setting
from .maml import MAML, BatchedMAML, MAMLSettings

#: prefix of the rates' names among the meta-parameters ("lr.head.weight")
RATE_PREFIX = "lr."
#: the key of the rates in the learner's state dict: {parameter name: rate tensor}
STATE_KEY = "lr"

if TYPE_CHECKING:  # learn2learn is imported when a loop learner is built (slow: torchvision)
    import learn2learn as l2l


@dataclass(frozen=True)
class MetaSGDSettings(MAMLSettings):
    """MAML's settings (same names, types, ranges and flags); inner_lr is alpha's initial value."""

    inner_lr: float = setting(0.4, "initial value of every learned inner-loop learning rate", limit=RATE)
    first_order: bool = setting(False, "first-order approximation (the rates are still learned)",
                                flags=("--first-order", "--second-order"))

    def protocol(self) -> Dict[str, Any]:
        return {**super().protocol(), "inner_lr_learned": True}


class _LearnedRates:
    """The per-parameter rates of both engines: creation, names, state.  Mixed in before the
    MetaLearner subclass; `_init_rates` is called once the model is set."""

    model: nn.Module
    rates: nn.ParameterList

    def _init_rates(self, inner_lr: float) -> None:
        """One rate tensor per model parameter (same shape, device and dtype), all = inner_lr."""
        self._rate_names = [name for name, _ in self.model.named_parameters()]
        self.rates = nn.ParameterList([nn.Parameter(torch.full_like(p.detach(), inner_lr))
                                       for p in self.model.parameters()])

    def rate_dict(self) -> Dict[str, torch.Tensor]:
        """{model parameter name: its rate tensor} (the leaves themselves)."""
        return dict(zip(self._rate_names, self.rates))

    def named_meta_parameters(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """The model's parameters, then the rates as "lr.<parameter name>", in the model's order."""
        yield from self.model.named_parameters()
        for name, rate in zip(self._rate_names, self.rates):
            yield RATE_PREFIX + name, rate

    def extra_state(self) -> Dict[str, Any]:
        return {STATE_KEY: {name: rate.detach() for name, rate in zip(self._rate_names, self.rates)}}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Copy saved rates into the rate tensors in place (the optimiser holds them)."""
        saved = state.get(STATE_KEY)
        if not isinstance(saved, Mapping):
            raise CheckpointError("the checkpoint holds no Meta-SGD learning rates (learner state "
                                  f"{STATE_KEY!r}); it was not written by a metasgd run")
        rates = self.rate_dict()
        missing = [n for n in rates if n not in saved]
        unexpected = [n for n in saved if n not in rates]
        reshaped = [n for n, r in rates.items() if n in saved and tuple(saved[n].shape) != tuple(r.shape)]
        if missing or unexpected or reshaped:
            raise CheckpointError(f"the checkpoint's Meta-SGD learning rates do not fit this model "
                                  f"(missing {missing}, unexpected {unexpected}, other shape {reshaped}); "
                                  f"evaluate with the run's own model settings")
        with torch.no_grad():
            for name, rate in rates.items():
                rate.copy_(saved[name])


class MetaSGD(_LearnedRates, MAML):
    """learn2learn MetaSGD wrapper over the learner's rates: clone / adapt / backward, one task at a time.

    MAML's per-task loop (adaptation, `meta_step`, `predict`) is reused as it is: learn2learn's
    MetaSGD has MAML's `clone()` / `adapt(loss, first_order)`, so only the wrapper in `self.maml`
    differs.  With first order, `adapt` takes g without a graph and theta - alpha * g still
    reaches alpha.
    """

    def wrap(self, model: nn.Module) -> l2l.algorithms.MetaSGD:
        """learn2learn's MetaSGD over this learner's rates (lrs=: it uses and clones our tensors)."""
        import learn2learn as l2l
        self._init_rates(self.settings.inner_lr)
        return l2l.algorithms.MetaSGD(model, first_order=self.settings.first_order, lrs=self.rates)


class BatchedMetaSGD(_LearnedRates, BatchedMAML):
    """BatchedMAML with a learned rate per parameter entry: only the inner step differs."""

    def __init__(self, model: nn.Module, settings: MetaSGDSettings, seed: int = 0, chunk_size: int | None = None,
                 compile: bool | str = False, bn_impl: str = "primitive") -> None:
        super().__init__(model, settings, seed, chunk_size, compile, bn_impl)
        self._init_rates(self.settings.inner_lr)

    def inner_step(self, name: str, value: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """value - alpha * gradient, alpha being parameter `name`'s rate tensor (same shape)."""
        return value - self.rate_dict()[name] * gradient

    def task_bytes(self, batch: EpisodeBatch) -> int:
        """BatchedMAML's estimate (kept activations; inner_steps+1 parameter copies and their
        gradients) plus, per inner step, one parameter-sized tensor: the task's share of the
        rates' gradient (vmap forms it per task before summing).  The rates themselves are shared."""
        return super().task_bytes(batch) + self.settings.inner_steps * parameter_bytes(self.model)


# CPU (benchmarks/results/cpu/metasgd-omniglot-5w1s): the loop; batched is 0.50x at 32 tasks on one
# thread.  CUDA (H100, benchmarks/results/gpu-h100/): batched, 5.4x the loop at 32 tasks (76.4 vs 414.7 ms).
register(AlgorithmSpec(
    name="metasgd",
    summary="Meta-SGD (Li et al., 2017): MAML with learned per-parameter inner learning rates",
    settings=MetaSGDSettings, loop=MetaSGD, batched=BatchedMetaSGD, cpu_batched_up_to_images=SMALL_TASK_IMAGES,
    # one test step (the step the rates are learned for): 53-60% on 100 test episodes over seeds 0-5
    # (hidden 32, 5 queries), 13-15 s of training on one core; MAML's quick settings with 3 test steps: 47-52%
    quick=dict(meta_batch=2, inner_lr=0.4, inner_steps=1, test_inner_steps=1, train_queries=1, iterations=120)))
