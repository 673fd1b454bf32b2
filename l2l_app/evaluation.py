"""Few-shot evaluation: fixed-seed episodes, mean accuracy and 95% confidence interval.

The episodes are drawn once, up front (`EpisodeSet`: indices into the split), from a freshly
seeded source -- learn2learn's sampler for `eval` and validation, whatever the engine or device,
so every engine scores the same episodes -- and scored `batch_size` at a time by the learner's
`query_accuracy` (the batched engine's vmap over episodes where the algorithm has one:
`Experiment.evaluation_learner`).

`evaluate_run` is `l2l-app eval`: a run's checkpoint on a split (or another dataset's classes),
its result written into the run directory with the protocol next to the number (`eval_protocol`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import torch

from . import distributed
from .backbones import has_batch_norm
from .config import SPLITS, ExperimentConfig, absolute_root, data_moved, validate, with_overrides
from .data import Preprocessing, list_classes
from .data.types import DATA_OPTIONS, VECTORS, EpisodeBatch, TaskSource
from .errors import CheckpointError, ConfigError, DataError
from .experiment import Experiment, configured_dataset
from .fileio import check_writable, write_json
from .learner import MetaLearner
from .progress import Progress
from .registry import DATASETS
from .rundir import eval_file_name, load_config, load_preprocessing, other_data_label


class EvaluationStopped(Exception):
    """`evaluate`'s `should_stop` said stop (a signal, in training's validation): no result."""


@dataclass
class EvalResult:
    """Accuracy over `episodes` episodes (in %), with the protocol that produced it."""
    mean: float
    ci95: float
    std: float
    episodes: int
    protocol: Dict[str, Any] = field(default_factory=dict)
    accuracies: List[float] = field(default_factory=list)

    def to_dict(self, with_accuracies: bool = False) -> Dict[str, Any]:
        out = asdict(self)
        if not with_accuracies:
            out.pop("accuracies")
        return out

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.ci95:.2f}% (95% CI, {self.episodes} episodes)"


def mean_ci95(accuracies: torch.Tensor) -> tuple[float, float, float]:
    """(mean, 1.96·std/√n, std) of per-episode accuracies [n] (sample std, ddof=1)."""
    acc = accuracies.double()
    n = acc.numel()
    std = acc.std(unbiased=True).item() if n > 1 else 0.0
    return acc.mean().item(), 1.96 * std / math.sqrt(n), std


class EpisodeSet:
    """A fixed set of episodes drawn once from `source`: support_idx [E, ways*shots] and
    query_idx [E, ways*queries], indices into the source's split; batches made on demand."""

    def __init__(self, source: TaskSource, episodes: int) -> None:
        self.source = source
        self.support_idx, self.query_idx = source.sample_indices(episodes)

    def __len__(self) -> int:
        return int(self.support_idx.shape[0])

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[EpisodeBatch]:
        """The first `limit` episodes (None: all) in order, `batch_size` at a time, as model inputs
        on the source's device."""
        total = len(self) if limit is None else min(limit, len(self))
        for start in range(0, total, batch_size):
            end = min(start + batch_size, total)
            yield self.source.batch_at(self.support_idx[start:end], self.query_idx[start:end])


def evaluate(learner: MetaLearner, episodes_from: Union[TaskSource, EpisodeSet], episodes: int,
             batch_size: int = 50, protocol: Dict[str, Any] | None = None, progress: bool = True,
             desc: str = "eval", quiet_seconds: float = 0.0,
             should_stop: Optional[Callable[[], bool]] = None) -> EvalResult:
    """Adapt on each episode's support set and score its queries; accuracies in %.

    `episodes_from`: a freshly seeded source (its first `episodes` episodes are drawn now) or an
    `EpisodeSet` drawn earlier (its first `episodes`).  `quiet_seconds`: show progress only once
    the evaluation has run this long.  `should_stop`: asked after each batch; True raises
    `EvaluationStopped`.
    """
    fixed = episodes_from if isinstance(episodes_from, EpisodeSet) else EpisodeSet(episodes_from, episodes)
    if len(fixed) < episodes:
        raise ValueError(f"the episode set holds {len(fixed)} episodes, fewer than the {episodes} asked for")
    accs: list[torch.Tensor] = []
    bar = Progress(desc, episodes, enabled=progress, log_every=max(batch_size, episodes // 10), unit="episode",
                   quiet_seconds=quiet_seconds)
    start = time.perf_counter()
    done = 0
    with bar:
        for batch in fixed.batches(batch_size, episodes):
            accs.append(learner.query_accuracy(batch).detach().double().cpu() * 100.0)
            done += batch.num_tasks
            bar.update(done, time.perf_counter() - start)
            if should_stop is not None and should_stop() and done < episodes:
                raise EvaluationStopped(f"stopped after {done} of {episodes} episodes")
    all_accs = torch.cat(accs)
    mean, ci, std = mean_ci95(all_accs)
    return EvalResult(mean, ci, std, episodes, dict(protocol or {}), all_accs.tolist())


# ----------------------------------------------------------------------------- a run's evaluation
def eval_protocol(config: ExperimentConfig, split: str, episodes: int, seed: int, sampler: str,
                  checkpoint: str) -> Dict[str, Any]:
    """What an evaluation file records next to its number: episodes, checkpoint, and the
    algorithm's own protocol fields (batch norm, test-time adaptation)."""
    return {
        "dataset": config.data.dataset, "split": split, "ways": config.task.ways,
        "shots": config.task.shots, "queries": config.task.queries, "episodes": episodes,
        "episode_seed": seed, "sampler": sampler, "checkpoint": checkpoint, "algo": config.algo,
        **config.algorithm.protocol(),
    }


def evaluate_run(run_dir: Path, split: str = "test", episodes: int | None = None,
                 checkpoint: str = "best", seed: int | None = None, device: str | None = None,
                 engine: str | None = None, progress: bool = True, ways: int | None = None,
                 shots: int | None = None, queries: int | None = None, dataset: str | None = None,
                 data_root: str | None = None, save: bool = True) -> EvalResult:
    """Evaluate a run's checkpoint on fixed-seed episodes of `split`.

    ways/shots/queries override the run's evaluation episode shape (an algorithm without an
    output layer, like ProtoNet, can test any ways; one with an N-way layer only its N).
    dataset/data_root: evaluate on another dataset's (or another copy's) classes -- cross-domain
    evaluation (Chen et al., ICLR 2019) -- decoded and normalised with the run's preprocessing.
    With `save`, writes one file per protocol (`rundir.eval_file_name`), recording the checkpoint's
    step and SHA-256 so that a later change of the checkpoint marks the result stale.
    """
    run_dir = Path(run_dir)
    trained = load_config(run_dir)
    preprocessing = load_preprocessing(run_dir, trained)
    shape = {k: v for k, v in (("ways", ways), ("shots", shots), ("queries", queries)) if v is not None}
    if ways is not None and ways != trained.task.ways and trained.spec.head:
        raise ConfigError(f"--ways {ways}: this {trained.algo} model has a "
                          f"{trained.task.ways}-way output layer; evaluate with --ways {trained.task.ways}")
    if data_root is not None and dataset in (None, trained.data.dataset) and (
            absolute_root(data_root) == trained.data.data_root or data_moved(trained)):
        # the run's own data, named again or found where it was moved: not another dataset
        relocated = dataclasses.replace(trained.data, data_root=absolute_root(data_root))
        trained = dataclasses.replace(trained, data=relocated)
        dataset = data_root = None
    other = dataset is not None or data_root is not None
    base = cross_domain_config(trained, preprocessing, dataset, data_root) if other else trained
    config = validate(with_overrides(base, shape))
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} must be one of {', '.join(SPLITS)}")
    episodes = config.eval.episodes if episodes is None else episodes
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    seed = config.eval.eval_seed if seed is None else seed
    check_ways_fit(config, split)  # before the split is decoded (and cached): a refusal costs nothing
    label = other_data_label(config.data.dataset, config.data.data_root) if other else None
    out = run_dir / eval_file_name(split, checkpoint, config.task.ways, config.task.shots, config.task.queries,
                                   episodes, seed, label)
    if save:  # before evaluating: a result that cannot be written is refused, not computed and lost
        check_writable(run_dir, f"the run directory {run_dir} (for {out.name})", CheckpointError,
                       fix="make it writable, or evaluate a copy of the run")
    world = distributed.join(device or config.run.device)  # torchrun: episodes split by rank, results gathered
    x, loaded = Experiment.from_run(run_dir, checkpoint, device=world.device_name or device, engine=engine,
                                    config=config, preprocessing=preprocessing)
    step = loaded["step"]
    data = x.load_split(split, progress, skip_bad_images=False)
    source = x.task_source(data, x.eval_shape, seed)
    protocol = eval_protocol(x.config, split, episodes, seed, x.sampler, f"{checkpoint} (step {step})")
    protocol.update(engine=x.engine, checkpoint_name=checkpoint, checkpoint_step=step,
                    checkpoint_sha256=loaded["checkpoint_sha256"], file=out.name,
                    preprocessing=preprocessing.describe())
    if not has_batch_norm(x.model):
        protocol["batchnorm"] = "none (the backbone has no batch norm)"
    if other:
        protocol["cross_domain"] = {"trained_on": trained.data.dataset, "dataset": config.data.dataset,
                                    "data_root": config.data.data_root}
    scorer = x.evaluation_learner()
    protocol["scored_by"] = f"{scorer.engine} engine"
    result = evaluate(world.sharded(scorer), source, episodes, protocol=protocol,
                      progress=progress and world.is_main, desc=f"eval {split}")
    if save and world.is_main:
        write_json(out, result.to_dict(with_accuracies=True))
    return result


def listed_class_count(config: ExperimentConfig, split: str) -> Optional[int]:
    """How many classes `split` of the config's data has, known without decoding any image
    (`data.list_classes`); None when the dataset cannot tell before decoding, or its listing
    cannot be read (loading the split then reports why)."""
    try:
        lists = list_classes(configured_dataset(config), config.data.data_root)
    except DataError:
        return None
    if lists is None or split not in lists:
        return None
    return len(lists[split])


def check_ways_fit(config: ExperimentConfig, split: str) -> None:
    """ConfigError when the episodes' ways exceed the classes of `split`, where they are known
    without decoding: the refusal `validate_episode_shape` makes after loading, made before it."""
    ways, count = config.task.ways, listed_class_count(config, split)
    if count is not None and ways > count:
        raise ConfigError(f"--ways {ways} exceeds the {count} classes of the {config.data.dataset} {split} split; "
                          f"use at most {count}")


def cross_domain_config(trained: ExperimentConfig, preprocessing: Preprocessing, dataset: Optional[str],
                        data_root: Optional[str]) -> ExperimentConfig:
    """The run's config reading `dataset` at `data_root` instead (None: the run's), decoded like the
    run's data (`Preprocessing.dataset_settings`); refused when the run's inputs are images and the
    other data vectors or the other way round."""
    other = DATASETS.get(dataset or trained.data.dataset)
    if other is None:
        raise DATASETS.unknown(str(dataset))
    if other.kind != preprocessing.kind:
        raise ConfigError(f"--dataset {other.name} holds {'feature vectors' if other.kind == VECTORS else 'images'}"
                          f", but this run was trained on {preprocessing.describe()}; evaluate on a dataset of the "
                          f"same kind")
    values: Dict[str, Any] = {n: None for n in DATA_OPTIONS}
    if other.name == trained.data.dataset:
        values.update({n: getattr(trained.data, n) for n in DATA_OPTIONS})
    values.update({n: v for n, v in preprocessing.dataset_settings().items() if n in other.options})
    values.update(dataset=other.name, data_root=absolute_root(data_root) if data_root is not None else
                  (trained.data.data_root if other.name == trained.data.dataset else None))
    return dataclasses.replace(trained, data=dataclasses.replace(trained.data, **values))
