"""Typed experiment configuration: frozen dataclasses, recipes, config files, overrides, validation.

An `ExperimentConfig` nests one dataclass per component: data, task (episode shapes), model,
the algorithm's own settings (the `AlgorithmSettings` subclass its module registers: only
its fields), the meta-optimiser, the run and the evaluation.  Every setting also has one flat
name (the CLI flag without dashes, e.g. ``inner_lr`` for ``--inner-lr``), so a recipe, a flag,
a config file and config.json all speak the same language; two algorithms that use a setting
of the same name share it.  This module reads `registry.ALGORITHMS`, `BACKBONES` and
`DATASETS` and names no algorithm, backbone or dataset.

`validate()` checks everything at once and names the flag; `compose()` builds a new run's
config (defaults < recipe < config file < flags) and refuses settings the chosen algorithm
does not use; `resolve()` fills in every derived value (what config.json records).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from . import algorithms as _algorithms, backbones as _backbones, data as _data  # noqa: F401  (they register)
from .backbones import CONV_IMPLS
from .data.class_split import split_ratios
from .data.types import DATA_OPTIONS, RESIZE_POLICIES, VECTORS
from .errors import ConfigError, DataError
from .learner import AlgorithmSettings, AlgorithmSpec
from .registry import ALGORITHMS, BACKBONES, DATASETS
from .settings import FLOAT32_MAX, RATE, Limit, meta

#: --algo when none is given
DEFAULT_ALGORITHM = "protonet"
ENGINES = ("auto", "loop", "batched")
SAMPLERS = ("auto", "l2l", "tensor")
SPLITS = ("train", "val", "test")

#: the model settings a backbone may take besides `hidden` (`BackboneSpec.options`)
MODEL_OPTIONS = ("mlp_hidden",)

#: settings of the batched engine only (the loop engine ignores them)
BATCHED_ONLY = ("chunk_size", "max_memory", "compile", "cuda_graph")

#: the on/off flags of the boolean settings of the shared groups (an algorithm's own booleans
#: declare theirs with `setting(flags=...)`)
_SHARED_BOOL_FLAGS: Dict[str, Tuple[str, str]] = {
    "skip_bad_images": ("--skip-bad-images", "--no-skip-bad-images"),
    "normalize": ("--normalize", "--no-normalize"),
    "compile": ("--compile", "--no-compile"),
    "cuda_graph": ("--cuda-graph", "--no-cuda-graph"),
    "tf32": ("--tf32", "--no-tf32"),
    "cudnn_benchmark": ("--cudnn-benchmark", "--no-cudnn-benchmark"),
    "skip_nonfinite": ("--skip-nonfinite", "--stop-nonfinite"),
    "tensorboard": ("--tensorboard", "--no-tensorboard"),
}


MAX_SEED = 2**63 - 1
#: step counters and intervals: a signed 32-bit int; 2**31 steps would take decades at 30 steps/s
MAX_STEPS = 2**31 - 1
# Seeds: torch.manual_seed and Generator.manual_seed take 0..2**64-1 and the trainer derives
# seed + 1 for a second sampler; a signed 64-bit range leaves that room (NumPy gets seed % 2**32).
_SEED = Limit(0, MAX_SEED, why="2**63-1: torch takes 64-bit seeds and the trainer also uses seed + 1")
# Episode shapes: the largest few-shot datasets have ~6,500 classes (Omniglot with rotations)
# and 600 images per class (mini-ImageNet); the data checks then name the exact limit of the split.
_CLASSES = Limit(2, 100_000, why="more classes than any few-shot dataset has")
_IMAGES = Limit(1, 100_000, why="more images per class than any few-shot dataset has")
# Inner loops: each step is a forward and backward pass per task and second-order MAML keeps all
# of them for the meta-gradient; the papers use 1 to 50.
# Rates and norms multiply float32 weights and gradients: above float32's largest value they are
# inf.  Huge finite rates stay allowed: they diverge, which the NaN guard reports (exit 1).
_MINUTES = Limit(0.0, 525_600.0, integer=False, why="a year")

LIMITS: Dict[str, Limit] = {
    "seed": _SEED,
    "eval_seed": _SEED,
    "ways": _CLASSES,
    "train_ways": _CLASSES,
    "shots": _IMAGES,
    "queries": _IMAGES,
    "train_shots": _IMAGES,
    "train_queries": _IMAGES,
    # 1024 filters per layer is ~28M weights, 250x the papers' 64; the batched engine copies them per task
    "hidden": Limit(1, 1024, why="the papers use 32 or 64 filters; 1024 already means ~28M weights"),
    # tasks per step: the batched engine holds every task's activations at once
    "meta_batch": Limit(1, 100_000, why="the papers use 1 to 32 tasks; each costs its own inner loop"),
    "chunk_size": Limit(1, 100_000, why="a chunk never holds more than --meta-batch tasks"),
    "iterations": Limit(1, MAX_STEPS, why="a signed 32-bit step counter"),
    "lr_decay_every": Limit(1, MAX_STEPS, why="a signed 32-bit step counter"),
    "val_every": Limit(1, MAX_STEPS, why="a signed 32-bit step counter"),
    "checkpoint_every": Limit(1, MAX_STEPS, why="a signed 32-bit step counter"),
    "log_every": Limit(1, MAX_STEPS, why="a signed 32-bit step counter"),
    # the 95% CI over 10^6 episodes is below 0.1 points: more episodes only cost time
    "val_episodes": Limit(1, 1_000_000, why="the 95% CI is already below 0.1 points"),
    "episodes": Limit(1, 1_000_000, why="the 95% CI is already below 0.1 points"),
    "meta_lr": RATE,
    "grad_clip": Limit(0.0, FLOAT32_MAX, integer=False, open_low=True, why="the largest float32"),
    "lr_decay": Limit(0.0, 1.0, integer=False, open_low=True, why="a factor above 1 would grow the rate"),
    "max_memory": Limit(0.0, 2.0**20, integer=False, open_low=True, why="1 PiB, more than any device has"),
    "checkpoint_minutes": _MINUTES,
    # 0 would end a run at its first step: refused (leave the option out for no budget)
    "time_budget": Limit(0.0, 525_600.0, integer=False, open_low=True, why="a year"),
    # images are decoded to image_size x image_size; Conv4 needs at least 16 (four halvings)
    "image_size": Limit(1, 1024, why="a 1024x1024 image is 4x what few-shot backbones see"),
    "channels": Limit(1, 3, why="1 (grey) or 3 (RGB)"),
    "split_seed": _SEED,
}


@dataclass(frozen=True)
class DataConfig:
    """The dataset and how it is read.  The options after skip_bad_images apply only to the
    datasets that list them (`Dataset.options`); None takes the dataset's own value, which
    `resolve` records."""
    dataset: str = "omniglot"
    data_root: Optional[str] = None
    sampler: str = "auto"
    skip_bad_images: bool = False
    image_size: Optional[int] = None
    channels: Optional[int] = None
    resize: Optional[str] = None
    normalize: Optional[bool] = None
    split_file: Optional[str] = None
    split_seed: Optional[int] = None
    split_ratios: Optional[str] = None
    label_column: Optional[str] = None


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
    """The backbone; `mlp_hidden` and any other option apply only to the backbones that list it
    (`BackboneSpec.options`; None: the backbone's default, which `resolve` records)."""
    backbone: str = "conv4"
    hidden: int = 64
    mlp_hidden: Optional[str] = None


@dataclass(frozen=True)
class OptimConfig:
    meta_lr: float = 1e-3
    meta_batch: int = 1
    iterations: int = 1000
    grad_clip: Optional[float] = None
    lr_decay_every: Optional[int] = None
    lr_decay: Optional[float] = 0.5


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    device: str = "auto"
    engine: str = "auto"
    chunk_size: Optional[int] = None
    max_memory: Optional[float] = None
    #: torch.compile the batched meta-loss; None: as `experiment.resolve_tuning` decides (on only where
    #: --engine auto trains on a GPU and the algorithm's measured fastest step compiles)
    compile: Optional[bool] = None
    #: capture each batched training step (or its meta-gradient) as one CUDA graph (engine.graphs);
    #: None: on a GPU with the batched engine
    cuda_graph: Optional[bool] = None
    tf32: bool = False
    #: let cuDNN time its algorithms for each convolution shape and keep the fastest (GPU); None: like compile
    cudnn_benchmark: Optional[bool] = None
    #: how convolutions compute: native (cuDNN), channels-last (NHWC) or unfold (im2col + one matrix
    #: product); `backbones.conv`; None: like compile (native unless the measured fastest step differs)
    conv_impl: Optional[str] = None
    val_every: int = 100
    val_episodes: int = 200
    checkpoint_every: int = 100
    checkpoint_minutes: Optional[float] = None
    time_budget: Optional[float] = None
    skip_nonfinite: bool = False
    #: when output is not a terminal, print a plain progress line every N steps
    log_every: int = 100
    #: also write the metrics as TensorBoard scalars in RUN_DIR/tensorboard (optional package)
    tensorboard: bool = False


@dataclass(frozen=True)
class EvalConfig:
    episodes: int = 1000
    split: str = "test"
    eval_seed: int = 1234


def _default_settings() -> AlgorithmSettings:
    return ALGORITHMS[DEFAULT_ALGORITHM].settings()


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    #: the chosen algorithm's own settings (its registered `AlgorithmSettings` subclass)
    algorithm: AlgorithmSettings = field(default_factory=_default_settings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    recipe: Optional[str] = None

    # ---- derived settings -------------------------------------------------
    @property
    def algo(self) -> str:
        """The registered name of the algorithm whose settings `algorithm` holds."""
        return algorithm_of(self.algorithm).name

    @property
    def spec(self) -> AlgorithmSpec:
        return algorithm_of(self.algorithm)

    @property
    def algo_label(self) -> str:
        """The algorithm's name, or the alias its settings amount to ('fomaml' for maml --first-order)."""
        return next((alias for alias, a in self.spec.aliases.items()
                     if all(getattr(self.algorithm, k) == v for k, v in a.implies.items())), self.algo)

    @property
    def train_ways(self) -> int:
        return self.task.train_ways or self.task.ways

    @property
    def train_shots(self) -> int:
        return self.task.train_shots or self.task.shots

    @property
    def train_queries(self) -> int:
        return self.task.train_queries or self.task.queries

    def to_dict(self) -> Dict[str, Any]:
        """Nested by component (config.json); the algorithm's group holds `algo` and its own fields."""
        out: Dict[str, Any] = {}
        for group in GROUPS:
            out[group] = ({"algo": self.algo, **dataclasses.asdict(self.algorithm)} if group == "algorithm"
                          else dataclasses.asdict(getattr(self, group)))
        out["recipe"] = self.recipe
        return out

    def flat(self) -> Dict[str, Any]:
        """{flat_name: value} over every group (the names flags and recipes use)."""
        out: Dict[str, Any] = {}
        for values in self.to_dict().values():
            if isinstance(values, dict):
                out.update(values)
        return out


def algorithm_of(settings: AlgorithmSettings) -> AlgorithmSpec:
    """The registered algorithm whose settings class `settings` is an instance of (exactly)."""
    for _, spec in ALGORITHMS.items():
        if type(settings) is spec.settings:
            return spec
    raise ConfigError(f"{type(settings).__name__} is not the settings class of a registered algorithm "
                      f"({', '.join(ALGORITHMS.names())})")


_SHARED_GROUPS = {"data": DataConfig, "task": TaskConfig, "model": ModelConfig, "optim": OptimConfig,
                  "run": RunConfig, "eval": EvalConfig}
GROUPS = ("data", "task", "model", "algorithm", "optim", "run", "eval")
#: flat name -> its group; every algorithm's fields are in "algorithm"
FIELD_GROUP: Dict[str, str] = {"algo": "algorithm"}
#: flat name -> its value type (bool, int, float or str; Optional unwrapped)
FIELD_TYPES: Dict[str, type] = {"algo": str}
#: algorithm setting -> the algorithms that use it; optimiser settings -> the algorithms whose
#: meta-optimiser reads them; every other setting applies to all
APPLIES_TO: Dict[str, Tuple[str, ...]] = {}


def _value_type(hint: Any) -> type:
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))


for _group, _cls in _SHARED_GROUPS.items():
    for _name, _hint in typing.get_type_hints(_cls).items():
        assert _name not in FIELD_GROUP, f"duplicate config name {_name}"
        FIELD_GROUP[_name], FIELD_TYPES[_name] = _group, _value_type(_hint)
for _algo, _spec in ALGORITHMS.items():
    for _name, _hint in typing.get_type_hints(_spec.settings).items():
        assert FIELD_GROUP.get(_name, "algorithm") == "algorithm", f"{_algo}: {_name} is a shared setting"
        assert FIELD_TYPES.get(_name, _value_type(_hint)) is _value_type(_hint), \
            f"{_algo}: {_name} has another type in another algorithm"
        FIELD_GROUP[_name], FIELD_TYPES[_name] = "algorithm", _value_type(_hint)
        APPLIES_TO[_name] = tuple(sorted(APPLIES_TO.get(_name, ()) + (_algo,)))
    for _name in _spec.optimizer.uses:
        APPLIES_TO[_name] = tuple(sorted(APPLIES_TO.get(_name, ()) + (_algo,)))
#: the defaults of the shared settings (an algorithm's own defaults: `algorithm_defaults`)
DEFAULTS: Dict[str, Any] = {name: value for name, value in ExperimentConfig().flat().items()
                            if FIELD_GROUP[name] != "algorithm" or name == "algo"}
#: the on/off flags of every boolean setting
BOOL_FLAGS: Dict[str, Tuple[str, str]] = dict(_SHARED_BOOL_FLAGS)
for _algo, _spec in ALGORITHMS.items():
    for _f in dataclasses.fields(_spec.settings):
        if _f.metadata.get("flags"):
            BOOL_FLAGS[_f.name] = _f.metadata["flags"]
#: other names --algo accepts: alias -> (algorithm, the settings it implies, what it is)
ALGO_ALIASES: Dict[str, Tuple[str, Mapping[str, Any], str]] = {
    alias: (name, a.implies, a.meaning) for name, spec in ALGORITHMS.items() for alias, a in spec.aliases.items()}
assert set(LIMITS) <= set(FIELD_GROUP)


def algorithm_defaults(algo: str) -> Dict[str, Any]:
    """The default of every setting of algorithm `algo`, by flat name."""
    return dataclasses.asdict(ALGORITHMS[algo].settings())


def algorithm_setting(name: str) -> Dict[str, Any]:
    """What the algorithms that use setting `name` declare for it: help, flags, and per algorithm
    its default, range and choices ({'help', 'flags', 'defaults': {algo: ...}, 'meta': {algo: ...}})."""
    users = APPLIES_TO[name]
    metas = {algo: meta(ALGORITHMS[algo].settings, name) for algo in users}
    first = metas[users[0]]
    return {"help": first["help"], "flags": first["flags"], "meta": metas,
            "defaults": {algo: algorithm_defaults(algo)[name] for algo in users}}


def is_algorithm_setting(name: str) -> bool:
    return FIELD_GROUP.get(name) == "algorithm" and name != "algo"


def flag(name: str, value: Any = None) -> str:
    """The CLI flag for a flat config name: inner_lr -> --inner-lr; (first_order, False) -> --second-order."""
    if name in BOOL_FLAGS and isinstance(value, bool):
        return BOOL_FLAGS[name][0 if value else 1]
    return "--" + name.replace("_", "-")


def applies(name: str, algo: str) -> bool:
    """Whether setting `name` is used by algorithm `algo` (APPLIES_TO; other settings apply to all)."""
    return algo in APPLIES_TO.get(name, (algo,))


def _closest(name: str, valid: Iterable[str]) -> Optional[str]:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return close[0] if close else None


def not_one_of(option: str, value: Any, allowed: Iterable[str]) -> str:
    """The message for a value outside a fixed set, with the closest choice when there is one."""
    allowed = tuple(allowed)
    close = _closest(str(value), allowed)
    hint = f"; did you mean {close!r}?" if close else ""
    return f"{option} {value!r} is not one of {', '.join(allowed)}{hint}"


def check_names(values: Mapping[str, Any]) -> None:
    """ConfigError naming the first unknown setting name (with the closest known one)."""
    for name in values:
        if name != "recipe" and name not in FIELD_GROUP:
            close = _closest(name, FIELD_GROUP)
            hint = f" (did you mean {flag(close)}?)" if close else ""
            raise ConfigError(f"unknown setting {name!r}{hint}")


def from_flat(values: Mapping[str, Any], lenient: bool = False) -> ExperimentConfig:
    """A config from flat-named values (missing ones: defaults; the algorithm's from its own class).

    A value for a setting the algorithm does not use raises a ConfigError, or is dropped when
    `lenient` (reading a saved config, where such values are null or stale).
    """
    check_names(values)
    algo = values.get("algo") or DEFAULT_ALGORITHM
    if algo not in ALGORITHMS:
        raise ALGORITHMS.unknown(algo)
    spec = ALGORITHMS[algo]
    own = set(spec.setting_names())
    foreign = [n for n, v in values.items() if is_algorithm_setting(n) and n not in own and v is not None]
    if foreign and not lenient:
        raise ConfigError(f"{', '.join(flag(n) for n in foreign)} not used by --algo {algo}; drop "
                          f"{'it' if len(foreign) == 1 else 'them'}")
    groups: Dict[str, Any] = {}
    for group, cls in _SHARED_GROUPS.items():
        groups[group] = cls(**{n: values[n] for n in values if FIELD_GROUP.get(n) == group})
    settings = spec.settings(**{n: v for n, v in values.items() if n in own})
    return ExperimentConfig(algorithm=settings, recipe=values.get("recipe"), **groups)


def _replace(config: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """A copy with flat-named `values` set as given (None included).

    Choosing another algorithm starts its settings from that algorithm's defaults.
    """
    check_names(values)
    current = config.flat()
    if "algo" in values and values["algo"] != config.algo:
        current = {n: v for n, v in current.items() if not is_algorithm_setting(n)}
    current["recipe"] = config.recipe
    current.update(values)
    return from_flat(current)


def with_overrides(config: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """Return a copy with flat-named overrides applied (None values are ignored)."""
    return _replace(config, {k: v for k, v in overrides.items() if v is not None})


def resolve(config: ExperimentConfig) -> ExperimentConfig:
    """Every derived None replaced by its value, every optimiser setting the algorithm's
    meta-optimiser does not read set to None.

    train_ways/shots/queries from ways/shots/queries; the algorithm's own (`resolved()`: e.g.
    test_inner_steps from inner_steps).  So config.json shows null only for "not applicable".
    Idempotent.
    """
    task = dataclasses.replace(config.task, train_ways=config.train_ways, train_shots=config.train_shots,
                               train_queries=config.train_queries)
    unused = {name: None for name in APPLIES_TO if FIELD_GROUP[name] == "optim" and not applies(name, config.algo)}
    optim = dataclasses.replace(config.optim, **unused)
    return dataclasses.replace(config, task=task, optim=optim, algorithm=config.algorithm.resolved(),
                               data=_resolved_data(config.data), model=_resolved_model(config.model))


def absolute_root(data_root: Optional[str]) -> Optional[str]:
    """A data root as a run stores it: absolute, `~` expanded, links kept (None: the bundled copy),
    so that eval, predict and resume read the same folder from any working directory."""
    return None if data_root is None else os.path.abspath(os.path.expanduser(str(data_root)))


def data_moved(config: "ExperimentConfig") -> bool:
    """Whether a run's data root is gone from where the run read it (moved, or a relative path of
    an older run read from another directory): a `--data-root` given then relocates it."""
    root = config.data.data_root
    return root is not None and not Path(root).exists()


def _resolved_data(data: DataConfig) -> DataConfig:
    """The dataset's own value for each of its options left None (other datasets' options: None);
    the data root absolute (`absolute_root`)."""
    data = dataclasses.replace(data, data_root=absolute_root(data.data_root))
    dataset = DATASETS.get(data.dataset)
    if dataset is None:
        return data
    values = {}
    for name in DATA_OPTIONS:
        if name not in dataset.options:
            values[name] = None
        elif getattr(data, name) is None:
            values[name] = getattr(dataset, "in_channels" if name == "channels" else name, None)
    if dataset.kind == VECTORS:
        values["channels"] = None  # the vectors' length is read from the data
        values["image_size"] = None
    return dataclasses.replace(data, **values)


def _resolved_model(model: ModelConfig) -> ModelConfig:
    """The backbone's default for each of its options left None (other backbones' options: None)."""
    backbone = BACKBONES.get(model.backbone)
    if backbone is None:
        return model
    values = {name: (backbone.defaults.get(name) if getattr(model, name) is None else getattr(model, name))
              if name in backbone.options else None for name in MODEL_OPTIONS}
    return dataclasses.replace(model, **values)


# ------------------------------------------------------------------------------ validation
#: how messages name the value types of FIELD_TYPES
_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def limit_error(name: str, value: Any, option: Optional[str] = None) -> Optional[str]:
    """Why `value` is outside LIMITS[name] (None when it is None or inside), naming `option` (default: its flag)."""
    return LIMITS[name].error(value, option or flag(name))


def _shared_choices() -> Dict[str, Tuple[str, ...]]:
    return {"dataset": tuple(DATASETS.names()), "sampler": SAMPLERS, "algo": tuple(ALGORITHMS.names()),
            "engine": ENGINES, "backbone": tuple(BACKBONES.names()), "split": SPLITS, "resize": RESIZE_POLICIES,
            "conv_impl": CONV_IMPLS}


def _value_error(name: str, value: Any, limit: Optional[Limit], choices: Optional[Tuple[str, ...]]) -> Optional[str]:
    """Why `value` is not a valid value of setting `name` (None: it is)."""
    if choices is not None:
        return None if value in choices else not_one_of(flag(name), value, choices)
    if limit is not None:
        return limit.error(value, flag(name))
    if not isinstance(value, FIELD_TYPES[name]):
        return f"{flag(name)} must be {_KINDS[FIELD_TYPES[name]]}, got {value!r}"
    return None


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Check every setting; raise one ConfigError listing all problems, each naming its flag.

    Accepts resolved configs: an optimiser setting the algorithm does not use may be None.
    """
    errors: List[str] = []
    algo, spec = config.algo, config.spec
    choices = _shared_choices()
    for name, value in config.flat().items():
        if name == "algo" or is_algorithm_setting(name):
            continue
        if value is None:
            if DEFAULTS[name] is not None and applies(name, algo):
                errors.append(f"{flag(name)} must be set" + (f" for {algo}" if name in APPLIES_TO else ""))
            continue
        problem = _value_error(name, value, LIMITS.get(name), choices.get(name))
        if problem:
            errors.append(problem)
    defaults = algorithm_defaults(algo)
    for f in dataclasses.fields(config.algorithm):
        value = getattr(config.algorithm, f.name)
        if value is None:
            if defaults[f.name] is not None:
                errors.append(f"{flag(f.name)} must be set for {algo}")
            continue
        problem = _value_error(f.name, value, f.metadata.get("limit"), f.metadata.get("choices"))
        if problem:
            errors.append(problem)
    if not errors:
        errors.extend(config.algorithm.problems())
    errors.extend(component_option_problems(config, {}))
    backbone = BACKBONES.get(config.model.backbone)
    if backbone is not None and backbone.problems is not None:
        model = _resolved_model(config.model)
        errors.extend(backbone.problems({n: getattr(model, n) for n in backbone.options}))
    if config.data.channels is not None and config.data.channels not in (1, 3):
        errors.append(f"--channels {config.data.channels} must be 1 (grey) or 3 (RGB)")
    if config.data.split_ratios is not None:
        try:
            split_ratios(config.data.split_ratios)
        except DataError as exc:
            errors.append(str(exc))
    if spec.head and config.train_ways != config.task.ways:
        headless = [name for name, s in ALGORITHMS.items() if not s.head]
        fix = f" or use --algo {' or '.join(headless)}" if headless else ""
        errors.append(f"{algo} has a {config.train_ways}-way output layer: --train-ways must equal --ways "
                      f"({config.task.ways}); drop --train-ways{fix}")
    if config.run.engine in ENGINES:
        errors.extend(filter(None, [missing_engine(config, config.run.engine)]))
    if errors:
        raise ConfigError("; ".join(errors))
    return config


def train_shape_flags(config: ExperimentConfig) -> Tuple[str, str, str]:
    """The flags that set the training episode shape, for messages: --train-X where it was given
    and differs from --X, else --X."""
    t = config.task
    return tuple(f"--train-{n}" if getattr(t, f"train_{n}") not in (None, getattr(t, n)) else f"--{n}"
                 for n in ("ways", "shots", "queries"))  # type: ignore[return-value]


def component_option_problems(config: ExperimentConfig, given: Mapping[str, str]) -> List[str]:
    """Data settings the chosen dataset does not take, and model settings the chosen backbone does
    not take, that are set (in `given`, or with a non-None value in `config`).  One message per component."""
    problems = []
    dataset, backbone = DATASETS.get(config.data.dataset), BACKBONES.get(config.model.backbone)
    for component, chosen, options, names in (
            (dataset, f"--dataset {config.data.dataset}", DATA_OPTIONS, "dataset"),
            (backbone, f"--backbone {config.model.backbone}", MODEL_OPTIONS, "backbone")):
        if component is None:
            continue
        group = config.data if names == "dataset" else config.model
        foreign = [n for n in options if n not in component.options and (n in given or getattr(group, n) is not None)]
        if foreign:
            registry = DATASETS if names == "dataset" else BACKBONES
            takers = sorted({t for n in foreign for t, c in registry.items() if n in c.options})
            labels = [given.get(n, flag(n)) for n in foreign]
            one = len(labels) == 1
            problems.append(f"{listing(labels, 'and')} appl{'ies' if one else 'y'} only to "
                            f"{names} {listing(takers, 'and') if takers else 'none'}, not to {chosen}; "
                            f"drop {'it' if one else 'them'}")
    return problems


def missing_engine(config: ExperimentConfig, engine: str) -> Optional[str]:
    """Why the config's algorithm cannot run on `engine` (None: it can, or engine is auto)."""
    spec = config.spec
    if engine == "auto" or engine in spec.engines:
        return None
    return (f"--engine {engine}: {config.algo} has only the {' and '.join(spec.engines)} engine; "
            f"use --engine {spec.engines[0]} or auto")


def check_applicable(config: ExperimentConfig, given: Mapping[str, str]) -> None:
    """Refuse settings the user gave that `config` would ignore, in one ConfigError.

    `given` maps each flat name the user set to how to name it in the message (a flag, or a key
    of a config file); values that came from the defaults or a recipe are not in it.  Refused:
    a setting of another algorithm (APPLIES_TO), --lr-decay without --lr-decay-every, the
    batched engine's settings with --engine loop, and --max-memory with --chunk-size.
    """
    algo, engine = config.algo, config.run.engine
    if "algo" in given:
        chosen = f"--algo {algo}" if given["algo"].startswith("--") else f"{algo} ({given['algo']})"
    else:
        chosen = f"--algo {algo}" + (f" (of --recipe {config.recipe})" if config.recipe else " (the default)")
    by_algos: Dict[Tuple[str, ...], List[str]] = {}
    for name, label in given.items():
        if not applies(name, algo):
            by_algos.setdefault(APPLIES_TO[name], []).append(label)
    problems = [_only(labels, listing(algos, "and"), chosen, f"--algo {listing(algos, 'or')}")
                for algos, labels in by_algos.items()]
    if "lr_decay" in given and applies("lr_decay", algo) and config.optim.lr_decay_every is None:
        problems.append(f"{given['lr_decay']} has no effect without --lr-decay-every N; add it or drop "
                        f"{given['lr_decay']}")
    batched = [given[name] for name in BATCHED_ONLY if name in given]
    if engine == "loop" and batched:
        problems.append(_only(batched, "the batched engine", "--engine loop", "--engine batched"))
    elif "max_memory" in given and "chunk_size" in given:
        problems.append(f"{given['max_memory']} only picks the chunk size, which {given['chunk_size']} fixes; "
                        f"drop one of them")
    problems.extend(component_option_problems(config, given))
    backbone = BACKBONES.get(config.model.backbone)
    if "hidden" in given and backbone is not None and not backbone.uses_hidden:
        problems.append(f"{given['hidden']} does not apply to --backbone {config.model.backbone} (its layer sizes "
                        f"come from {listing([flag(n) for n in backbone.options], 'and')}); drop it")
    if problems:
        raise ConfigError("; ".join(problems))


def listing(names: Iterable[str], word: str) -> str:
    """('a', 'b', 'c'), 'and' -> 'a, b and c'."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"


def _only(labels: List[str], users: str, chosen: str, other: str) -> str:
    """'--a and --b apply only to USERS, not to CHOSEN; drop them or choose OTHER'."""
    one = len(labels) == 1
    return (f"{listing(labels, 'and')} appl{'ies' if one else 'y'} only to {users}, not to {chosen}; "
            f"drop {'it' if one else 'them'} or choose {other}")


# ------------------------------------------------------------------------------ config files
def from_dict(data: Dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config from `to_dict()` output (config.json), including those of older versions:
    nulls (not applicable) and settings the algorithm does not use are dropped, and a setting is
    taken from whichever group it was written in (meta_lr_final used to be an optimiser setting).
    A run's config.json is checked first by `check_run_config` (`load_json`)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected the settings as a JSON object of groups ({', '.join(GROUPS)}), "
                          f"got {_json_kind(data)}")
    values: Dict[str, Any] = {}
    for group, entries in data.items():
        if group in GROUPS and isinstance(entries, dict):
            values.update({k: v for k, v in entries.items() if k in FIELD_GROUP and v is not None})
    values["recipe"] = data.get("recipe")
    return from_flat(values, lenient=True)


#: the top-level keys of a run's config.json besides GROUPS
RUN_CONFIG_EXTRA_KEYS = ("recipe",)


def _json_kind(value: Any) -> str:
    """How a parsed JSON value is named in messages: 'a list', 'a number', 'null'."""
    if value is None:
        return "null"
    kinds = {bool: "true/false", dict: "an object", list: "a list", str: "text", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def run_config_problem(data: Any) -> Optional[str]:
    """What is wrong with the parsed config.json of a run (None: nothing `from_dict` cannot read).

    Every group of GROUPS must be there as an object, and nothing but GROUPS and `recipe` at the top
    level (a run writes all of them; a missing group would silently take the defaults).  The
    algorithm group must name its `algo`.  Keys missing inside a group are allowed: settings added
    after the run was written take their defaults.
    """
    if not isinstance(data, dict):
        return f"expected a JSON object of setting groups, got {_json_kind(data)}"
    missing = [g for g in GROUPS if g not in data]
    if missing:
        return f"missing the {listing([repr(g) for g in missing], 'and')} group{'s' * (len(missing) > 1)}"
    unknown = [k for k in data if k not in GROUPS and k not in RUN_CONFIG_EXTRA_KEYS]
    if unknown:
        return (f"unknown group{'s' * (len(unknown) > 1)} {listing([repr(k) for k in unknown], 'and')} "
                f"(a run's config.json holds {', '.join(GROUPS)} and recipe)")
    bad = [g for g in GROUPS if not isinstance(data[g], dict)]
    if bad:
        return f"the {bad[0]!r} group is {_json_kind(data[bad[0]])}, not an object of settings"
    if not isinstance(data["algorithm"].get("algo"), str):
        return "the 'algorithm' group names no algorithm ('algo')"
    if data.get("recipe") is not None and not isinstance(data["recipe"], str):
        return f"'recipe' is {_json_kind(data['recipe'])}, not a recipe name or null"
    return None


def load_json(path: Path) -> ExperimentConfig:
    """The config of a run from its config.json (`path`), checked by `run_config_problem`.

    A missing, unreadable, truncated or damaged file is a one-line ConfigError naming it and the fix.
    """
    path = Path(path)
    fix = "restore it from a copy of the run"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}; check that it exists and that "
                          f"you may read it") from None
    except UnicodeDecodeError:
        raise ConfigError(f"run config {path} is damaged: it is not UTF-8 text; {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run config {path} is damaged: it is not valid JSON ({exc}); {fix}") from None
    problem = run_config_problem(data)
    if problem is not None:
        raise ConfigError(f"run config {path} is damaged: {problem}; {fix}")
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"run config {path} holds settings this l2l-app cannot use: {exc}; {fix}, or use "
                          f"the l2l-app version that wrote it") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"run config {path} is damaged: {' '.join(str(exc).split())}; {fix}") from None


def _parse_settings(path: Path) -> Any:
    """The parsed content of a .toml or .json file, or a one-line ConfigError."""
    kind = path.suffix.lower()
    if kind not in (".toml", ".json"):
        raise ConfigError(f"--config {path}: expected a .toml or .json file of settings, got "
                          f"{kind or 'no suffix'!s}; rename it or write it in one of those formats")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"cannot read --config {path}: {reason}; pass a readable TOML or JSON file") from None
    try:
        if kind == ".json":
            return json.loads(text)
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise ConfigError(f"--config {path}: reading TOML needs Python 3.11+ or the tomli package; "
                                  f"write the settings as JSON instead") from None
        return tomllib.loads(text)
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        raise ConfigError(f"--config {path} is not valid {kind[1:].upper()}: "
                          f"{' '.join(str(exc).split())}") from None


def _typed(path: Path, name: str, value: Any) -> Any:
    """`value` of setting `name` from a config file, checked against its type (ints become floats where due)."""
    kind = str if name == "recipe" else FIELD_TYPES[name]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"--config {path}: {name} must be {_KINDS[kind]}, got {value!r}")
    return value


def _unknown_key(path: Path, key: str, valid: Iterable[str]) -> ConfigError:
    close = _closest(key, valid)
    hint = f"; did you mean {close!r}?" if close else "; `l2l-app train --help` lists the settings"
    return ConfigError(f"--config {path}: unknown setting {key!r}{hint}")


#: settings that older config.json files hold in another group (still read from there)
LEGACY_GROUPS = {"meta_lr_final": "optim"}


def read_settings_file(path: Union[str, Path]) -> Dict[str, Any]:
    """{flat name: value} from a TOML or JSON file; `recipe` is kept, nulls (not applicable) left out.

    Keys are flat names as the flags use (``inner_lr = 0.4``) and/or the groups of a run's
    config.json (``{"algorithm": {"inner_lr": 0.4}}`` or a TOML ``[algorithm]`` table), so a run's
    config.json works as is.  Unknown keys, a name under the wrong group, a name set twice or a
    value of the wrong type are one-line ConfigErrors naming the key.
    """
    path = Path(path)
    data = _parse_settings(path)
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table of settings (name = value), "
                          f"got a {type(data).__name__}")
    flat: Dict[str, Any] = {}
    where: Dict[str, str] = {}

    def put(name: str, value: Any, place: str) -> None:
        if name in flat:
            raise ConfigError(f"--config {path}: {name} is set twice ({where[name]} and {place}); keep one")
        flat[name], where[name] = value, place

    for key, value in data.items():
        if key in GROUPS and isinstance(value, dict):
            for name, inner in value.items():
                if name not in FIELD_GROUP:
                    raise _unknown_key(path, f"{key}.{name}", [f"{g}.{n}" for n, g in FIELD_GROUP.items()])
                if FIELD_GROUP[name] != key and LEGACY_GROUPS.get(name) != key:
                    raise ConfigError(f"--config {path}: {name} belongs in [{FIELD_GROUP[name]}], not [{key}]; "
                                      f"move it there or write it at the top level")
                put(name, inner, f"in [{key}]")
        elif key in GROUPS:
            raise ConfigError(f"--config {path}: {key} must be a table of settings, got {value!r}")
        elif key in FIELD_GROUP or key == "recipe":
            put(key, value, "at the top level")
        else:
            raise _unknown_key(path, key, [*FIELD_GROUP, *GROUPS, "recipe"])
    return {name: _typed(path, name, value) for name, value in flat.items() if value is not None}


# ------------------------------------------------------------------------------ a new run's config
def _describe(name: str, value: Any, source: Optional[Path]) -> str:
    """How the user wrote a setting: `--algo fomaml` / `--second-order` on the command line,
    `algo = "fomaml" in FILE` in a config file."""
    if source is not None:
        return f"{name} = {json.dumps(value)} in {source}"
    return flag(name, value) if isinstance(value, bool) else f"{flag(name)} {value}"


def expand_algo_alias(settings: Mapping[str, Any], source: Optional[Path] = None) -> Dict[str, Any]:
    """{'algo': 'fomaml'} -> {'algo': 'maml', 'first_order': True}; refuses a contradicting setting.

    `source`: the config file the settings come from (None: the command line), for the message.
    """
    out = dict(settings)
    alias = out.get("algo")
    if alias not in ALGO_ALIASES:
        return out
    algo, implied, meaning = ALGO_ALIASES[alias]
    out["algo"] = algo
    for name, value in implied.items():
        if out.get(name) is not None and out[name] != value:
            raise ConfigError(f"{_describe('algo', alias, source)} is {meaning}, which "
                              f"{_describe(name, out[name], source)} contradicts; drop one of them")
        out[name] = value
    return out


def _check_recipe_algo(recipe: str, settings: Mapping[str, Any], algo: Optional[str],
                       source: Optional[Path]) -> None:
    """Refuse an algorithm other than the recipe's (a recipe fixes its algorithm); aliases count."""
    if algo is None:
        return
    wanted = expand_algo_alias({"algo": algo})
    defaults = {**DEFAULTS, **algorithm_defaults(settings["algo"])}
    if any(settings.get(name, defaults.get(name)) != value for name, value in wanted.items()):
        own = next((alias for alias, (base, implied, _) in ALGO_ALIASES.items() if base == settings["algo"]
                    and all(settings.get(k) == v for k, v in implied.items())), settings["algo"])
        raise ConfigError(f"--recipe {recipe} fixes the algorithm ({own}), which "
                          f"{_describe('algo', algo, source)} contradicts; drop one of them")


def compose(flags: Mapping[str, Any], recipe: Optional[str] = None,
            config_file: Union[str, Path, None] = None) -> ExperimentConfig:
    """The validated config of a new run: defaults < recipe < config file < flags.

    `flags` maps flat names to the command-line values (None: not given).  A `recipe` key in the
    file works like --recipe (both given must name the same recipe).  Refused, before anything
    is built: unknown keys, an algorithm other than the recipe's, --algo fomaml with
    --second-order, and settings the chosen algorithm or engine would ignore -- counting only
    flags and file values that differ from the defaults (or the recipe), not defaults.
    """
    raw_flags = {k: v for k, v in flags.items() if v is not None}
    source = None if config_file is None else Path(config_file)
    raw_file = read_settings_file(source) if source is not None else {}
    file_recipe = raw_file.pop("recipe", None)
    if recipe and file_recipe and recipe != file_recipe:
        raise ConfigError(f"--recipe {recipe} conflicts with {_describe('recipe', file_recipe, source)}; "
                          f"drop one of them")
    recipe = recipe or file_recipe
    recipe_settings: Dict[str, Any] = {}
    if recipe:
        from .recipes import load_recipe
        recipe_settings = dict(load_recipe(recipe).settings)
        _check_recipe_algo(recipe, recipe_settings, raw_file.get("algo"), source)
        _check_recipe_algo(recipe, recipe_settings, raw_flags.get("algo"), None)
    file_settings = expand_algo_alias(raw_file, source)
    flag_settings = expand_algo_alias(raw_flags)
    merged = {**recipe_settings, **file_settings, **flag_settings}
    check_names(merged)
    algo = merged.get("algo") or DEFAULT_ALGORITHM
    if algo not in ALGORITHMS:
        raise ALGORITHMS.unknown(algo)
    optimizer_defaults = dict(ALGORITHMS[algo].optimizer.defaults)  # Reptile's epsilon
    merged = {**optimizer_defaults, **merged}
    before = {**DEFAULTS, **algorithm_defaults(algo), **optimizer_defaults, **recipe_settings}
    given = {name: f"{name} in {source}" for name, value in file_settings.items()
             if name not in before or value != before[name] or name == "algo"}  # algo: named as chosen
    given.update({name: flag(name, value) for name, value in flag_settings.items()})
    config = from_flat({**{n: v for n, v in merged.items() if applies(n, algo)}, "recipe": recipe})
    check_applicable(config, given)
    return validate(config)
