"""The one builder: model, learner, meta-optimiser and task sources from an experiment config.

Train, eval, bench and predict all build through here, so a registered algorithm or backbone
works everywhere at once.  Nothing here names an algorithm: what differs is read from its
`AlgorithmSpec` (`head`, `optimizer`, `auto_engine`, learner classes).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Dict, Optional, Tuple

import torch
from torch import nn

from . import runtime
from .backbones import Classifier, assert_no_aliased_submodules, build_backbone, conv_impl_mode, set_conv_impl
from .config import MODEL_OPTIONS, ExperimentConfig, flag, missing_engine, resolve, validate
from .data import Dataset, PathLike, Preprocessing, SplitData, TaskSource, build_task_source, load_split
from .data.types import IMAGES
from .engine import choose_chunk_size
from .errors import ConfigError
from .learner import MetaLearner, Optimizers
from .registry import DATASETS

#: --engine auto picks the loop below this many tasks per meta-step (one task: nothing to batch;
#: the crossover measured on an H200 lies between 1 and 4 tasks) -- unless the batched step is
#: captured as a CUDA graph, which beats the loop's op-by-op launches at any meta-batch
BATCHED_FROM_META_BATCH = 2


def resolve_engine(config: ExperimentConfig, device: torch.device, engine: Optional[str] = None,
                   meta_batch: Optional[int] = None) -> str:
    """--engine auto -> the engine measured faster for this algorithm, device, meta-batch and task
    size (`auto_engine`); another engine is checked against the algorithm's."""
    engine = engine or config.run.engine
    if engine == "auto":
        return auto_engine(config, device, meta_batch)[0]
    problem = missing_engine(config, engine)
    if problem:
        raise ConfigError(problem)
    return engine


def auto_engine(config: ExperimentConfig, device: torch.device, meta_batch: Optional[int] = None) -> Tuple[str, str]:
    """(engine, why) for --engine auto: what `l2l-app bench` measured faster (benchmarks/results/) for
    the algorithm on this device (`AlgorithmSpec.auto_engine`), at this meta-batch (None: not
    considered) and, on a CPU, for training tasks of this many images (`cpu_batched_up_to_images`)."""
    spec, algo = config.spec, config.algo
    if spec.batched is None:
        return "loop", f"{algo} has only the loop engine"
    captured = resolve_cuda_graph(config, device, "batched")
    if meta_batch is not None and meta_batch < BATCHED_FROM_META_BATCH and not captured:
        return "loop", f"measured faster for {algo} at a meta-batch of {meta_batch}: nothing to batch"
    if device.type == "cpu":
        images = config.train_ways * (config.train_shots + config.train_queries)
        up_to = spec.cpu_batched_up_to_images
        if images <= up_to:
            return "batched", (f"measured faster for {algo} on a CPU for tasks of up to {up_to} images; "
                               f"these have {images}")
        if up_to:
            return "loop", (f"measured faster for {algo} on a CPU for tasks of more than {up_to} images; "
                            f"these have {images}")
    engine = spec.auto_engine.get(device.type, "loop")
    return engine, f"measured faster for {algo} on {device.type}" + (" at this meta-batch" if meta_batch else "")


#: the values of the tuned run settings when no measurement tunes them
PLAIN_TUNING: Dict[str, Any] = {"compile": False, "cudnn_benchmark": False, "conv_impl": "native"}


def resolve_tuning(config: ExperimentConfig, device: torch.device, engine: str,
                   training: bool = True) -> Tuple[ExperimentConfig, Tuple[str, ...]]:
    """The settings PLAIN_TUNING names that the config leaves unset (None) filled in, and their names.

    A training run of `--engine auto` on a GPU with the batched engine gets the algorithm's
    measured fastest step (`AlgorithmSpec.gpu_tuning`, e.g. MAML: torch.compile and unfold
    convolutions), unless a setting the user gave contradicts it (unfold without compile is
    slower than native): then, like every other run (and evaluation, which the compiled
    training step does not serve), the plain values.  A setting the user gave is never changed.
    """
    run = config.run
    unset = [name for name in PLAIN_TUNING if getattr(run, name) is None]
    tuning = config.spec.gpu_tuning
    tuned = (tuning_applies(config, device, engine, training)
             and all(getattr(run, name) in (None, value) for name, value in tuning.items())
             and tuning_blocked(config) is None)
    values = {name: tuning[name] if tuned and name in tuning else PLAIN_TUNING[name] for name in unset}
    return dataclasses.replace(config, run=dataclasses.replace(run, **values)), tuple(unset)


def tuning_applies(config: ExperimentConfig, device: torch.device, engine: str, training: bool = True) -> bool:
    """Whether the algorithm's measured fastest GPU step is wanted: a training run of --engine auto
    with the batched engine on a GPU, for an algorithm that has one (`AlgorithmSpec.gpu_tuning`)."""
    return (training and config.run.engine == "auto" and device.type == "cuda" and engine == "batched"
            and bool(config.spec.gpu_tuning))


def tuning_blocked(config: ExperimentConfig) -> Optional[str]:
    """Why this machine cannot run the algorithm's measured fastest GPU step (None: it can): its
    torch.compile needs Triton and a C compiler.  Checked up front, so that a default run falls back
    to the plain step instead of failing at its first compilation."""
    if config.spec.gpu_tuning.get("compile"):
        return runtime.gpu_compile_problem()
    return None


def resolve_cuda_graph(config: ExperimentConfig, device: torch.device, engine: str) -> bool:
    """--cuda-graph: capture the batched meta-step as one CUDA graph (`engine.graphs`).  None (the
    default) -> on exactly when the batched engine runs on a GPU: the captured step computes what the
    eager one does, launched once instead of hundreds of times (benchmarks/results/gpu-*/)."""
    wanted = config.run.cuda_graph
    if wanted is None:
        return device.type == "cuda" and engine == "batched"
    if wanted and device.type != "cuda":
        raise ConfigError(f"--cuda-graph needs a GPU, but this run is on {device}; pass --device cuda or drop "
                          f"--cuda-graph")
    if wanted and engine != "batched":
        raise ConfigError(f"--cuda-graph captures the batched engine's meta-step, but {config.algo} runs on the "
                          f"{engine} engine here; pass --engine batched or drop --cuda-graph")
    return bool(wanted)


def resolve_sampler(sampler: str, engine: str) -> str:
    """'auto' -> the tensor sampler for the batched engine, learn2learn's TaskDataset for the loop."""
    if sampler != "auto":
        return sampler
    return "tensor" if engine == "batched" else "l2l"


def configured_dataset(config: ExperimentConfig) -> Dataset:
    """The config's dataset with the run's data settings applied (`Dataset.configured`)."""
    return DATASETS[config.data.dataset].configured(resolve(config).data)


def build_model(config: ExperimentConfig, input_shape: Optional[Tuple[int, ...]] = None) -> nn.Module:
    """The backbone for inputs of `input_shape` ((C, H, W) or (D,); None: the configured dataset's
    images), plus a linear layer over --ways classes when the algorithm has an output layer
    (`AlgorithmSpec.head`)."""
    if input_shape is None:
        input_shape = Preprocessing.unnormalised(configured_dataset(config)).input_shape
    m = config.model
    backbone = build_backbone(m.backbone, input_shape, m.hidden, **{n: getattr(m, n) for n in MODEL_OPTIONS})
    model = Classifier(backbone, config.task.ways) if config.spec.head else backbone
    assert_no_aliased_submodules(model)
    # conv_impl None: a config Experiment.build has not resolved (`resolve_tuning`)
    return set_conv_impl(model, config.run.conv_impl or PLAIN_TUNING["conv_impl"])


def build_learner(config: ExperimentConfig, model: nn.Module, engine: str, chunk_size: Optional[int] = None,
                  compile: Optional[bool | str] = None) -> MetaLearner:
    """The meta-learner of the config's algorithm on `engine` ('loop' or 'batched')."""
    spec = config.spec
    if engine == "loop":
        return spec.loop(model, config.algorithm, seed=config.run.seed)
    if engine == "batched" and spec.batched is not None:
        return spec.batched(model, config.algorithm, seed=config.run.seed, chunk_size=chunk_size,
                            compile=config.run.compile if compile is None else compile)
    raise ConfigError(missing_engine(config, engine) or f"--engine {engine!r} is not one of loop, batched")


def build_optimizer(config: ExperimentConfig, learner: MetaLearner, capturable: bool = False) -> Optimizers:
    """The algorithm's meta-optimiser over the learner's meta-parameters; `capturable`: built so a
    CUDA graph can hold its step (only for a `MetaOptimizer.capturable` optimiser)."""
    spec = config.spec.optimizer
    if capturable and not spec.capturable:
        raise ValueError(f"{config.algo}'s optimiser ({spec.description}) cannot be captured in a CUDA graph")
    extra = {"capturable": True} if capturable else {}
    return spec.build(learner.meta_parameters(), config.optim, config.algorithm, **extra)


def load_config_split(config: ExperimentConfig, split: str, progress: bool = True,
                      skip_bad_images: Optional[bool] = None) -> SplitData:
    """One split of the config's dataset, read with its data settings (decoded once, then cached)."""
    d = config.data
    skip = d.skip_bad_images if skip_bad_images is None else skip_bad_images
    return load_split(configured_dataset(config), split, d.data_root, progress=progress, skip_bad_images=skip)


def _step(state: Dict[str, Any], path: Path) -> int:
    """The training step a checkpoint records (a one-line CheckpointError when it is not a count)."""
    from .checkpoint import damaged_fix
    from .errors import CheckpointError

    step = state["step"]
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step) or step < 0:
        raise CheckpointError(f"{path} is damaged: its step is {step!r}, not a count of training steps; "
                              f"{damaged_fix(path)}")
    return int(step)


@dataclass
class Experiment:
    """A resolved config with the device, engine and sampler it runs on, its input preprocessing,
    and its model and learner."""

    config: ExperimentConfig
    device: torch.device
    engine: str
    sampler: str
    model: nn.Module
    learner: MetaLearner
    preprocessing: Preprocessing
    #: train through a CUDA graph (`resolve_cuda_graph`; `graph_extent` says what the graph holds)
    cuda_graph: bool = False
    #: the settings the config left unset and `resolve_tuning` filled in
    filled: Tuple[str, ...] = ()
    #: built for a training run (`resolve_tuning` tunes only those)
    training: bool = False

    @property
    def tuned(self) -> Tuple[str, ...]:
        """The filled settings that differ from PLAIN_TUNING: the algorithm's measured fastest GPU step."""
        return tuple(name for name in self.filled if getattr(self.config.run, name) != PLAIN_TUNING[name])

    @classmethod
    def build(cls, config: ExperimentConfig, device: Optional[str] = None, engine: Optional[str] = None,
              sampler: Optional[str] = None, meta_batch: Optional[int] = None,
              preprocessing: Optional[Preprocessing] = None, training: bool = False) -> "Experiment":
        """Validate and resolve `config`, pick the device (and its TF32 mode), engine, sampler and
        the tuned settings (`resolve_tuning`; `training`: for a training run), and build the model
        (from the global torch seed: seed first for reproducible weights).

        `preprocessing`: how inputs are prepared (a new run's `Preprocessing.for_run`, or the one
        saved in a run); None: the dataset's decoding, pixels / 255 (needs an image dataset).
        """
        config = resolve(validate(config))
        dataset = configured_dataset(config)
        if preprocessing is None:
            if dataset.kind != IMAGES:
                raise ConfigError(f"--dataset {dataset.name}: the input size is read from the data; build "
                                  f"with Preprocessing.for_run(dataset, train split)")
            preprocessing = Preprocessing.unnormalised(dataset)
        dev = runtime.resolve_device(device or config.run.device)
        chosen = resolve_engine(config, dev, engine, meta_batch)
        config, filled = resolve_tuning(config, dev, chosen, training)
        runtime.set_tf32(config.run.tf32)
        runtime.set_cudnn_benchmark(config.run.cudnn_benchmark)
        model = build_model(config, preprocessing.input_shape).to(dev)
        learner = build_learner(config, model, chosen, config.run.chunk_size)
        return cls(config, dev, chosen, resolve_sampler(sampler or config.data.sampler, chosen), model, learner,
                   preprocessing, resolve_cuda_graph(config, dev, chosen), filled, training)

    @classmethod
    def from_run(cls, run_dir: PathLike, checkpoint: str = "best", device: Optional[str] = None,
                 engine: Optional[str] = None, config: Optional[ExperimentConfig] = None,
                 sampler: Optional[str] = "l2l",
                 preprocessing: Optional[Preprocessing] = None) -> Tuple["Experiment", Dict[str, Any]]:
        """A trained run rebuilt: its config (or `config`, e.g. with another episode shape), its saved
        preprocessing (or `preprocessing`, when the caller has read it already), and the learner
        loaded from checkpoints/<checkpoint>.pt.

        Returns (experiment, info) with info = {'step', 'checkpoint', 'checkpoint_path',
        'checkpoint_sha256'}.  One-line errors for a missing run, checkpoint or file.
        """
        from .checkpoint import load_checkpoint, load_learner
        from .errors import CheckpointError
        from .fileio import file_sha256
        from .rundir import checkpoint_path, load_config, load_preprocessing, no_checkpoint_message

        if checkpoint not in ("best", "last"):
            raise ConfigError(f"--checkpoint {checkpoint!r} must be best or last")
        run_dir = Path(run_dir)
        if config is None or preprocessing is None:
            trained = load_config(run_dir)
            config = trained if config is None else config
            preprocessing = load_preprocessing(run_dir, trained) if preprocessing is None else preprocessing
        # evaluation never captures a training step: the run's --cuda-graph does not bind the device here
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, cuda_graph=None))
        x = cls.build(config, device=device, engine=engine, sampler=sampler, preprocessing=preprocessing)
        path = checkpoint_path(run_dir, checkpoint)
        if path.exists() and not path.is_file():
            raise CheckpointError(f"{path} is not a file (a folder?); restore the {checkpoint} checkpoint from a copy "
                                  f"of the run, or pass --checkpoint {'last' if checkpoint == 'best' else 'best'}")
        if not path.is_file():
            if not any(checkpoint_path(run_dir, name).is_file() for name in ("best", "last")):
                raise CheckpointError(no_checkpoint_message(
                    Path(run_dir), f"train it again (`l2l-app train --out {run_dir} --overwrite` with its settings)"))
            if checkpoint == "best":
                raise CheckpointError(f"run {run_dir} has no best checkpoint: it stopped before its first "
                                      f"validation; pass --checkpoint last, or resume it "
                                      f"(`l2l-app train --resume {run_dir}`)")
            raise CheckpointError(f"run {run_dir} has no last checkpoint: {path} not found; pass --checkpoint best")
        digest = file_sha256(path)
        state = load_checkpoint(path, map_location=x.device)
        load_learner(x.learner, state, path)
        return x, {"step": _step(state, path), "checkpoint": checkpoint, "checkpoint_path": path,
                   "checkpoint_sha256": digest}

    def evaluation_learner(self, engine: Optional[str] = None) -> MetaLearner:
        """What scores evaluation episodes: `engine`, by default the one measured faster at scoring
        episodes on this device (`AlgorithmSpec.eval_engine`: the batched engine's vmap over the
        episodes on a GPU), whatever engine trained.  Another engine than the learner's is a twin
        on the same model holding the learner's extra state as of now (Meta-SGD's rates).  The
        engines agree to rounding (float64 parity tests)."""
        spec = self.config.spec
        engine = engine or spec.eval_engine.get(self.device.type, self.engine)
        if engine == self.engine or engine not in spec.engines:
            return self.learner
        twin = build_learner(self.config, self.model, engine, compile=False)
        twin.load_extra_state(self.learner.extra_state())
        return twin

    @property
    def graph_extent(self) -> Optional[str]:
        """What one CUDA graph holds when `cuda_graph` (`engine.graphs`): 'step' -- sampling,
        meta-gradient, clipping and the optimiser step -- with the tensor sampler and a graph-safe
        optimiser, unless --skip-nonfinite must read each step's loss before stepping; otherwise
        'meta-gradient'.  None without a graph."""
        if not self.cuda_graph:
            return None
        whole = (self.sampler == "tensor" and self.config.spec.optimizer.capturable
                 and not self.config.run.skip_nonfinite)
        return "step" if whole else "meta-gradient"

    def describe_execution(self) -> str:
        """How the meta-steps run, and why (what `run.json` records)."""
        c = self.config.run
        how = [f"{self.engine} engine", f"{self.sampler} sampler", str(self.device)]
        if self.engine == "batched":
            graph = {"step": "each whole step (sampling to optimiser step) one CUDA graph",
                     "meta-gradient": "each meta-gradient one CUDA graph"}.get(self.graph_extent, "launched op by op")
            how += ["torch.compile" if c.compile else "eager kernels", graph]
        if c.cudnn_benchmark and self.device.type == "cuda":
            how.append("cuDNN autotuned")
        if c.tf32 and self.device.type == "cuda":
            how.append("TF32 convolutions and matrix products")
        idle = [flag for flag, on in (("--tf32", c.tf32), ("--cudnn-benchmark", c.cudnn_benchmark)) if on]
        if idle and self.device.type != "cuda":
            how.append(f"{' and '.join(idle)} asked for but without effect on {self.device}")
        if c.conv_impl != "native":
            how.append(f"{c.conv_impl} convolutions")
        why = []
        if c.engine == "auto":
            reason = auto_engine(self.config, self.device, self.config.optim.meta_batch)[1]
            why.append(f"--engine auto: {self.engine} ({reason})")
        if c.cuda_graph is None and self.cuda_graph:
            why.append("--cuda-graph by default with the batched engine on a GPU")
        applies = tuning_applies(self.config, self.device, self.engine, self.training)
        blocked = tuning_blocked(self.config) if applies else None
        if blocked and self.filled:
            why.append(f"not the fastest {self.config.algo} step measured on a GPU, which is compiled: {blocked}")
        if self.tuned:
            flags = ", ".join(flag(name, value) if isinstance(value, bool) else f"{flag(name)} {value}"
                              for name, value in ((n, getattr(c, n)) for n in self.tuned))
            why.append(f"{flags} by --engine auto: the fastest {self.config.algo} training step measured on a GPU "
                       f"(benchmarks/results/gpu-h200)")
        return ", ".join(how) + (f" [{'; '.join(why)}]" if why else "")

    def evaluation_mode(self) -> ContextManager[Any]:
        """The kernels a training run's validation scores episodes with: the plain convolutions where
        tuning picked another impl for the compiled training step (evaluation is not compiled, and
        uncompiled unfold convolutions are slower: 10.0 vs 6.2 ms for MAML's captured step on an
        H200; 1000 test episodes took 26.8 s with them, 15.5 s without).  The same numbers to rounding."""
        if "conv_impl" in self.tuned:
            return conv_impl_mode(self.model, PLAIN_TUNING["conv_impl"])
        return contextlib.nullcontext()

    def recorded_config(self) -> ExperimentConfig:
        """The config as a run records it (config.json): the settings `resolve_tuning` filled in unset
        again, so that a resume, an evaluation or a run on another device decides them afresh."""
        return dataclasses.replace(self.config, run=dataclasses.replace(
            self.config.run, **{name: None for name in self.filled}))

    @property
    def dataset(self) -> Dataset:
        return configured_dataset(self.config)

    def load_split(self, split: str, progress: bool = True, skip_bad_images: Optional[bool] = None) -> SplitData:
        """One split of the config's dataset (decoded once, then from the cache)."""
        return load_config_split(self.config, split, progress, skip_bad_images)

    def fit_chunk_size(self, train: SplitData) -> None:
        """--max-memory: the tasks per chunk that fit the budget, measured on a meta-batch from a
        separate sampler (seed + 1), so the training episodes are the same with or without it."""
        c = self.config
        if c.run.max_memory is None or self.engine != "batched" or c.run.chunk_size is not None:
            return
        probe = self.task_source(train, self.train_shape, c.run.seed + 1)
        self.learner.chunk_size = choose_chunk_size(self.learner, probe.sample(c.optim.meta_batch),
                                                    int(c.run.max_memory * 2**30))
        self.learner.zero_grad()

    def task_source(self, split: SplitData, shape: Tuple[int, int, int], seed: int,
                    sampler: Optional[str] = None, flags: Optional[Tuple[str, str, str]] = None) -> TaskSource:
        """Episodes of `shape` (ways, shots, queries) from `split`, on this experiment's device."""
        ways, shots, queries = shape
        kwargs = {} if flags is None else {"flags": flags}
        return build_task_source(sampler or self.sampler, split, ways, shots, queries, seed=seed,
                                 device=self.device, preprocessing=self.preprocessing, **kwargs)

    @property
    def train_shape(self) -> Tuple[int, int, int]:
        c = self.config
        return c.train_ways, c.train_shots, c.train_queries

    @property
    def eval_shape(self) -> Tuple[int, int, int]:
        t = self.config.task
        return t.ways, t.shots, t.queries
