"""Names -> builders: models, meta-learners (algorithm x engine), optimisers, samplers.

`AUTO_ENGINE` encodes which engine is faster per algorithm and device type, as measured
by `benchmarks/engine_speed.py` (results in benchmarks/results/): `--engine auto` never
picks a slower engine.
"""
from __future__ import annotations

import difflib
from typing import Dict, Tuple

import torch
from torch import nn

from .algorithms.base import MetaLearner
from .algorithms.maml import MAML
from .algorithms.protonet import ProtoNet
from .algorithms.reptile import Reptile
from .backbones import Classifier, assert_no_aliased_submodules, build_backbone
from .config import ExperimentConfig
from .errors import ConfigError

LOOP: Dict[str, type] = {"protonet": ProtoNet, "maml": MAML, "reptile": Reptile}

#: (algorithm, device type) -> the faster engine for a meta-batch of at least
#: `BATCHED_FROM_META_BATCH` tasks, from `l2l-app bench` (benchmarks/results/):
#: - CPU (2 cores, cpu/*/bench.md): the loop for all three; the batched engine is 3.5x slower
#:   for MAML, 1.6x for Reptile and 1.9x for ProtoNet at 32 tasks (vmap's grouped convolutions
#:   and the primitive batch norm cost more than they save without a GPU);
#: - CUDA (H200, gpu-h200/*/bench.md): the batched engine for all, 5-8x at 32 tasks; at one
#:   task the loop is faster (MAML 11.5 vs 19.8 ms), the crossover lies between 1 and 4 tasks.
AUTO_ENGINE: Dict[Tuple[str, str], str] = {
    ("maml", "cpu"): "loop",
    ("protonet", "cpu"): "loop",
    ("reptile", "cpu"): "loop",
    ("maml", "cuda"): "batched",
    ("protonet", "cuda"): "batched",
    ("reptile", "cuda"): "batched",
}
BATCHED_FROM_META_BATCH = 2


def unknown(kind: str, name: str, valid) -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {kind} {name!r}: choose from {', '.join(valid)}{hint}")


def resolve_engine(algo: str, engine: str, device: torch.device, meta_batch: int | None = None) -> str:
    """--engine auto -> the engine measured faster for this algorithm, device and meta-batch."""
    if engine != "auto":
        return engine
    if meta_batch is not None and meta_batch < BATCHED_FROM_META_BATCH:
        return "loop"
    return AUTO_ENGINE.get((algo, device.type), "loop")


def resolve_sampler(sampler: str, engine: str) -> str:
    """'auto' -> the tensor sampler for the batched engine, learn2learn's TaskDataset for the loop."""
    if sampler != "auto":
        return sampler
    return "tensor" if engine == "batched" else "l2l"


def build_model(config: ExperimentConfig, in_channels: int, image_size: int) -> nn.Module:
    """Conv4 embedding (ProtoNet) or Conv4 + linear head over --ways classes (MAML, Reptile)."""
    backbone = build_backbone(config.model.backbone, in_channels, image_size, config.model.hidden)
    model = backbone if config.algorithm.algo == "protonet" else Classifier(backbone, config.task.ways)
    assert_no_aliased_submodules(model)
    return model


def learner_kwargs(config: ExperimentConfig) -> Dict[str, object]:
    a = config.algorithm
    if a.algo == "protonet":
        return {}
    if a.algo == "maml":
        return dict(inner_lr=config.inner_lr, inner_steps=a.inner_steps,
                    test_inner_steps=config.test_inner_steps, first_order=a.first_order)
    if a.algo == "reptile":
        return dict(inner_lr=config.inner_lr, inner_steps=a.inner_steps, inner_batch=a.inner_batch,
                    inner_optimizer=a.inner_optimizer, test_inner_steps=config.test_inner_steps,
                    transductive=a.transductive, seed=config.run.seed)
    raise unknown("algorithm", a.algo, LOOP)


def build_learner(config: ExperimentConfig, model: nn.Module, engine: str,
                  chunk_size: int | None = None) -> MetaLearner:
    """The meta-learner for --algo on `engine` ('loop' or 'batched')."""
    algo = config.algorithm.algo
    kwargs = learner_kwargs(config)
    if engine == "loop":
        return LOOP[algo](model, **kwargs)
    if engine == "batched":
        from .batched import BATCHED
        return BATCHED[algo](model, **kwargs, chunk_size=chunk_size, compile=config.run.compile)
    raise unknown("engine", engine, ("loop", "batched"))


def build_optimizer(config: ExperimentConfig, learner: MetaLearner
                    ) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam on the query loss (MAML, ProtoNet); plain SGD with lr = epsilon for Reptile.

    Reptile's epsilon anneals linearly from --meta-lr to --meta-lr-final (default 0) over
    --iterations; ProtoNet/MAML optionally decay the lr by --lr-decay every --lr-decay-every steps.
    """
    o = config.optim
    params = list(learner.parameters())
    if config.algorithm.algo == "reptile":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=o.meta_lr)
        final = 0.0 if o.meta_lr_final is None else o.meta_lr_final
        ratio = final / o.meta_lr

        def linear(step: int) -> float:
            frac = min(step / o.iterations, 1.0)
            return 1.0 + (ratio - 1.0) * frac

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, linear)
    optimizer = torch.optim.Adam(params, lr=o.meta_lr)
    if o.lr_decay_every:
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, o.lr_decay_every, o.lr_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
