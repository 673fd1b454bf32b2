"""One outer loop for every algorithm and engine.

sample -> meta_step -> (finite check) -> clip -> optimiser step -> log -> validate -> checkpoint.

The run directory's layout, locking and safe replacement live in `rundir.py`.  A `Trainer`
builds and checks everything (settings, data, episode shapes, device, model, checkpoint to
resume) before it touches the disk; only then does it take the run directory.

SIGINT/SIGTERM: the current step finishes (a validation under way stops after its current batch
of episodes, and a resume runs it first), a checkpoint is written, and the run stops; a second
signal stops the process at once, like a kill (the last checkpoint written is what a resume
continues from).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from . import distributed, runtime
from .checkpoint import RESUME_KEYS, CheckpointError, load_checkpoint, load_learner, save_checkpoint
from .config import (ExperimentConfig, absolute_root, check_names, data_moved, resolve, train_shape_flags, validate,
                     with_overrides)
from .data.types import EpisodeBatch
from .data import SplitData, check_disjoint
from .errors import ConfigError, L2LAppError
from .evaluation import EpisodeSet, EvalResult, EvaluationStopped, evaluate
from .data import Preprocessing, list_classes
from .engine.graphs import CapturedMetaGradient, CapturedTrainingStep
from .experiment import Experiment, build_optimizer, configured_dataset, load_config_split
from .learner import apply_meta_gradient, load_optimizer_state, optimizer_state
from .progress import Progress
from .fileio import read_json, write_json
from .rundir import (CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, PREPROCESSING_FILE, RUN_INFO_FILE, SPLITS_FILE,
                     TENSORBOARD_DIR, RunDirectory, check_outside, check_run_target, checkpoint_path,
                     list_evaluations, load_config, load_preprocessing)

#: metrics.jsonl and run.json state accuracies in this unit (older runs: fractions)
ACCURACY_UNIT = "%"
#: a validation shows progress once it has run this long (most take a second or two)
VALIDATION_QUIET_SECONDS = 10.0


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
    #: 'trained' | 'complete' (resumed a finished run: nothing to do) | 'budget spent' (resumed a run
    #: whose --time-budget is used up: nothing to do)
    status: str = "trained"
    iterations: int = 0
    time_budget: Optional[float] = None
    stale_evaluations: int = 0
    #: the time budget stopped a schedule laid out over the iterations (`MetaOptimizer.spans_iterations`)
    #: part-way: what it reached, and the --iterations this budget holds
    schedule_cut: Optional[str] = None

    def describe(self, engine: str, sampler: str, device: str) -> str:
        """What the CLI prints at the end of `train`."""
        if self.status == "complete":
            return (f"run {self.run_dir} is complete ({self.steps} of {self.iterations} steps); nothing to do. "
                    f"To train further: l2l-app train --resume {self.run_dir} --iterations N (N > {self.steps})")
        if self.status == "budget spent":
            return (f"run {self.run_dir} stopped at its time budget ({self.time_budget:g} min; "
                    f"{self.seconds / 60:.1f} min used, step {self.steps} of {self.iterations}); nothing to do. "
                    f"To continue: l2l-app train --resume {self.run_dir} --time-budget M "
                    f"(M > {self.seconds / 60:.1f})")
        best = "n/a" if self.best_val_accuracy is None else \
            f"{self.best_val_accuracy:.2f}% at step {self.best_step}"
        note = " (time budget reached)" if self.stopped_by_budget else ""
        lines = [f"trained {self.steps} steps in {self.seconds:.1f}s{note} [{engine} engine, {sampler} sampler, "
                 f"{device}]; best validation accuracy {best}; run: {self.run_dir}"]
        if self.schedule_cut:
            lines.append(self.schedule_cut)
        if self.skipped_steps:
            lines.append(f"skipped {self.skipped_steps} steps with a non-finite loss")
        if self.bad_images:
            lines.append(f"skipped {self.bad_images} unreadable images (listed in {self.run_dir / RUN_INFO_FILE})")
        if self.stale_evaluations:
            lines.append(f"{self.stale_evaluations} evaluation(s) in {self.run_dir} are now stale (their checkpoint "
                         f"changed); `l2l-app report {self.run_dir} --out DIR` lists them with the commands "
                         f"that refresh them")
        return "\n".join(lines)


class ScheduleCutForecast:
    """Foresees, once, that a time budget will stop a run before a schedule laid out over its
    iterations ends (`MetaOptimizer.spans_iterations`).

    `check(step, elapsed)` is called after every step with the run's clock; the rate is measured
    from this process's first step (which holds any capture or compilation) and judged once,
    `after_seconds` into the run.  It returns the step the budget will end the run near, when that
    is short of `iterations`, and None otherwise (and on every later call).
    """

    def __init__(self, iterations: int, budget_seconds: float, after_seconds: float) -> None:
        self.iterations, self.budget, self.after = iterations, budget_seconds, after_seconds
        self._from: Optional[Tuple[int, float]] = None  # (step, elapsed) after this process's first step
        self._done = False

    def check(self, step: int, elapsed: float) -> Optional[int]:
        if self._done:
            return None
        if self._from is None:
            self._from = (step, elapsed)
            return None
        if elapsed < self.after or step == self._from[0]:
            return None
        self._done = True
        seconds_per_step = (elapsed - self._from[1]) / (step - self._from[0])
        projected = step + int(max(0.0, self.budget - elapsed) / seconds_per_step) if seconds_per_step > 0 \
            else self.iterations
        return projected if projected < self.iterations else None


def _open_tensorboard(enabled: bool):
    """The SummaryWriter class when --tensorboard is on (checked before anything is written)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the optional tensorboard package: pip install tensorboard "
                          "(or pip install 'l2l_app[tensorboard]'), or drop --tensorboard") from None
    return SummaryWriter


class Trainer:
    """Meta-trains one configuration into a run directory.

    Construction validates and builds everything in memory; the run directory is taken (locked,
    created, or staged beside an old run for --overwrite) only after that, so a refused command
    changes nothing on disk.
    """

    def __init__(self, config: ExperimentConfig, run_dir: Path, resume: bool = False,
                 overwrite: bool = False, progress: bool = True,
                 on_step: Callable[[int, Dict[str, float]], None] | None = None) -> None:
        self.run_dir = Path(run_dir)  # the user's path; files go to self.files.path
        mode = "resume" if resume else ("overwrite" if overwrite else "new")
        check_run_target(self.run_dir, mode)  # cheap refusals first: busy, exists, path through a file
        runtime.seed_everything(validate(config).run.seed)  # before the model's weights are drawn
        config = resolve(config)
        data_root = (Path(config.data.data_root).expanduser() if config.data.data_root is not None
                     else configured_dataset(config).default_root)
        if not resume and data_root is not None and data_root.is_dir():  # a run in the data would become data
            check_outside(self.run_dir, data_root, "--out", "the data root")
        runtime.resolve_device(config.run.device)  # a missing device is refused before any decoding
        self.world = distributed.join(config.run.device, config.optim.meta_batch, resume)  # torchrun: rank's group
        progress = progress and self.world.is_main  # rank 0 alone reports
        self.resume = resume
        self.progress = progress
        self.on_step = on_step
        self._stop_signal: Optional[int] = None
        self._signal_seen: Optional[int] = None  # under torchrun: acted on by every rank at once (_meta_step)
        self._tensorboard_class = _open_tensorboard(config.run.tensorboard)
        self._tensorboard = None

        self.train_split = load_config_split(config, "train", progress)
        self.val_split = load_config_split(config, "val", progress)
        self.bad_images = self.train_split.skipped + self.val_split.skipped
        check_disjoint({"train": self.train_split, "val": self.val_split})
        dataset = configured_dataset(config)
        self.class_lists = list_classes(dataset, config.data.data_root)
        self.preprocessing = (load_preprocessing(self.run_dir, config) if resume
                              else Preprocessing.for_run(dataset, self.train_split))
        self.experiment = Experiment.build(config, device=self.world.device_name, meta_batch=config.optim.meta_batch,
                                           preprocessing=self.preprocessing, training=True)
        self.config = self.experiment.config

        c, x = self.config, self.experiment
        self.device, self.engine, self.sampler = x.device, x.engine, x.sampler
        self.model, self.learner = x.model, x.learner
        if self.world.distributed:  # each rank's slice runs op by op, between the all-reduces
            x.cuda_graph = False

        self.train_source = x.task_source(self.train_split, x.train_shape, c.run.seed, flags=train_shape_flags(c))
        # The validation episodes, drawn once (this also checks the evaluation shape against the split).
        self._val_set = EpisodeSet(self._val_source(), c.run.val_episodes)
        x.fit_chunk_size(self.train_split)
        self.optimizer, self.scheduler = build_optimizer(
            c, self.learner, capturable=x.graph_extent == "step" and self.device.type == "cuda")
        # --cuda-graph (on by default with the batched engine on a GPU): the whole step as one CUDA
        # graph where it can be, else the meta-gradient (`Experiment.graph_extent`)
        self.captured_step = (CapturedTrainingStep(self.learner, self.train_source, c.optim.meta_batch,
                                                   self.optimizer, c.optim.grad_clip)
                              if x.graph_extent == "step" else None)
        self.captured = CapturedMetaGradient(self.learner) if x.graph_extent == "meta-gradient" else None
        self.step = 0
        self.elapsed = 0.0
        self.best_val: Optional[float] = None
        self.best_step: Optional[int] = None
        self.skipped = 0
        #: a signal stopped the validation of this step: the checkpoint says so, and a resume runs it first
        self.validation_pending = False
        #: the step checkpoints/last.pt holds (None: none written yet)
        self.saved_step: Optional[int] = None
        #: whether this process has written a checkpoint (a new run that never did is removed when it fails)
        self.wrote_checkpoint = False
        self.status = "trained"
        state = self._load_resume_state() if resume else None
        if state is not None:
            self._apply(state)
            self.status = self._nothing_to_do()
        self.files: Optional[RunDirectory] = None
        self.world.check_launch(c, self.step, (self.train_split, self.val_split))  # torchrun: ranks agree
        if self.status != "trained":
            return  # a finished run, or one whose budget is spent: leave it untouched
        if not self.world.is_main:  # rank 0 alone writes the run directory
            self.files, self._tensorboard_class = distributed.NoRunDirectory(self.run_dir), None
            return
        # ---- everything is checked: only now touch the disk -------------------------------------
        self.files = RunDirectory(self.run_dir, mode)
        try:
            if state is not None:
                self._truncate_metrics(self.step)
            # on --resume: records what changed; the tuned settings as given (unset), decided afresh by each run
            write_json(self.files.file(CONFIG_FILE), x.recorded_config().to_dict())
            if not resume:
                write_json(self.files.file(PREPROCESSING_FILE), self.preprocessing.to_dict())
                if self.class_lists is not None:
                    write_json(self.files.file(SPLITS_FILE), self.class_lists)
                write_json(self.files.file(RUN_INFO_FILE), {
                    "engine": self.engine, "sampler": self.sampler, "device": str(self.device),
                    "cuda_graph": x.graph_extent is not None, "graph_extent": x.graph_extent,
                    "compile": bool(c.run.compile and self.engine == "batched"),
                    "execution": self.experiment.describe_execution(),
                    "chunk_size": getattr(self.learner, "chunk_size", None), "accuracy_unit": ACCURACY_UNIT,
                    "environment": runtime.environment(), "bad_images": len(self.bad_images),
                    "skipped_images": self.bad_images, **self.world.describe()})
        except BaseException:
            self._close(committed=False)
            raise

    # ---- pieces -------------------------------------------------------------
    def _val_source(self):
        """learn2learn's sampler whatever the engine: every engine validates on the same episodes."""
        return self.experiment.task_source(self.val_split, self.experiment.eval_shape, self.config.eval.eval_seed,
                                           sampler="l2l")

    @property
    def checkpoint_dir(self) -> Path:
        return (self.files.path if self.files else self.run_dir) / CHECKPOINT_DIR

    def _state(self) -> Dict[str, Any]:
        return {
            "learner": self.learner.state_dict(),
            **optimizer_state(self.optimizer, self.scheduler),
            "step": self.step,
            "elapsed": self.elapsed,
            "rng": runtime.rng_state(),
            "sampler": self.train_source.state_dict(),
            "best_val": self.best_val,
            "best_step": self.best_step,
            "skipped": self.skipped,
            "validation_pending": self.validation_pending,
        }

    def save(self, name: str) -> None:
        """Write checkpoints/<name>.pt atomically; the first one swaps a staged --overwrite run in."""
        if not self.world.is_main:
            return
        self.checkpoint_dir.mkdir(exist_ok=True)
        save_checkpoint(self._state(), self.checkpoint_dir / f"{name}.pt")
        self.files.commit()
        self.wrote_checkpoint = True
        if name == "last":
            self.saved_step = self.step

    def _load_resume_state(self) -> Dict[str, Any]:
        """The last checkpoint, checked against the settings before anything is written."""
        state = load_checkpoint(checkpoint_path(self.run_dir, "last"), map_location=self.device, required=RESUME_KEYS)
        step, iterations = int(state["step"]), self.config.optim.iterations
        if iterations < step:
            raise ConfigError(f"--iterations {iterations} is below the step this run has reached ({step}); "
                              f"pass --iterations above {step} to train further")
        budget, used = self.config.run.time_budget, float(state["elapsed"]) / 60
        if budget is not None and budget < used and budget != load_config(self.run_dir).run.time_budget:
            # a new budget already spent asks for the impossible; the run's own spent budget is
            # 'nothing to do' (RunSummary.describe says how to continue)
            raise ConfigError(f"--time-budget {budget:g} is below the {used:.3g} min this run has trained; "
                              f"pass a --time-budget above {used:.3g} to train further")
        return state

    def _apply(self, state: Dict[str, Any]) -> None:
        load_learner(self.learner, state, checkpoint_path(self.run_dir, "last"))
        load_optimizer_state(self.optimizer, self.scheduler, state["optimizer"], state["scheduler"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        runtime.set_rng_state(state["rng"])
        self.train_source.load_state_dict(state["sampler"])
        self.best_val, self.best_step = state["best_val"], state["best_step"]
        self.skipped = int(state.get("skipped", 0))
        self.validation_pending = bool(state.get("validation_pending", False))
        self.saved_step = self.step

    def _nothing_to_do(self) -> str:
        """'complete' or 'budget spent' for a resumed run that would train no step nor finish a
        validation a signal stopped; else 'trained'."""
        c = self.config
        if self.validation_pending:
            return "trained"
        if self.step >= c.optim.iterations:
            return "complete"
        if c.run.time_budget is not None and self.elapsed >= 60 * c.run.time_budget:
            return "budget spent"
        return "trained"

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the checkpoint, so a resumed log has no duplicated steps.

        A run logged by an older l2l-app (training accuracy as a fraction, no `accuracy_unit` in
        run.json) has its rows converted to % here, so one log never mixes units.
        """
        path = self.files.file(METRICS_FILE)
        info_path = self.files.file(RUN_INFO_FILE)
        info = read_json(info_path, "run info") if info_path.is_file() else {}
        to_percent = info.get("accuracy_unit") != ACCURACY_UNIT
        kept = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    if row["step"] > step:
                        continue
                except (json.JSONDecodeError, KeyError):
                    break  # a line cut short by the crash: everything after it is stale too
                if to_percent and row.get("kind") == "train":
                    row["accuracy"] = 100.0 * row["accuracy"]
                    line = json.dumps(row)
                kept.append(line)
            path.write_text("".join(k + "\n" for k in kept))
        if to_percent and info:
            write_json(info_path, {**info, "accuracy_unit": ACCURACY_UNIT})

    def _log(self, record: Dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        path = self.files.file(METRICS_FILE)
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise CheckpointError(f"could not append to {self.run_dir / METRICS_FILE}: "
                                  f"{exc.strerror or exc}; free disk space and continue with "
                                  f"`l2l-app train --resume {self.run_dir}`") from None
        if self._tensorboard is not None:
            for key in ("loss", "accuracy", "lr", "val_accuracy", "val_ci95"):
                if key in record:
                    tag = f"{record['kind']}/{key.removeprefix('val_')}"
                    self._tensorboard.add_scalar(tag, record[key], record["step"])

    def validate_now(self) -> EvalResult:
        """The validation episodes scored now (progress shown once it takes a while).  One process
        stops it at a signal (`EvaluationStopped`); under torchrun the ranks score their shards in
        lockstep, so each finishes its shard and the run stops after it."""
        c = self.config
        stop = None if self.world.distributed else (lambda: self._stop_signal is not None)
        with self.experiment.evaluation_mode():
            return evaluate(self.world.sharded(self.experiment.evaluation_learner()), self._val_set,
                            c.run.val_episodes, protocol={"split": "val"}, progress=self.progress,
                            desc=f"validation at step {self.step}", quiet_seconds=VALIDATION_QUIET_SECONDS,
                            should_stop=stop)

    def _handle_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        if self._stop_signal is not None or self._signal_seen is not None:
            self._stop_at_once(signum)
        if self.world.distributed:
            self._signal_seen = signum  # every rank stops after the same step: see _meta_step
        else:
            self._stop_signal = signum

    def _stop_at_once(self, signum: int) -> None:
        """A second signal: exit now, as a kill would (every file the run writes survives one: atomic
        checkpoints, a staged --overwrite, a lock the OS releases), after one line saying what is kept."""
        if self.world.is_main:
            kept = ("no checkpoint had been written" if self.saved_step is None else
                    f"continue from its last checkpoint (step {self.saved_step}) with "
                    f"`l2l-app train --resume {self.run_dir}`")
            sys.stderr.write(f"\nerror: a second signal ({signum}) stopped the run at once; {kept}\n")
            sys.stderr.flush()
        os._exit(128 + signum)

    def _meta_step(self, batch: EpisodeBatch) -> Dict[str, Any]:
        """The meta-gradient of the global meta-batch in `.grad` and its metrics: under torchrun this
        rank's slice of the tasks, all-reduced across the ranks, with the stop decision of every rank.
        One process: the metrics stay on the device (read by `_read_metrics`), and the step is the
        captured CUDA graph when there is one."""
        if not self.world.distributed:
            return self.captured(batch) if self.captured is not None else self.learner.meta_gradient(batch)
        metrics, stop = self.world.meta_step(self.learner, batch, self._signal_seen)
        if stop is not None:
            self._stop_signal = stop
        return metrics

    def _train_step(self) -> Dict[str, Any]:
        """Sample, meta-gradient, clip, optimiser step (or a skipped step); the step's metrics."""
        c = self.config
        if self.captured_step is not None:
            return self.captured_step()
        metrics = self._meta_step(self.train_source.sample(c.optim.meta_batch))
        if c.run.skip_nonfinite and not self._finite(metrics):  # read now: this step is skipped
            self.skipped += 1
            self.learner.zero_grad()
            return metrics
        apply_meta_gradient(self.learner, self.optimizer, c.optim.grad_clip)
        return metrics

    def _summary(self, stopped_by_budget: bool = False) -> TrainSummary:
        stale = 0
        if self.status == "trained" and self.resume:
            stale = sum(e.status == "stale" for e in list_evaluations(self.run_dir))
        c = self.config
        cut = None
        if stopped_by_budget and c.spec.optimizer.spans_iterations and self.step < c.optim.iterations:
            lr = float(self.optimizer.param_groups[0]["lr"])
            cut = (f"the time budget stopped {c.algo}'s schedule ({c.spec.optimizer.description}) at step "
                   f"{self.step} of {c.optim.iterations}, its learning rate at {lr:.3g}; to complete it within "
                   f"this budget, train with --iterations {self.step}")
        return TrainSummary(self.run_dir, self.step, self.elapsed, self.best_val, self.best_step,
                            stopped_by_budget, self.skipped, len(self.bad_images), self.status,
                            c.optim.iterations, c.run.time_budget, stale, cut)

    def _close(self, committed: bool) -> None:
        """Release the run directory; a staged run that never wrote a checkpoint is discarded."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self.files is not None:
            if not committed:
                self.files.discard()
            self.files.release()

    # ---- the loop -------------------------------------------------------------
    def fit(self) -> TrainSummary:
        if self.status != "trained":
            return self._summary()
        c = self.config
        # Python delivers signals to the main thread only: a run in another thread (a notebook's or an app's
        # worker) leaves them to the main thread's handlers, and its caller stops it
        in_main_thread = threading.current_thread() is threading.main_thread()
        old_handlers = ({s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                        if in_main_thread else {})
        if self._tensorboard_class is not None:
            self._tensorboard = self._tensorboard_class(log_dir=str(self.files.file(TENSORBOARD_DIR)))
        start = time.perf_counter() - self.elapsed
        #: (step, metrics as device scalars, lr, seconds) of the steps not yet read (`_read_metrics`)
        self._queued: list = []
        #: the loss and accuracy of the last step read, and its number (the bar shows them)
        self._last_metrics: Optional[Dict[str, float]] = None
        #: this process's validations and the seconds they took (the bar's ETA counts the ones to come)
        self.validations, self.validation_seconds = 0, 0.0
        last_save = time.perf_counter()
        stopped_by_budget = False
        budget = None if c.run.time_budget is None else 60 * c.run.time_budget
        bar = Progress(f"{c.algo}/{self.engine}", c.optim.iterations, self.step, self.elapsed,
                       budget_seconds=budget, enabled=self.progress, log_every=c.run.log_every)
        forecast = None if budget is None or not c.spec.optimizer.spans_iterations else \
            ScheduleCutForecast(c.optim.iterations, budget, after_seconds=min(60.0, 0.1 * budget))
        try:
            if self.validation_pending:  # a signal stopped this step's validation: it runs first
                self._validate_and_keep_best()
                self.elapsed = time.perf_counter() - start
                self._save_or_stop(due=True)
                last_save = time.perf_counter()
                stopped_by_budget = budget is not None and self.elapsed >= budget
            while self.step < c.optim.iterations and not stopped_by_budget:
                metrics = self._train_step()  # device scalars: read in _read_metrics, every few steps
                lr = self.optimizer.param_groups[0]["lr"]
                lr = lr.clone() if isinstance(lr, torch.Tensor) else lr  # a device tensor: read with the metrics
                with warnings.catch_warnings():
                    # a skipped step advances the schedule without an optimiser step, on purpose
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    self.scheduler.step()
                self.step += 1
                self.elapsed = time.perf_counter() - start
                self._queued.append((self.step, metrics, lr, round(self.elapsed, 3)))

                out_of_time = budget is not None and self.world.any(self.elapsed >= budget)  # one clock for all ranks
                finished = self.step >= c.optim.iterations or out_of_time
                validate = self.step % c.run.val_every == 0 or finished
                minutes = c.run.checkpoint_minutes
                due = (self.step % c.run.checkpoint_every == 0 or finished
                       or (minutes is not None and time.perf_counter() - last_save >= 60 * minutes))
                # read before anything is validated or saved (stops at a non-finite loss); under torchrun
                # every step, so that every rank stops at the same one (the metrics are host floats there);
                # on a CPU every step too (no device to wait for), so the bar shows this step's loss
                if (validate or due or self.on_step is not None or self.step % c.run.log_every == 0
                        or self.world.distributed or self.device.type == "cpu"):
                    self._read_metrics()
                if validate:
                    self._validate_and_keep_best()
                    self.elapsed = time.perf_counter() - start  # the validation's time is the run's too
                    if budget is not None and not out_of_time:
                        out_of_time = self.world.any(self.elapsed >= budget)
                        due = due or out_of_time
                last = self._last_metrics
                read_at = "" if last is None or last["step"] == self.step else f" (step {last['step']})"
                bar.update(self.step, self.elapsed, {
                    "loss": "-" if last is None else f"{last['loss']:.3f}{read_at}",
                    "acc": "-" if last is None else f"{last['accuracy']:.1f}%",
                    "best val": "-" if self.best_val is None else f"{self.best_val:.2f}%"},
                    paused=self.validation_seconds, pauses_ahead=self._validation_seconds_ahead())
                near = None if forecast is None else forecast.check(self.step, self.elapsed)
                if near is not None:
                    bar.note(f"note: at this pace the time budget ends the run near step {near} of "
                             f"{c.optim.iterations}, before {c.algo}'s schedule ({c.spec.optimizer.description}) "
                             f"is through; to complete it within the budget: Ctrl-C, then `l2l-app train --resume "
                             f"{self.run_dir} --iterations {near}`")
                if self._save_or_stop(due):
                    last_save = time.perf_counter()
                if out_of_time:
                    stopped_by_budget = True
                    break
        finally:
            bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            # a run that ends (fails, or is stopped) before any checkpoint leaves nothing behind: a new
            # run's folders are removed, a staged --overwrite is discarded and the old run kept
            self._close(committed=self.resume or self.wrote_checkpoint)
        return self._summary(stopped_by_budget)

    def _save_or_stop(self, due: bool) -> bool:
        """Write checkpoints/last.pt if `due` or a signal arrived, then stop (`Interrupted`) if one did.
        The signal is read once, after the step's metrics and any validation: one that arrived during
        them stops the run now, with this step saved (a later one: after the next step).  True: saved."""
        stop = self._stop_signal
        if stop is not None and self.files is not None and self.files.staged:
            raise Interrupted(f"stopped by signal {stop} after step {self.step}, before this --overwrite run's first "
                              f"checkpoint: the run in {self.run_dir} is kept as it was, and the new one discarded",
                              stop)
        if due or stop is not None:
            self._read_metrics()  # already read, unless only the signal asks for this checkpoint
            self.save("last")
        if stop is not None:
            when = (f"during the validation at step {self.step} (a resume runs it first)" if self.validation_pending
                    else f"after step {self.step}")
            raise Interrupted(f"stopped by signal {stop} {when}; checkpoint saved; continue with "
                              f"`l2l-app train --resume {self.run_dir}`", stop)
        return due

    @staticmethod
    def _finite(metrics: Dict[str, Any]) -> bool:
        return math.isfinite(float(metrics["loss"]))

    def _read_metrics(self) -> None:
        """Read the queued steps' metrics (device scalars: one host synchronisation for all of them),
        log one row per step, and stop at the first non-finite loss -- before any validation or
        checkpoint can see its parameters (unless --skip-nonfinite, which checks every step)."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        device = self.device
        tensors = [t for _, m, lr, _ in queued
                   for t in (m["loss"], m["accuracy"], *([lr] if isinstance(lr, torch.Tensor) else []))]
        values = iter(torch.stack([torch.as_tensor(t, dtype=torch.float64, device=device) for t in tensors]).tolist())
        for step, _, lr, seconds in queued:
            loss, accuracy = next(values), 100.0 * next(values)
            lr = next(values) if isinstance(lr, torch.Tensor) else lr
            if not math.isfinite(loss) and not self.config.run.skip_nonfinite:
                last = self.run_dir / CHECKPOINT_DIR / "last.pt"
                if self.checkpoint_dir.joinpath("last.pt").is_file():
                    kept = f"keeping the last good checkpoint in {last}"
                elif self.files.staged:
                    kept = f"no checkpoint had been written yet; the run that was in {self.run_dir} is left as it was"
                elif not (self.resume or self.wrote_checkpoint):
                    kept = f"no checkpoint had been written yet, so {self.run_dir} is removed"
                else:
                    kept = "no checkpoint had been written yet"
                raise NonFiniteLossError(
                    f"loss became {loss} at step {step}; stopped, {kept} "
                    f"(lower --meta-lr/--inner-lr, or pass --skip-nonfinite to skip such steps)")
            self._log({"kind": "train", "step": step, "loss": loss, "accuracy": accuracy, "lr": float(lr),
                       "time": seconds})
            self._last_metrics = {"loss": loss, "accuracy": accuracy, "step": step}
            if self.on_step is not None:
                self.on_step(step, {"loss": loss, "accuracy": accuracy / 100.0})

    def _validation_seconds_ahead(self) -> float:
        """The validations still to come before --iterations (every --val-every steps, and one at the
        end), times the mean of this process's so far (0 before the first: not known yet)."""
        c = self.config
        if not self.validations or self.step >= c.optim.iterations:
            return 0.0
        ahead = c.optim.iterations // c.run.val_every - self.step // c.run.val_every
        ahead += 1 if c.optim.iterations % c.run.val_every else 0
        return ahead * self.validation_seconds / self.validations

    def _validate_and_keep_best(self) -> None:
        self.world.check_parameters(self.learner.meta_parameters(), self.step)  # torchrun: ranks still agree
        began = time.perf_counter()
        try:
            result = self.validate_now()
        except EvaluationStopped:
            self.validation_pending = True  # saved with the checkpoint the signal asks for
            return
        finally:
            self.validation_seconds += time.perf_counter() - began
        self.validations += 1
        self.validation_pending = False
        self._log({"kind": "val", "step": self.step, "val_accuracy": result.mean,
                   "val_ci95": result.ci95, "time": round(self.elapsed, 3)})
        if self.best_val is None or result.mean > self.best_val:
            self.best_val, self.best_step = result.mean, self.step
            self.save("best")


#: the settings `train --resume` may change; everything else would make the resumed run a different one
RESUME_CHANGEABLE = ("iterations", "time_budget", "device", "cuda_graph", "cudnn_benchmark", "conv_impl", "val_every",
                     "checkpoint_every", "checkpoint_minutes", "log_every", "tensorboard")


def resume_config(run_dir: Path, overrides: Dict[str, Any]) -> ExperimentConfig:
    """The saved config of `run_dir` with the few settings a resumed run may change.

    A flag that repeats the run's own value is accepted (it changes nothing).
    """
    check_names(overrides)  # an unknown name is that, not a setting a resume may not change
    check_run_target(Path(run_dir), "resume")
    saved = load_config(run_dir)
    current = saved.flat()
    if overrides.get("data_root") is not None:
        overrides = {**overrides, "data_root": absolute_root(overrides["data_root"])}
    changed = [name for name, value in overrides.items() if name not in current or current[name] != value]
    moved = data_moved(saved)  # the run's data is gone from where it was read: --data-root says where it is now
    fixed = [name for name in changed if name not in RESUME_CHANGEABLE and not (name == "data_root" and moved)]
    if fixed:
        allowed = ", ".join("--" + n.replace("_", "-") for n in RESUME_CHANGEABLE)
        name = fixed[0]
        was = current.get(name)
        raise ConfigError(f"cannot change --{name.replace('_', '-')} when resuming (the run has {was!r}); "
                          f"only {allowed} may change; start a new run with --out for other settings")
    return with_overrides(saved, {name: overrides[name] for name in changed})


__all__ = ["Trainer", "TrainSummary", "NonFiniteLossError", "Interrupted", "SplitData"]
