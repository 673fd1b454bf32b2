"""What the tests enrol from the registries: every registered algorithm on every engine it
declares, with small settings derived from its own defaults (no list of algorithms here)."""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

import l2l_app.config  # noqa: F401  (imports and registers every algorithm, backbone and dataset)
from l2l_app.backbones import Classifier, Conv4
from l2l_app.learner import AlgorithmSettings, AlgorithmSpec, MetaLearner
from l2l_app.registry import ALGORITHMS

#: every registered algorithm
ALGOS: List[str] = ALGORITHMS.names()
#: the algorithms with a batched engine (parity with their loop engine is tested)
BATCHED_ALGOS: List[str] = [name for name, spec in ALGORITHMS.items() if spec.batched is not None]
#: (algorithm, engine) for every engine each algorithm declares
ENGINE_CASES: List[Tuple[str, str]] = [(name, engine) for name, spec in ALGORITHMS.items() for engine in spec.engines]
#: algorithm settings that make the test problems small, applied where an algorithm has them
SMALL = {"inner_steps": 2, "inner_batch": 3}

WAYS, SIZE, HIDDEN = 3, 16, 8


def small_settings(algo: str, **changes: Any) -> AlgorithmSettings:
    """The algorithm's defaults, with SMALL where it has those settings, and `changes`."""
    spec = ALGORITHMS[algo]
    names = spec.setting_names()
    return spec.settings(**{**{k: v for k, v in SMALL.items() if k in names}, **changes})


def make_net(algo: str, dtype=torch.float64, seed: int = 0, ways: int = WAYS) -> nn.Module:
    """A small Conv4 (8 filters, 16x16 grey images), with an output layer when the algorithm has one."""
    torch.manual_seed(seed)
    backbone = Conv4(1, HIDDEN, SIZE)
    net = Classifier(backbone, ways) if ALGORITHMS[algo].head else backbone
    return net.to(dtype)


def make_learner(algo: str, engine: str, net: nn.Module, settings: AlgorithmSettings | None = None,
                 seed: int = 0, **engine_options: Any) -> MetaLearner:
    spec: AlgorithmSpec = ALGORITHMS[algo]
    settings = small_settings(algo) if settings is None else settings
    if engine == "loop":
        return spec.loop(net, settings, seed=seed)
    return spec.batched(net, settings, seed=seed, **engine_options)


def split_kwargs(algo: str, kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the algorithm's settings, engine options) from one keyword dict."""
    names = ALGORITHMS[algo].setting_names()
    return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}


def make_pair(algo: str, dtype=torch.float64, seed: int = 0, **kwargs: Any) -> Tuple[MetaLearner, MetaLearner]:
    """(loop learner, batched learner) on two identical copies of one network; kwargs are the
    algorithm's settings (over `small_settings`) and the batched engine's options."""
    own, engine_options = split_kwargs(algo, kwargs)
    settings = small_settings(algo, **own) if own else small_settings(algo)
    net = make_net(algo, dtype)
    return (make_learner(algo, "loop", copy.deepcopy(net), settings, seed=seed),
            make_learner(algo, "batched", copy.deepcopy(net), settings, seed=seed, **engine_options))
