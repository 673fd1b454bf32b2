"""The Python API, for notebooks and scripts: train, load, evaluate, predict, export.

    import l2l_app
    run = l2l_app.train(algo="protonet", iterations=100)        # a temporary run directory
    print(run.evaluate(episodes=100))                            # 'accuracy ± CI (95% CI, 100 episodes)'
    result = run.predict(support_images, ["cat", "dog", ...], query_images)
    print(result.table()); result.predicted; result.probabilities

A thin layer over the library: `train` composes the config like `l2l-app train` (the same flat
setting names as the flags: `algo`, `iterations`, `data_root`, ...) and runs the one `Trainer`;
`Run` wraps `Experiment.from_run` (the trained model with its saved preprocessing); `evaluate`
is `evaluation.evaluate_run` and `predict` is `l2l_app.predict.classify`, the core of `l2l-app predict`.

No files are written unless asked: without `out`, `train` works in a temporary directory that is
removed when the `Run` is closed (`run.close()`, a `with` block) or garbage-collected (the
decoded-data cache stays, as the CLI's does).
`Run.evaluate(save=True)` also writes its result file into the run directory, like `l2l-app eval`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Hashable, Optional, Sequence, Union

from torch import nn

from .config import ExperimentConfig, compose, validate, with_overrides
from .data import Preprocessing, SplitData
from .errors import ConfigError
from .evaluation import EvalResult, evaluate_run
from .experiment import Experiment
from .export import ExportResult
from .learner import MetaLearner
from .predict import Items, Predictions, classify, folder_inputs, run_info
from .trainer import Trainer, TrainSummary, resume_config

PathLike = Union[str, Path]
#: what `Run.predict` returns (the same class as `l2l-app predict`'s)
PredictionResult = Predictions


class Run:
    """A trained run, loaded from its directory: the model of checkpoint `checkpoint` with the
    run's config and input preprocessing, on `device` (None: the run's setting, 'auto').

    `summary`: the training summary when this Run came from `train` (None when loaded).
    """

    def __init__(self, path: PathLike, checkpoint: str = "best", device: Optional[str] = None, *,
                 summary: Optional[TrainSummary] = None,
                 temporary: Optional[tempfile.TemporaryDirectory] = None) -> None:
        self.path = Path(path)
        self.checkpoint = checkpoint
        self.summary = summary
        self._temporary = temporary  # removed with it (close() or garbage collection)
        self._experiment, self._loaded = Experiment.from_run(self.path, checkpoint, device=device)

    # ---- what was loaded ------------------------------------------------------------------
    @property
    def config(self) -> ExperimentConfig:
        return self._experiment.config

    @property
    def model(self) -> nn.Module:
        return self._experiment.model

    @property
    def learner(self) -> MetaLearner:
        return self._experiment.learner

    @property
    def preprocessing(self) -> Preprocessing:
        """How inputs are decoded and normalised (`Preprocessing.image_pixels`, `to_input`)."""
        return self._experiment.preprocessing

    @property
    def device(self) -> str:
        return str(self._experiment.device)

    @property
    def step(self) -> int:
        """The training step of the loaded checkpoint."""
        return int(self._loaded["step"])

    @property
    def temporary(self) -> bool:
        """Whether the run directory is a temporary one, removed by `close()`."""
        return self._temporary is not None

    # ---- using it -------------------------------------------------------------------------
    def load_split(self, split: str = "test") -> SplitData:
        """One split of the run's dataset as the run stores it (`SplitData.images` uint8 [N, C, S, S])."""
        return self._experiment.load_split(split, progress=False)

    def evaluate(self, episodes: Optional[int] = None, split: str = "test", *, ways: Optional[int] = None,
                 shots: Optional[int] = None, queries: Optional[int] = None, seed: Optional[int] = None,
                 dataset: Optional[str] = None, data_root: Optional[PathLike] = None,
                 progress: bool = False, save: bool = False) -> EvalResult:
        """Mean accuracy and 95% CI over fixed-seed episodes, exactly as `l2l-app eval` computes it.
        None: the run's own setting.  `save`: also write the result file into the run directory (as
        `l2l-app eval` does); by default nothing is written."""
        self._check_files("evaluate")
        return evaluate_run(self.path, split=split, episodes=episodes, checkpoint=self.checkpoint, seed=seed,
                            device=self.device, progress=progress, ways=ways, shots=shots, queries=queries,
                            dataset=dataset, data_root=None if data_root is None else str(data_root), save=save)

    def predict(self, support_images: Items, support_labels: Sequence[Hashable], query_images: Items,
                query_names: Optional[Sequence[str]] = None) -> Predictions:
        """Classify `query_images` by the labelled `support_images` (a few per class).

        Images: a list of paths or PIL images (decoded like the training images), or a tensor:
        uint8 [N, C, S, S] pixels as the run stores them (Omniglot's inverted), float pixels / 255
        [N, C, S, S], or float [N, D] for a run on feature vectors.  Labels: any hashable class
        names, one per support image; the result speaks them (`.predicted`, `.classes`,
        `.probabilities` float64 [Nq, ways], `.table()`, `.to_csv(path)`, `.to_json()`).
        """
        info = run_info(self._experiment, self.path, self._loaded)
        return classify(self._experiment, support_images, support_labels, query_images, query_names, info)

    def predict_folder(self, support_dir: PathLike, queries: Sequence[PathLike]) -> Predictions:
        """`l2l-app predict`: the classes are the sub-folders of `support_dir` (a few images each,
        sorted by name), the queries image files or folders of images (recursively); rows named by path."""
        support, labels, query_paths = folder_inputs(self.config, self.preprocessing, support_dir, queries)
        info = run_info(self._experiment, self.path, self._loaded)
        return classify(self._experiment, support, labels, query_paths, [str(q) for q in query_paths], info,
                        class_word="class folders")

    def export(self, out: PathLike, format: str = "torchscript", overwrite: bool = False) -> ExportResult:
        """`l2l-app export`: this run's network (its checkpoint) to the file `out` as 'torchscript',
        'state-dict' or 'onnx', with the JSON sidecar `out`.json; checked against the run's model before
        anything is written; an existing file is replaced only with `overwrite`."""
        from .export import export_run
        self._check_files("export")
        return export_run(self.path, Path(out), format, self.checkpoint, overwrite)

    def _check_files(self, what: str) -> None:
        if self._temporary is not None and not self.path.is_dir():
            raise ConfigError(f"cannot {what}: this Run was closed and its temporary run directory removed; train "
                              f"again, or pass out= to train() to keep the run")

    # ---- the temporary directory ----------------------------------------------------------
    def close(self) -> None:
        """Remove the temporary run directory (nothing for a run in `out`); the loaded model stays usable
        for `predict`."""
        if self._temporary is not None:
            self._temporary.cleanup()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "temporary directory" if self.temporary else "directory"
        return (f"Run({self.config.algo_label}, {self.checkpoint} checkpoint at step {self.step}, {where} "
                f"{self.path}, {self.device})")


def train(config: Union[ExperimentConfig, PathLike, None] = None, *, out: Optional[PathLike] = None,
          recipe: Optional[str] = None, progress: bool = False, overwrite: bool = False,
          resume: Optional[PathLike] = None, **settings: Any) -> Run:
    """Meta-train a model and return the trained `Run` (its best checkpoint).

    config: an `ExperimentConfig`, or a TOML/JSON settings file like `l2l-app train --config`
    (None: the defaults); recipe: a published preset (`l2l-app recipes`); settings: flat setting
    names as the CLI's flags use them (algo="protonet", iterations=100, data_root=..., hidden=32).
    Precedence as on the command line: defaults < recipe < config file < settings.
    out: the run directory to create (None: a temporary one, removed when the Run is closed).
    resume: continue the run in that directory from its last checkpoint (`l2l-app train --resume`:
    settings may change only what a resume may, e.g. iterations=, time_budget=).
    Bad settings raise ConfigError/DataError (one line) before anything is written.
    """
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
    if resume is not None:
        if config is not None or recipe is not None or out is not None or overwrite:
            raise ConfigError("train(resume=RUN_DIR) continues that run with its own settings; drop config=, "
                              "recipe=, out= and overwrite=")
        trainer = Trainer(resume_config(Path(resume), settings), Path(resume), resume=True, progress=progress)
        return Run(resume, "best", summary=trainer.fit())
    if isinstance(config, ExperimentConfig):
        if recipe is not None:
            raise ConfigError("train(): a config object already holds every setting; pass recipe= with keyword "
                              "settings or a config file, not with an ExperimentConfig")
        composed = validate(with_overrides(config, settings))
    else:
        composed = compose(settings, recipe, config)
    temporary = tempfile.TemporaryDirectory(prefix="l2l_app-run-") if out is None else None
    run_dir = Path(temporary.name) / "run" if temporary is not None else Path(out)
    try:
        trainer = Trainer(composed, run_dir, overwrite=overwrite, progress=progress)
        summary = trainer.fit()
        return Run(run_dir, "best", summary=summary, temporary=temporary)
    except BaseException:
        if temporary is not None:
            temporary.cleanup()
        raise


def load(run_dir: PathLike, checkpoint: str = "best", device: Optional[str] = None) -> Run:
    """The trained run in `run_dir` (checkpoint 'best' or 'last'), on `device` (None: the run's)."""
    return Run(run_dir, checkpoint, device)


__all__ = ["PredictionResult", "Predictions", "Run", "load", "train"]
