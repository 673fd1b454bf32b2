"""Classify new images with a trained run, given a few labelled examples of each new class.

`classify` is the one core (`Run.predict` of the Python API and `l2l-app predict` both call it):
the support items and their labels, and the query items, become the run's stored form
(`Preprocessing.image_pixels`: uint8 [C, S, S], decoded, resized and inverted exactly like the
training images), then model input (`Preprocessing.to_input`), then `learner.predict` -- ProtoNet
compares with class prototypes, the MAML family and Reptile adapt on the support set with the
run's test-time settings -- and the logits [Nq, ways] become probabilities (softmax).

`predict_folder` reads a support folder (one sub-folder of images per class; classes in sorted
folder-name order) and query files or folders (every image inside, recursively, sorted).

Items (support or query): a list of paths, raw bytes or PIL images of any mode and size; or a
tensor as the run stores its data: uint8 [N, C, S, S] pixels (`SplitData.images`; Omniglot's are
inverted, strokes 255), float [N, C, S, S] pixels / 255 in [0, 1], or, for a run on feature
vectors, float [N, D].

Queries are classified together, like one evaluation episode's queries: models whose batch norm
uses batch statistics (`protocol['batchnorm']` of an evaluation) normalise with the statistics of
the support and query images together, so one query's probabilities can depend on the others.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import torch

from .data import images
from .data.types import IMAGES
from .errors import DataError
from .fileio import atomic_write, nearest_existing
from .rundir import check_outside

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .data import Preprocessing
    from .experiment import Experiment

#: the columns of `Predictions.to_csv`, in order
CSV_COLUMNS = ("image", "predicted_class", "probability", "next_class", "next_probability")

PathLike = Union[str, "os.PathLike[str]"]
#: one image: a path, raw bytes or a PIL image
Item = Union[PathLike, bytes, Any]
Items = Union[torch.Tensor, Sequence[Item]]


# ----------------------------------------------------------------------------- the result
@dataclass
class Predictions:
    """Predictions for Nq query images over the support set's classes.

    images: the query names (paths, or 'query 0', 'query 1', ...); classes: the class names in
    logit order; probabilities: float64 [Nq, ways] (softmax of the logits, rows sum to 1);
    ranking: int64 [Nq, ways], class indices best first (ties: the lower index first, as argmax);
    info: where the predictions come from (run, checkpoint, step, input preprocessing);
    notes: what the caller should know about the inputs (e.g. colour photos given to a grey run).
    """

    images: List[str]
    classes: List[Hashable]
    probabilities: torch.Tensor
    ranking: torch.Tensor
    info: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def predicted(self) -> List[Hashable]:
        """The predicted class of each query."""
        return [self.classes[int(i)] for i in self.ranking[:, 0]]

    @property
    def probability(self) -> List[float]:
        """The probability of each query's predicted class."""
        return self.probabilities.gather(1, self.ranking[:, :1]).flatten().tolist()

    def rows(self) -> List[Dict[str, Any]]:
        """One dict per query: CSV_COLUMNS plus 'probabilities' (per class, in `classes` order)."""
        out = []
        for name, probs, rank in zip(self.images, self.probabilities.tolist(), self.ranking.tolist()):
            best, second = rank[0], rank[1]
            out.append({"image": name, "predicted_class": self.classes[best], "probability": probs[best],
                        "next_class": self.classes[second], "next_probability": probs[second],
                        "probabilities": probs})
        return out

    def to_json(self, indent: Optional[int] = 2) -> str:
        """{**info, 'notes': [...], 'classes': [...], 'predictions': rows()} as JSON text (class
        names that JSON cannot hold are written with str())."""
        return json.dumps({**self.info, "notes": self.notes, "classes": self.classes, "predictions": self.rows()},
                          indent=indent, default=str)

    def to_csv(self, path: PathLike) -> Path:
        """Write CSV_COLUMNS, one row per query, atomically to `path` (its folders created); returns the path."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.rows():
            writer.writerow([row["image"], row["predicted_class"], f"{row['probability']:.6f}",
                             row["next_class"], f"{row['next_probability']:.6f}"])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
        return path

    def table(self) -> str:
        """An aligned text table for the terminal: image, predicted class, probability, next best."""
        header = ("image", "predicted class", "probability", "next best")
        body = [(r["image"], str(r["predicted_class"]), f"{100 * r['probability']:.1f}%",
                 f"{r['next_class']} ({100 * r['next_probability']:.1f}%)") for r in self.rows()]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                         for row in [header, *body])

    def __str__(self) -> str:
        return self.table()


# ----------------------------------------------------------------------------- the core
def default_query_names(queries: Items, count: int) -> List[str]:
    """The queries' paths where they are paths, else 'query 0', 'query 1', ... (PIL images, bytes, a tensor)."""
    if isinstance(queries, torch.Tensor):
        return [f"query {i}" for i in range(count)]
    return [str(q) if isinstance(q, (str, os.PathLike)) else f"query {i}" for i, q in enumerate(queries)]


def classify(experiment: "Experiment", support: Items, labels: Sequence[Hashable], queries: Items,
             query_names: Optional[Sequence[str]] = None, info: Optional[Dict[str, Any]] = None,
             class_word: str = "classes") -> Predictions:
    """Predict the class of each query from the labelled support set, with `experiment`'s learner.

    support: Ns items, labels: Ns class names (any hashable; the classes are ordered by first
    appearance), queries: Nq items (see the module docstring for what an item is).
    `class_word` names the classes in messages ('class folders' for `predict_folder`).
    DataError (one line) for an empty or mismatched input, fewer than 2 classes, or a number of
    classes other than the N of a model with an N-way output layer (`AlgorithmSpec.head`).
    """
    x = experiment
    if labels is None or isinstance(labels, (str, os.PathLike)):
        raise DataError("support labels: give one class name per support image (for a folder of class folders "
                        "use Run.predict_folder(support_dir, queries))")
    labels = list(labels)
    try:
        classes = list(dict.fromkeys(labels))
    except TypeError as e:
        raise DataError(f"support labels must be hashable class names (str, int, ...): {e}") from None
    support_x = stored_items(x.preprocessing, support, "support")
    if len(labels) != support_x.shape[0]:
        raise DataError(f"{support_x.shape[0]} support images but {len(labels)} support labels; give one label "
                        "per support image")
    check_class_count(x.config, len(classes), class_word)
    query_x = stored_items(x.preprocessing, queries, "query")
    names = default_query_names(queries, query_x.shape[0]) if query_names is None else list(query_names)
    if len(names) != query_x.shape[0]:
        raise DataError(f"{query_x.shape[0]} query images but {len(names)} query names; give one name per query")
    index = {c: i for i, c in enumerate(classes)}
    support_y = torch.tensor([index[c] for c in labels], dtype=torch.long)
    # model input made on the CPU, then moved: what the evaluation sampler does (bit-identical inputs)
    to_input = x.preprocessing.to_input
    with torch.enable_grad():  # the MAML family adapts by gradient steps, even inside a caller's no_grad()
        logits = x.learner.predict(to_input(support_x).to(x.device), support_y.to(x.device),
                                   to_input(query_x).to(x.device), len(classes))
    logits = logits.detach().cpu()                                        # float32 [Nq, ways]
    ranking = torch.argsort(logits, dim=1, descending=True, stable=True)  # best first, ties as argmax
    probabilities = torch.softmax(logits.double(), dim=1)
    notes = [note] if (note := colour_note(x, [support, queries])) else []
    return Predictions(names, classes, probabilities, ranking, dict(info or {}), notes)


def colour_note(experiment: "Experiment", item_lists: Sequence[Items]) -> Optional[str]:
    """A note when images that show colour are given to a run trained on grey images (which sees
    them in grey, unlike anything it was trained on); None otherwise, and for tensors."""
    pre = experiment.preprocessing
    if pre.kind != IMAGES or pre.channels != 1:
        return None
    given = [item for items in item_lists if not isinstance(items, torch.Tensor) for item in item_list(items)]
    coloured = sum(images.has_colour(item) for item in given)
    if not coloured:
        return None
    return (f"{coloured} of {len(given)} images are in colour, but this run was trained on grey images "
            f"({experiment.config.data.dataset}) and sees them in grey; for photos, train on colour images "
            "(e.g. --dataset folder with your own class folders) for better predictions")


def stored_items(pre: "Preprocessing", items: Items, role: str) -> torch.Tensor:
    """Items as the run stores its data: uint8 [N, C, S, S] (images) or float32 [N, D] (features).

    role: 'support' or 'query', for messages.  A single path or PIL image counts as a list of one.
    """
    if isinstance(items, torch.Tensor):
        return _stored_tensor(pre, items, role)
    items = item_list(items)
    if not items:
        raise DataError(f"no {role} images given; pass at least one")
    if pre.kind != IMAGES:
        raise DataError(f"this run was trained on {pre.describe()}; pass the {role} items as a float tensor "
                        f"[N, {pre.channels}], not images")
    return torch.stack([_pixels(pre, item, role) for item in items])


def item_list(items: Sequence[Item]) -> List[Item]:
    """Images as a list: a single path, bytes or PIL image counts as a list of one."""
    from PIL import Image

    if isinstance(items, (str, bytes, os.PathLike, Image.Image)):
        return [items]
    return list(items)


def _pixels(pre: "Preprocessing", item: Item, role: str) -> torch.Tensor:
    """`pre.image_pixels(item)`; an unreadable file's DataError keeps its 'what' and gets predict's fix."""
    try:
        return pre.image_pixels(item)
    except DataError as e:
        problem = str(e).split("; ")[0]  # the dataset loaders' fix (--skip-bad-images) does not apply here
        raise DataError(f"{problem}; replace or remove this {role} image") from None


def _stored_tensor(pre: "Preprocessing", t: torch.Tensor, role: str) -> torch.Tensor:
    """A tensor of items checked against the run's input shape; float pixels in [0, 1] -> uint8."""
    shape = tuple(pre.input_shape)
    wanted = f"[N, {', '.join(map(str, shape))}]"
    if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape or t.shape[0] == 0:
        how = ("resize the images to the run's size or pass paths or PIL images, which are resized"
               if pre.kind == IMAGES else "give vectors of the run's length")
        raise DataError(f"{role} tensor has shape {list(t.shape)}, but this run takes {pre.describe()}: "
                        f"expected {wanted} with N >= 1; {how}")
    t = t.detach().cpu()
    if pre.kind != IMAGES:
        if not t.is_floating_point():
            raise DataError(f"{role} tensor is {t.dtype}; this run takes float feature vectors {wanted}")
        return t.float()
    if t.dtype == torch.uint8:
        return t
    if not t.is_floating_point():
        raise DataError(f"{role} tensor is {t.dtype}; pass uint8 pixels (0-255) or float pixels / 255 (0-1)")
    low, high = float(t.min()), float(t.max())
    if not (0.0 <= low and high <= 1.0):
        raise DataError(f"{role} tensor holds values from {low:g} to {high:g}; float images must be pixels / 255 "
                        "in [0, 1] (or pass uint8 pixels)")
    return torch.round(t.double() * 255.0).to(torch.uint8)


def check_class_count(config: "ExperimentConfig", count: int, class_word: str = "classes") -> None:
    """DataError unless the run of `config` can predict over `count` classes: at least 2, and exactly
    its N for a model with an N-way output layer."""
    if count < 2:
        raise DataError(f"the support set has {count} class{'' if count == 1 else 'es'}; a prediction needs at "
                        f"least 2 {class_word}")
    ways = config.task.ways
    if config.spec.head and count != ways:
        from .registry import ALGORITHMS

        free = " or ".join(name for name, spec in ALGORITHMS.items() if not spec.head)
        raise DataError(f"the support set has {count} {class_word}, but this {config.algo_label} model has a "
                        f"{ways}-way output layer; give exactly {ways} {class_word}, or use a {free} run "
                        "(no output layer) for any number of classes")


# ----------------------------------------------------------------------------- folders
def image_files(folder: Path) -> List[Path]:
    """Every image anywhere under `folder`, sorted by relative path (hidden and non-image files skipped)."""
    return images.image_files(folder)[0]


def support_classes(support_dir: PathLike) -> List[Tuple[str, List[Path]]]:
    """[(class name, its image files)] of a support folder, classes in sorted folder-name order.

    DataError when the folder is missing, a class folder holds no images, or there are fewer
    than 2 class folders.  Hidden folders and files directly in `support_dir` are ignored.
    """
    root = Path(support_dir)
    _check_folder(root, "--support", "a folder with one sub-folder of images per class")
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as e:
        raise DataError(f"cannot list --support {root}: {images.one_line(e)}; fix its permissions") from None
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    classes = []
    for folder in folders:
        found = image_files(folder)
        if not found:
            raise DataError(f"support class {folder.name!r} has no images in {folder} (images are files ending "
                            f"in {', '.join(images.IMAGE_EXTENSIONS)}; hidden files are ignored); add a few images of "
                            "the class or remove the folder")
        classes.append((folder.name, found))
    if len(classes) < 2:
        loose = sum(p.is_file() and (images.is_image(p.name) and not images.is_hidden(p.name)) for p in entries)
        note = (f"; the {loose} image(s) directly in it are not used, put each class's images in its own "
                "sub-folder") if loose else ""
        raise DataError(f"--support {root} holds {len(classes)} class folder(s){note}; give at least 2 "
                        "(one sub-folder of images per class)")
    return classes


def query_files(queries: Sequence[PathLike]) -> List[Path]:
    """The query images: each path an image file, or a folder whose images (recursively, sorted) are taken.
    An image named twice (a file inside a folder also given, a path repeated) is classified once, at its
    first place: a repeat would add a row and, with batch statistics, weigh on the other queries."""
    if isinstance(queries, (str, os.PathLike)):
        queries = [queries]
    if not queries:
        raise DataError("no --query given; pass an image file or a folder of images")
    out: List[Path] = []
    for q in map(Path, queries):
        if q.is_dir():
            found = image_files(q)
            if not found:
                raise DataError(f"--query folder {q} holds no images (files ending in {', '.join(images.IMAGE_EXTENSIONS)}"
                                "; hidden files are ignored); pass a folder with images or an image file")
            out.extend(found)
        elif q.is_file():
            out.append(q)
        else:
            raise DataError(f"--query {q} does not exist; pass an image file or a folder of images")
    seen: set = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def _check_folder(path: Path, option: str, what: str) -> None:
    if not path.exists():
        raise DataError(f"{option} {path} does not exist; pass {what}")
    if not path.is_dir():
        raise DataError(f"{option} {path} is a file, not a folder; pass {what}")


def check_predict_output(path: PathLike, overwrite: bool, run_dir: PathLike, support_dir: PathLike,
                         queries: Sequence[PathLike]) -> None:
    """`check_output_file`, and a DataError when `path` lies inside the run directory or is one of
    the input images (even with `overwrite`: those are not predict's to replace)."""
    check_output_file(path, overwrite)
    check_outside(Path(path), Path(run_dir), "--out", "the run directory")
    target = Path(path).resolve()
    inputs = [p for _, paths in support_classes(support_dir) for p in paths] + query_files(queries)
    if any(p.resolve() == target for p in inputs):
        raise DataError(f"--out {path} is one of the input images; choose another path for the predictions")


def check_output_file(path: PathLike, overwrite: bool = False) -> None:
    """DataError when `path` cannot be written as a file (a folder, under a file, or a file that
    exists, unless `overwrite`); checked before predicting so that a refused command writes
    nothing.  Its missing folders are created when writing (`Predictions.to_csv`), as every --out's are."""
    path = Path(path)
    if path.is_file() and not overwrite:
        raise DataError(f"--out {path} exists; pass --overwrite to replace it, or choose another path")
    if path.is_dir():
        raise DataError(f"--out {path} is a folder; give a file path such as {path / 'predictions.csv'}")
    blocking = nearest_existing(path.parent)
    if not blocking.is_dir():
        raise DataError(f"--out {path}: {blocking} is a file, not a folder; choose another path")


def run_info(x: "Experiment", run_dir: PathLike, loaded: Dict[str, Any]) -> Dict[str, Any]:
    """What `Predictions.info` records: the run, its checkpoint and step, the input preprocessing and
    the algorithm's batch-norm protocol."""
    return {"run": str(run_dir), "checkpoint": loaded["checkpoint"], "step": loaded["step"],
            "input": x.preprocessing.describe(), "batchnorm": x.config.algorithm.protocol().get("batchnorm")}


def predict_folder(run_dir: PathLike, support_dir: PathLike, queries: Sequence[PathLike], checkpoint: str = "best",
                   device: Optional[str] = None) -> Predictions:
    """Classify the query images (files, or folders of images) with the run in `run_dir`, taking
    the classes from `support_dir` (one sub-folder of a few images per class, sorted by name).

    Every input is checked before the model is built.  Runs on feature vectors are refused (use
    the Python API with tensors).  `device`: None = the run's ('auto').
    """
    from .experiment import Experiment
    from .rundir import load_config, load_preprocessing

    config = load_config(Path(run_dir))
    support, labels, query_paths = folder_inputs(config, load_preprocessing(run_dir, config), support_dir, queries)
    x, loaded = Experiment.from_run(run_dir, checkpoint, device=device)
    return classify(x, support, labels, query_paths, [str(p) for p in query_paths], run_info(x, run_dir, loaded),
                    class_word="class folders")


def folder_inputs(config: "ExperimentConfig", preprocessing: "Preprocessing", support_dir: PathLike,
                  queries: Sequence[PathLike]) -> Tuple[List[Path], List[str], List[Path]]:
    """(support image paths, their class names, query image paths) of a support folder (one
    sub-folder per class) and query files or folders, checked (DataError) before any model work."""
    if preprocessing.kind != IMAGES:
        raise DataError(f"this run was trained on {preprocessing.describe()}, so it cannot classify image folders; "
                        "use the Python API with float tensors: l2l_app.load(RUN_DIR).predict(...)")
    classes = support_classes(support_dir)
    check_class_count(config, len(classes), "class folders")
    query_paths = query_files(queries)
    support = [path for _, paths in classes for path in paths]
    labels = [name for name, paths in classes for _ in paths]
    return support, labels, query_paths


__all__ = ["CSV_COLUMNS", "Predictions", "check_output_file", "check_predict_output", "classify",
           "folder_inputs", "image_files", "predict_folder", "query_files", "stored_items",
           "support_classes"]
