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

import numbers
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Hashable, List, Optional, Sequence, Union

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


# ------------------------------------------------------------------------------ argument checks
def _got(value: Any) -> str:
    """'int 5' / 'NoneType None': what a caller passed, for messages."""
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 60 else shown[:57] + '...'}"


def _path(call: str, name: str, value: Any, optional: bool = False) -> Optional[Path]:
    """`value` as a Path (None stays None when `optional`); ConfigError for anything but str or os.PathLike."""
    if value is None and optional:
        return None
    if isinstance(value, str) and value.strip():
        return Path(value)
    if isinstance(value, os.PathLike) and not isinstance(value, bytes):
        return Path(value)
    raise ConfigError(f"{call}: {name} must be a path (a str or pathlib.Path), got {_got(value)}")


def _text(call: str, name: str, value: Any, optional: bool = False) -> Optional[str]:
    """`value` checked to be a str (or None when `optional`)."""
    if (value is None and optional) or isinstance(value, str):
        return value
    return _refuse(call, name, value, "text (a str)" + (" or None" if optional else ""))


def _whole(call: str, name: str, value: Any) -> Optional[int]:
    """`value` checked to be a whole number (not a bool) or None; returned as an int."""
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return _refuse(call, name, value, "a whole number or None")


def _flag(call: str, name: str, value: Any) -> bool:
    """`value` checked to be True or False."""
    if isinstance(value, bool):
        return value
    return _refuse(call, name, value, "True or False")


def _refuse(call: str, name: str, value: Any, wanted: str) -> Any:
    raise ConfigError(f"{call}: {name} must be {wanted}, got {_got(value)}")


def _items(call: str, name: str, value: Any) -> None:
    """Support or query images: a tensor, a path / bytes / PIL image, or a list of them."""
    from PIL import Image

    import torch

    if isinstance(value, (torch.Tensor, str, bytes, os.PathLike, Image.Image)):
        return
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return
    _refuse(call, name, value, "a list of image paths or PIL images, or a tensor of images")


def _labels(call: str, value: Any) -> None:
    """Support labels: a list of class names (one per support image).  None, text or a path go on to
    `classify`, which points to `predict_folder`."""
    if value is not None and not isinstance(value, (Iterable, os.PathLike)):
        _refuse(call, "support_labels", value, "a list of class names, one per support image")


class Run:
    """A trained run, loaded from its directory: the model of checkpoint `checkpoint` with the
    run's config and input preprocessing, on `device` (None: the run's setting, 'auto').

    `summary`: the training summary when this Run came from `train` (None when loaded).
    """

    def __init__(self, path: PathLike, checkpoint: str = "best", device: Optional[str] = None, *,
                 summary: Optional[TrainSummary] = None,
                 temporary: Optional[tempfile.TemporaryDirectory] = None) -> None:
        self.path = _path("Run()", "the run directory", path)
        self.checkpoint = _text("Run()", "checkpoint", checkpoint)
        device = _text("Run()", "device", device, optional=True)
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
        call = "Run.evaluate()"
        episodes, ways, shots, queries, seed = (_whole(call, name, value) for name, value in (
            ("episodes", episodes), ("ways", ways), ("shots", shots), ("queries", queries), ("seed", seed)))
        split, dataset = _text(call, "split", split), _text(call, "dataset", dataset, optional=True)
        root = _path(call, "data_root", data_root, optional=True)
        progress, save = _flag(call, "progress", progress), _flag(call, "save", save)
        self._check_files("evaluate")
        return evaluate_run(self.path, split=split, episodes=episodes, checkpoint=self.checkpoint, seed=seed,
                            device=self.device, progress=progress, ways=ways, shots=shots, queries=queries,
                            dataset=dataset, data_root=None if root is None else str(root), save=save)

    def predict(self, support_images: Items, support_labels: Sequence[Hashable], query_images: Items,
                query_names: Optional[Sequence[str]] = None) -> Predictions:
        """Classify `query_images` by the labelled `support_images` (a few per class).

        Images: a list of paths or PIL images (decoded like the training images), or a tensor:
        uint8 [N, C, S, S] pixels as the run stores them (Omniglot's inverted), float pixels / 255
        [N, C, S, S], or float [N, D] for a run on feature vectors.  Labels: any hashable class
        names, one per support image; the result speaks them (`.predicted`, `.classes`,
        `.probabilities` float64 [Nq, ways], `.table()`, `.to_csv(path)`, `.to_json()`).
        """
        call = "Run.predict()"
        _items(call, "support_images", support_images)
        _labels(call, support_labels)
        _items(call, "query_images", query_images)
        if query_names is not None and (isinstance(query_names, (str, bytes)) or not isinstance(query_names, Iterable)):
            _refuse(call, "query_names", query_names, "a list of names, one per query image, or None")
        info = run_info(self._experiment, self.path, self._loaded)
        return classify(self._experiment, support_images, support_labels, query_images, query_names, info)

    def predict_folder(self, support_dir: PathLike, queries: Sequence[PathLike]) -> Predictions:
        """`l2l-app predict`: the classes are the sub-folders of `support_dir` (a few images each,
        sorted by name), the queries image files or folders of images (recursively); rows named by path."""
        call = "Run.predict_folder()"
        support_dir = _path(call, "support_dir", support_dir)
        if isinstance(queries, (str, os.PathLike)):
            queries = [queries]  # one image file or folder
        if isinstance(queries, (bytes, Mapping)) or not isinstance(queries, Iterable):
            _refuse(call, "queries", queries, "a list of image files or folders")
        query_list: List[Path] = [_path(call, "each query", q) for q in queries]  # type: ignore[misc]
        support, labels, query_paths = folder_inputs(self.config, self.preprocessing, support_dir, query_list)
        info = run_info(self._experiment, self.path, self._loaded)
        return classify(self._experiment, support, labels, query_paths, [str(q) for q in query_paths], info,
                        class_word="class folders")

    def export(self, out: PathLike, format: str = "torchscript", overwrite: bool = False) -> ExportResult:
        """`l2l-app export`: this run's network (its checkpoint) to the file `out` as 'torchscript',
        'state-dict' or 'onnx', with the JSON sidecar `out`.json; checked against the run's model before
        anything is written; an existing file is replaced only with `overwrite`."""
        from .export import export_run
        call = "Run.export()"
        out_path = _path(call, "out", out)
        format, overwrite = _text(call, "format", format), _flag(call, "overwrite", overwrite)
        self._check_files("export")
        return export_run(self.path, out_path, format, self.checkpoint, overwrite)

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
    _check_train_arguments(config, out, recipe, progress, overwrite, resume)
    if resume is not None:
        if config is not None or recipe is not None or out is not None or overwrite:
            raise ConfigError("train(resume=RUN_DIR) continues that run with its own settings; drop config=, "
                              "recipe=, out= and overwrite=")
        resume_dir = _path("train()", "resume", resume)
        trainer = Trainer(resume_config(resume_dir, settings), resume_dir, resume=True, progress=progress)
        return Run(resume_dir, "best", summary=trainer.fit())
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


def _check_train_arguments(config: Any, out: Any, recipe: Any, progress: Any, overwrite: Any, resume: Any) -> None:
    """`train()`'s own arguments checked for type (the settings are checked by `compose`)."""
    call = "train()"
    if isinstance(config, Mapping):
        shown = ", ".join(f"{k}={v!r}" for k, v in list(config.items())[:3]) or "ways=5"
        raise ConfigError(f"{call}: got a dict as its config argument; pass settings as keywords, e.g. "
                          f"l2l_app.train({shown}) or l2l_app.train(**settings)")
    if config is not None and not isinstance(config, (ExperimentConfig, str, os.PathLike)):
        _refuse(call, "config", config, "an ExperimentConfig or the path of a TOML/JSON settings file (settings "
                "go as keywords: train(ways=5))")
    _path(call, "out", out, optional=True)
    _path(call, "resume", resume, optional=True)
    _text(call, "recipe", recipe, optional=True)
    _flag(call, "progress", progress)
    _flag(call, "overwrite", overwrite)


def load(run_dir: PathLike, checkpoint: str = "best", device: Optional[str] = None) -> Run:
    """The trained run in `run_dir` (checkpoint 'best' or 'last'), on `device` (None: the run's)."""
    call = "load()"
    return Run(_path(call, "run_dir", run_dir), _text(call, "checkpoint", checkpoint),
               _text(call, "device", device, optional=True))


__all__ = ["PredictionResult", "Predictions", "Run", "load", "train"]
