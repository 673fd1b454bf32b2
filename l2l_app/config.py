"""Typed experiment configuration: frozen dataclasses, recipes, overrides, validation.

Every setting has one flat name (the CLI flag without dashes, e.g. ``inner_lr`` for
``--inner-lr``), unique across the groups, so a recipe, a flag and config.json all
speak the same language.  `validate()` checks everything at once and names the flag.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional

from .errors import ConfigError

ALGORITHMS = ("protonet", "maml", "reptile")
#: inner learning rate when --inner-lr is not given: MAML Omniglot's SGD step (Finn et al.),
#: Reptile's inner Adam (Nichol et al.)
DEFAULT_INNER_LR = {"maml": 0.4, "reptile": 1e-3, "protonet": 0.0}
ENGINES = ("auto", "loop", "batched")
SAMPLERS = ("auto", "l2l", "tensor")
INNER_OPTIMIZERS = ("adam", "sgd")
BACKBONES = ("conv4", "conv4-strided")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "omniglot"
    data_root: Optional[str] = None
    sampler: str = "auto"
    skip_bad_images: bool = False


@dataclass(frozen=True)
class TaskConfig:
    """Evaluation episodes (ways/shots/queries) and training episodes (train_*; None = same)."""
    ways: int = 5
    shots: int = 1
    queries: int = 15
    train_ways: Optional[int] = None
    train_shots: Optional[int] = None
    train_queries: Optional[int] = None


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "conv4"
    hidden: int = 64


@dataclass(frozen=True)
class AlgorithmConfig:
    algo: str = "protonet"
    inner_lr: Optional[float] = None  # None: DEFAULT_INNER_LR of the algorithm
    inner_steps: int = 1
    test_inner_steps: Optional[int] = None
    first_order: bool = False
    inner_batch: int = 10
    inner_optimizer: str = "adam"
    transductive: bool = True


@dataclass(frozen=True)
class OptimConfig:
    meta_lr: float = 1e-3
    meta_lr_final: Optional[float] = None
    meta_batch: int = 1
    iterations: int = 1000
    grad_clip: Optional[float] = None
    lr_decay_every: Optional[int] = None
    lr_decay: float = 0.5


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    device: str = "auto"
    engine: str = "auto"
    chunk_size: Optional[int] = None
    max_memory: Optional[float] = None
    compile: bool = False
    tf32: bool = False
    val_every: int = 100
    val_episodes: int = 200
    checkpoint_every: int = 100
    checkpoint_minutes: Optional[float] = None
    time_budget: Optional[float] = None
    skip_nonfinite: bool = False


@dataclass(frozen=True)
class EvalConfig:
    episodes: int = 1000
    split: str = "test"
    eval_seed: int = 1234


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    recipe: Optional[str] = None

    # ---- derived settings -------------------------------------------------
    @property
    def train_ways(self) -> int:
        return self.task.train_ways or self.task.ways

    @property
    def train_shots(self) -> int:
        return self.task.train_shots or self.task.shots

    @property
    def train_queries(self) -> int:
        return self.task.train_queries or self.task.queries

    @property
    def inner_lr(self) -> float:
        a = self.algorithm
        return DEFAULT_INNER_LR.get(a.algo, 0.0) if a.inner_lr is None else a.inner_lr

    @property
    def test_inner_steps(self) -> int:
        a = self.algorithm
        return a.inner_steps if a.test_inner_steps is None else a.test_inner_steps

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> Dict[str, Any]:
        """{flat_name: value} over every group (the names flags and recipes use)."""
        out: Dict[str, Any] = {}
        for group in GROUPS:
            out.update(dataclasses.asdict(getattr(self, group)))
        return out


GROUPS = ("data", "task", "model", "algorithm", "optim", "run", "eval")
_GROUP_TYPES = {f.name: f.type for f in fields(ExperimentConfig)}
FIELD_GROUP: Dict[str, str] = {}
for _group, _cls in (("data", DataConfig), ("task", TaskConfig), ("model", ModelConfig),
                     ("algorithm", AlgorithmConfig), ("optim", OptimConfig), ("run", RunConfig),
                     ("eval", EvalConfig)):
    for _f in fields(_cls):
        assert _f.name not in FIELD_GROUP, f"duplicate config name {_f.name}"
        FIELD_GROUP[_f.name] = _group
_GROUP_CLASSES = {"data": DataConfig, "task": TaskConfig, "model": ModelConfig,
                  "algorithm": AlgorithmConfig, "optim": OptimConfig, "run": RunConfig,
                  "eval": EvalConfig}


def flag(name: str) -> str:
    """The CLI flag for a flat config name: inner_lr -> --inner-lr."""
    return "--" + name.replace("_", "-")


def with_overrides(config: ExperimentConfig, overrides: Dict[str, Any]) -> ExperimentConfig:
    """Return a copy with flat-named overrides applied (None values are ignored)."""
    by_group: Dict[str, Dict[str, Any]] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        if name == "recipe":
            config = dataclasses.replace(config, recipe=value)
            continue
        if name not in FIELD_GROUP:
            import difflib
            close = difflib.get_close_matches(name, list(FIELD_GROUP), n=1)
            hint = f" (did you mean {flag(close[0])}?)" if close else ""
            raise ConfigError(f"unknown setting {name!r}{hint}")
        by_group.setdefault(FIELD_GROUP[name], {})[name] = value
    for group, values in by_group.items():
        config = dataclasses.replace(config, **{group: dataclasses.replace(getattr(config, group), **values)})
    return config


def from_dict(data: Dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config from `to_dict()` output (config.json)."""
    kwargs: Dict[str, Any] = {}
    for group, cls in _GROUP_CLASSES.items():
        known = {f.name for f in fields(cls)}
        kwargs[group] = cls(**{k: v for k, v in data.get(group, {}).items() if k in known})
    return ExperimentConfig(recipe=data.get("recipe"), **kwargs)


def load_json(path: Path) -> ExperimentConfig:
    try:
        return from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None


def dump_json(config: ExperimentConfig, path: Path) -> None:
    Path(path).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def _choice(errors: list, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        import difflib
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        errors.append(f"{flag(name)} {value!r} is not one of {', '.join(allowed)}{hint}")


def _positive(errors: list, name: str, value: Any, minimum: float = 1, integer: bool = True) -> None:
    if value is None:
        return
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        errors.append(f"{flag(name)} must be a whole number, got {value!r}")
    elif not isinstance(value, (int, float)) or value != value or value < minimum:
        errors.append(f"{flag(name)} must be >= {minimum}, got {value!r}")


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Check every setting; raise one ConfigError listing all problems, each naming its flag."""
    errors: list[str] = []
    from .datasets import DATASETS  # local import: datasets pulls in PIL/learn2learn
    _choice(errors, "dataset", config.data.dataset, tuple(DATASETS))
    _choice(errors, "sampler", config.data.sampler, SAMPLERS)
    _choice(errors, "algo", config.algorithm.algo, ALGORITHMS)
    _choice(errors, "engine", config.run.engine, ENGINES)
    _choice(errors, "inner_optimizer", config.algorithm.inner_optimizer, INNER_OPTIMIZERS)
    _choice(errors, "backbone", config.model.backbone, BACKBONES)
    _choice(errors, "split", config.eval.split, ("train", "val", "test"))
    _positive(errors, "ways", config.task.ways, 2)
    _positive(errors, "train_ways", config.task.train_ways, 2)
    for name in ("shots", "queries", "train_shots", "train_queries", "hidden", "inner_batch",
                 "meta_batch", "iterations", "val_every", "val_episodes", "checkpoint_every",
                 "episodes", "chunk_size", "lr_decay_every"):
        _positive(errors, name, config.flat()[name], 1)
    for name in ("inner_steps", "test_inner_steps"):
        _positive(errors, name, config.flat()[name], 0)
    for name in ("inner_lr", "meta_lr"):
        value = config.flat()[name]
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not (0 < value < float("inf")):
            errors.append(f"{flag(name)} must be a positive number, got {value!r}")
    for name in ("meta_lr_final", "grad_clip", "max_memory", "time_budget", "lr_decay", "checkpoint_minutes"):
        value = config.flat()[name]
        if value is not None and (not isinstance(value, (int, float)) or not (0 <= value < float("inf"))):
            errors.append(f"{flag(name)} must be a non-negative number, got {value!r}")
    algo = config.algorithm.algo
    if algo in ("maml", "reptile") and config.train_ways != config.task.ways:
        errors.append(f"{algo} has a {config.train_ways}-way output layer: --train-ways must equal --ways "
                      f"({config.task.ways}); drop --train-ways or use --algo protonet")
    if algo == "maml" and config.algorithm.inner_steps < 1:
        errors.append("--inner-steps must be >= 1 for maml")
    if errors:
        raise ConfigError("; ".join(errors))
    return config
