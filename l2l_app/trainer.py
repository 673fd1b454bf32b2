"""One outer loop for every algorithm and engine.

sample -> meta_step -> (finite check) -> clip -> optimiser step -> log -> validate -> checkpoint.

A run directory holds:
  config.json      every resolved setting (plus engine, sampler, environment)
  metrics.jsonl    one JSON object per line: {"kind": "train", step, loss, accuracy, lr, time}
                   and {"kind": "val", step, val_accuracy, val_ci95, time}
  checkpoints/last.pt, checkpoints/best.pt (best validation accuracy; never selected on test)
"""
from __future__ import annotations

import json
import math
import shutil
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from tqdm.auto import tqdm

from . import registry, runtime
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ExperimentConfig, dump_json, load_json, validate, with_overrides
from .datasets import DATASETS, SplitData, check_disjoint, load_split
from .errors import ConfigError, L2LAppError
from .evaluation import EvalResult, evaluate
from .samplers import build_task_source

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


class NonFiniteLossError(L2LAppError):
    """The loss or a gradient became NaN/inf; the last good checkpoint is kept."""


class Interrupted(L2LAppError):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was written."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainSummary:
    run_dir: Path
    steps: int
    seconds: float
    best_val_accuracy: Optional[float]
    best_step: Optional[int]
    stopped_by_budget: bool
    skipped_steps: int
    bad_images: int = 0  # images left out by --skip-bad-images (train + val splits)


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Create RUN_DIR, refusing to clobber an existing one unless --overwrite (or --resume)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; choose a directory path")
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"--resume {run_dir}: no {CONFIG_FILE} there, so it is not a run directory; "
                              f"start a new run with --out")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"run directory {run_dir} already exists; pass --resume to continue it "
                              f"or --overwrite to replace it")
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"refusing to --overwrite {run_dir}: it is not an l2l-app run directory "
                              f"(no {CONFIG_FILE}); choose another --out")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def dataset_root(config: ExperimentConfig) -> Optional[str]:
    return config.data.data_root


def model_for(config: ExperimentConfig) -> torch.nn.Module:
    spec = DATASETS[config.data.dataset]
    return registry.build_model(config, spec.in_channels, spec.image_size)


def eval_protocol(config: ExperimentConfig, split: str, episodes: int, seed: int, sampler: str,
                  checkpoint: str) -> Dict[str, Any]:
    a = config.algorithm
    protocol: Dict[str, Any] = {
        "dataset": config.data.dataset, "split": split, "ways": config.task.ways,
        "shots": config.task.shots, "queries": config.task.queries, "episodes": episodes,
        "episode_seed": seed, "sampler": sampler, "checkpoint": checkpoint, "algo": a.algo,
        "batchnorm": "batch statistics (transductive)" if a.algo != "reptile" or a.transductive
        else "batch statistics of support + one query (non-transductive)",
    }
    if a.algo in ("maml", "reptile"):
        protocol["test_inner_steps"] = config.test_inner_steps
        protocol["inner_lr"] = config.inner_lr
    return protocol


class Trainer:
    """Meta-trains one configuration into a run directory."""

    def __init__(self, config: ExperimentConfig, run_dir: Path, resume: bool = False,
                 overwrite: bool = False, progress: bool = True,
                 on_step: Callable[[int, Dict[str, float]], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        prepare_run_dir(self.run_dir, overwrite=overwrite, resume=resume)
        self.config = validate(config)
        self.resume = resume
        self.progress = progress
        self.on_step = on_step
        self._stop_signal: Optional[int] = None

        c = self.config
        self.device = runtime.resolve_device(c.run.device)
        runtime.set_tf32(c.run.tf32)
        runtime.seed_everything(c.run.seed)
        self.engine = registry.resolve_engine(c.algorithm.algo, c.run.engine, self.device, c.optim.meta_batch)
        self.sampler = registry.resolve_sampler(c.data.sampler, self.engine)

        skip = c.data.skip_bad_images
        self.train_split = load_split(c.data.dataset, "train", c.data.data_root, progress=progress,
                                      skip_bad_images=skip)
        self.val_split = load_split(c.data.dataset, "val", c.data.data_root, progress=progress,
                                    skip_bad_images=skip)
        self.bad_images = self.train_split.skipped + self.val_split.skipped
        check_disjoint({"train": self.train_split, "val": self.val_split})
        self.train_source = build_task_source(
            self.sampler, self.train_split, c.train_ways, c.train_shots, c.train_queries,
            seed=c.run.seed, device=self.device, flags=self._train_flags())
        # Build once to validate the evaluation episode shape against the validation split.
        self._val_source()

        self.model = model_for(c).to(self.device)
        self.learner = registry.build_learner(c, self.model, self.engine, c.run.chunk_size)
        if c.run.max_memory is not None and self.engine == "batched" and c.run.chunk_size is None:
            self.learner.chunk_size = self._chunk_size_for_budget(c.run.max_memory)
        self.optimizer, self.scheduler = registry.build_optimizer(c, self.learner)
        self.step = 0
        self.elapsed = 0.0
        self.best_val: Optional[float] = None
        self.best_step: Optional[int] = None
        self.skipped = 0
        if resume:
            self._restore()
        dump_json(c, self.run_dir / CONFIG_FILE)  # on --resume, records what it changed (e.g. --iterations)
        if not resume:
            (self.run_dir / "run.json").write_text(json.dumps(
                {"engine": self.engine, "sampler": self.sampler, "device": str(self.device),
                 "chunk_size": getattr(self.learner, "chunk_size", None),
                 "environment": runtime.environment(), "bad_images": len(self.bad_images),
                 "skipped_images": self.bad_images}, indent=2) + "\n")

    # ---- pieces -------------------------------------------------------------
    def _train_flags(self) -> tuple[str, str, str]:
        """The options that set the training episode shape, for error messages."""
        t = self.config.task
        return tuple(f"--train-{n}" if getattr(t, f"train_{n}") is not None else f"--{n}"
                     for n in ("ways", "shots", "queries"))  # type: ignore[return-value]

    def _val_source(self):
        c = self.config
        return build_task_source(self.sampler, self.val_split, c.task.ways, c.task.shots, c.task.queries,
                                 seed=c.eval.eval_seed, device=self.device)

    def _chunk_size_for_budget(self, gib: float) -> int:
        """Tasks per chunk that fit --max-memory, measured on a meta-batch from a separate sampler
        (so the training episodes are the same with or without the budget)."""
        from .batched import choose_chunk_size
        c = self.config
        probe = build_task_source(self.sampler, self.train_split, c.train_ways, c.train_shots,
                                  c.train_queries, seed=c.run.seed + 1, device=self.device)
        chunk = choose_chunk_size(self.learner, probe.sample(c.optim.meta_batch), int(gib * 2**30))
        self.learner.zero_grad()
        return chunk

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    def _state(self) -> Dict[str, Any]:
        learner_state = self.learner.state_dict() if hasattr(self.learner, "state_dict") else {}
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "rng": runtime.rng_state(),
            "sampler": self.train_source.state_dict(),
            "learner": learner_state,
            "best_val": self.best_val,
            "best_step": self.best_step,
            "skipped": self.skipped,
        }

    def save(self, name: str) -> None:
        self.checkpoint_dir.mkdir(exist_ok=True)
        save_checkpoint(self._state(), self.checkpoint_dir / f"{name}.pt")

    def _restore(self) -> None:
        state = load_checkpoint(self.checkpoint_dir / "last.pt", map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        runtime.set_rng_state(state["rng"])
        self.train_source.load_state_dict(state["sampler"])
        if state.get("learner") and hasattr(self.learner, "load_state_dict"):
            self.learner.load_state_dict(state["learner"])
        self.best_val, self.best_step = state["best_val"], state["best_step"]
        self.skipped = int(state.get("skipped", 0))
        self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the checkpoint, so a resumed log has no duplicated steps."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                break  # a line cut short by the crash: everything after it is stale too
        path.write_text("".join(k + "\n" for k in kept))

    def _log(self, record: Dict[str, Any]) -> None:
        try:
            with open(self.run_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise CheckpointError(f"could not append to {self.run_dir / METRICS_FILE}: "
                                  f"{exc.strerror or exc}; free disk space and continue with "
                                  f"`l2l-app train --resume {self.run_dir}`") from None

    def validate_now(self) -> EvalResult:
        c = self.config
        return evaluate(self.learner, self._val_source(), c.run.val_episodes,
                        protocol={"split": "val"}, progress=False)

    def _handle_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        self._stop_signal = signum

    # ---- the loop -------------------------------------------------------------
    def fit(self) -> TrainSummary:
        c = self.config
        old_handlers = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        start = time.perf_counter() - self.elapsed
        last_save = time.perf_counter()
        stopped_by_budget = False
        bar = tqdm(total=c.optim.iterations, initial=self.step, disable=not self.progress,
                   desc=f"{c.algorithm.algo}/{self.engine}", unit="step", dynamic_ncols=True)
        try:
            while self.step < c.optim.iterations:
                batch = self.train_source.sample(c.optim.meta_batch)
                metrics = self.learner.meta_step(batch)
                if not self._finite(metrics):
                    if not c.run.skip_nonfinite:
                        last = self.checkpoint_dir / "last.pt"
                        kept = f"keeping the last good checkpoint in {last}" if last.is_file() else \
                            "no checkpoint had been written yet"
                        raise NonFiniteLossError(
                            f"loss became {metrics['loss']} at step {self.step + 1}; stopped, {kept} "
                            f"(lower --meta-lr/--inner-lr, or pass --skip-nonfinite to skip such steps)")
                    self.skipped += 1
                    self.learner.zero_grad()
                else:
                    if c.optim.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.learner.parameters(), c.optim.grad_clip)
                    self.optimizer.step()
                lr = self.optimizer.param_groups[0]["lr"]
                with warnings.catch_warnings():
                    # a skipped step advances the schedule without an optimiser step, on purpose
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    self.scheduler.step()
                self.step += 1
                self.elapsed = time.perf_counter() - start
                self._log({"kind": "train", "step": self.step, "loss": metrics["loss"],
                           "accuracy": metrics["accuracy"], "lr": lr, "time": round(self.elapsed, 3)})
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}",
                                val="-" if self.best_val is None else f"{self.best_val:.2f}")
                if self.on_step is not None:
                    self.on_step(self.step, metrics)

                out_of_time = c.run.time_budget is not None and self.elapsed >= 60 * c.run.time_budget
                finished = self.step >= c.optim.iterations or out_of_time
                if self.step % c.run.val_every == 0 or finished:
                    self._validate_and_keep_best()
                minutes = c.run.checkpoint_minutes
                due = (self.step % c.run.checkpoint_every == 0 or finished or self._stop_signal is not None
                       or (minutes is not None and time.perf_counter() - last_save >= 60 * minutes))
                if due:
                    self.save("last")
                    last_save = time.perf_counter()
                if self._stop_signal is not None:
                    raise Interrupted(f"stopped by signal {self._stop_signal} after step {self.step}; "
                                      f"checkpoint saved; continue with `l2l-app train --resume {self.run_dir}`",
                                      self._stop_signal)
                if out_of_time:
                    stopped_by_budget = True
                    break
        finally:
            bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        return TrainSummary(self.run_dir, self.step, self.elapsed, self.best_val, self.best_step,
                            stopped_by_budget, self.skipped, len(self.bad_images))

    @staticmethod
    def _finite(metrics: Dict[str, float]) -> bool:
        return math.isfinite(metrics["loss"])

    def _validate_and_keep_best(self) -> None:
        result = self.validate_now()
        self._log({"kind": "val", "step": self.step, "val_accuracy": result.mean,
                   "val_ci95": result.ci95, "time": round(self.elapsed, 3)})
        if self.best_val is None or result.mean > self.best_val:
            self.best_val, self.best_step = result.mean, self.step
            self.save("best")


#: the settings `train --resume` may change; everything else would make the resumed run a different one
RESUME_CHANGEABLE = ("iterations", "time_budget", "device", "val_every", "checkpoint_every", "checkpoint_minutes")


def resume_config(run_dir: Path, overrides: Dict[str, Any]) -> ExperimentConfig:
    """The saved config of `run_dir` with the few settings a resumed run may change."""
    fixed = [name for name in overrides if name not in RESUME_CHANGEABLE]
    if fixed:
        allowed = ", ".join("--" + n.replace("_", "-") for n in RESUME_CHANGEABLE)
        raise ConfigError(f"cannot change --{fixed[0].replace('_', '-')} when resuming; only {allowed} may change")
    return with_overrides(load_run(run_dir), overrides)


def load_run(run_dir: Path) -> ExperimentConfig:
    """The resolved config of an existing run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"--run {run_dir} is not a run directory (no {CONFIG_FILE}); "
                          f"pass the --out directory of `l2l-app train`")
    return load_json(path)


def evaluate_run(run_dir: Path, split: str = "test", episodes: int | None = None,
                 checkpoint: str = "best", seed: int | None = None, device: str | None = None,
                 engine: str | None = None, progress: bool = True, ways: int | None = None,
                 shots: int | None = None, queries: int | None = None) -> EvalResult:
    """Evaluate a run's checkpoint on fixed-seed episodes of `split`.

    ways/shots/queries override the run's evaluation episode shape (ProtoNet can test any
    ways; MAML/Reptile's output layer fixes them).  Writes eval-<split>-<ckpt>.json, or
    eval-<split>-<ckpt>-<W>w<S>s.json when the shape differs from the run's.
    """
    run_dir = Path(run_dir)
    trained = load_run(run_dir)
    shape = {k: v for k, v in (("ways", ways), ("shots", shots), ("queries", queries)) if v is not None}
    config = validate(with_overrides(trained, shape))
    if config.task.ways != trained.task.ways and config.algorithm.algo != "protonet":
        raise ConfigError(f"--ways {config.task.ways}: this {config.algorithm.algo} model has a "
                          f"{trained.task.ways}-way output layer; evaluate with --ways {trained.task.ways}")
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint {checkpoint!r} must be best or last")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split!r} must be one of train, val, test")
    episodes = config.eval.episodes if episodes is None else episodes
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    seed = config.eval.eval_seed if seed is None else seed
    dev = runtime.resolve_device(device or config.run.device)
    runtime.set_tf32(config.run.tf32)
    engine = registry.resolve_engine(config.algorithm.algo, engine or config.run.engine, dev)
    ckpt_path = run_dir / CHECKPOINT_DIR / f"{checkpoint}.pt"
    state = load_checkpoint(ckpt_path, map_location=dev)
    model = model_for(config).to(dev)
    model.load_state_dict(state["model"])
    learner = registry.build_learner(config, model, engine, config.run.chunk_size)
    data = load_split(config.data.dataset, split, config.data.data_root, progress=progress)
    sampler = "l2l"
    protocol = eval_protocol(config, split, episodes, seed, sampler, f"{checkpoint} (step {state['step']})")
    protocol["engine"] = engine
    source = build_task_source(sampler, data, config.task.ways, config.task.shots, config.task.queries,
                               seed=seed, device=dev)
    suffix = "" if (config.task.ways, config.task.shots) == (trained.task.ways, trained.task.shots) \
        else f"-{config.task.ways}w{config.task.shots}s"
    out = run_dir / f"eval-{split}-{checkpoint}{suffix}.json"
    protocol["file"] = out.name
    result = evaluate(learner, source, episodes, protocol=protocol, progress=progress, desc=f"eval {split}")
    out.write_text(json.dumps(result.to_dict(with_accuracies=True), indent=2) + "\n")
    return result


__all__ = ["Trainer", "TrainSummary", "evaluate_run", "load_run", "NonFiniteLossError", "Interrupted",
           "SplitData"]
