"""Two `TaskSource`s that turn a `SplitData` into meta-batches of few-shot episodes (`EpisodeBatch`).

* `L2LTaskSource`: the reference -- learn2learn's `TaskDataset` over a `MetaDataset`
  (`build_metadataset`) with NWays(ways), KShots(shots + queries), LoadData, RemapLabels, one
  task per `.sample()`.  learn2learn draws from Python's global `random`; this source keeps its
  own `random` state and swaps it in only around its own draws, so the caller's global state is
  untouched and a resumed source continues exactly.
* `TensorTaskSource`: the whole split as one uint8 tensor on the device; a meta-batch is a few
  tensor ops driven by a `torch.Generator` on that device.

Both return model inputs as float32 (pixels / 255 in [0, 1], standardised when the run's
`Preprocessing` normalises; feature vectors as they are or standardised), support ordered by class (class 0's
`shots` images, then class 1's, ...), query likewise with `queries`, labels 0..ways-1.
`sample_with_indices` also returns the source indices (into `split.images`) of every image.
"""
from __future__ import annotations

import difflib
import random
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from l2l_app.data.preprocess import Preprocessing, input_function
from l2l_app.data.types import EpisodeBatch, SplitData, TaskSource
from l2l_app.errors import ConfigError

if TYPE_CHECKING:
    from learn2learn.data import MetaDataset

KINDS = ("l2l", "tensor")
InputFunction = Callable[[torch.Tensor], torch.Tensor]


EPISODE_FLAGS = ("--ways", "--shots", "--queries")


def validate_episode_shape(split: SplitData, ways: int, shots: int, queries: int,
                           flags: Tuple[str, str, str] = EPISODE_FLAGS) -> None:
    """Raise ConfigError (one line, naming the flag) if `split` cannot give ways-way shots-shot episodes.

    `flags` names the options that set (ways, shots, queries), e.g. ('--train-ways', '--shots', '--queries').
    """
    w, s, q = flags
    where = split.describe()
    if ways < 2:
        raise ConfigError(f"{w} {ways} is too small: a few-shot task needs at least 2 classes; use {w} 2 or more")
    if ways > split.num_classes:
        raise ConfigError(f"{w} {ways} exceeds the {split.num_classes} classes of {where}; "
                          f"use at most {split.num_classes}{_more_classes_hint(split)}")
    if shots < 1:
        raise ConfigError(f"{s} {shots} is too small: each class needs at least 1 support image; use {s} 1 or more")
    if queries < 1:
        raise ConfigError(f"{q} {queries} is too small: each class needs at least 1 query image; "
                          f"use {q} 1 or more")
    per_class = split.images_per_class
    if shots + queries > per_class:
        counts = split.class_counts
        smallest = int(torch.argmin(counts))
        short = int((counts < shots + queries).sum())
        others = f" (as do {short - 1} other classes)" if short > 1 else ""
        raise ConfigError(f"class {split.class_names[smallest]} of {where} has only {per_class} images{others} "
                          f"but {s} {shots} + {q} {queries} = {shots + queries} are needed; lower {s} or {q} "
                          f"so that they sum to at most {per_class}, or remove the class from the split")


def _more_classes_hint(split: SplitData) -> str:
    """For a dataset whose class split can be drawn by --split-ratios (a class-folders layout without
    split folders, feature tables): how to give `split` more classes."""
    from ..registry import DATASETS
    dataset = DATASETS.get(split.dataset)
    if dataset is None or "split_ratios" not in dataset.options or not split.split:
        return ""
    return (f", or, where the classes are split by --split-ratios (train,val,test shares; default 0.64,0.16,0.2), "
            f"give the {split.split} split a larger share")


def _episode_labels(ways: int, per_class: int, num_tasks: int, device) -> torch.Tensor:
    """long [num_tasks, ways*per_class]: 0,0,..,1,1,.. (each label `per_class` times).
    (A floor division rather than `repeat_interleave`: no output size to compute, so it can be
    captured in a CUDA graph.)"""
    return (torch.arange(ways * per_class, device=device) // per_class).expand(num_tasks, -1).contiguous()


def _batch_from_indices(images: torch.Tensor, support_idx: torch.Tensor, query_idx: torch.Tensor,
                        ways: int, shots: int, queries: int, to_input: InputFunction) -> EpisodeBatch:
    """Gather `images` (uint8 [N, C, H, W] or float32 [N, D]) at [B, ways*shots] / [B, ways*queries]
    indices into an EpisodeBatch of model inputs (`to_input`)."""
    b = support_idx.shape[0]
    shape = images.shape[1:]
    dev = images.device
    sx = to_input(images[support_idx.reshape(-1)]).reshape(b, ways * shots, *shape)
    qx = to_input(images[query_idx.reshape(-1)]).reshape(b, ways * queries, *shape)
    return EpisodeBatch(sx, _episode_labels(ways, shots, b, dev), qx, _episode_labels(ways, queries, b, dev),
                        ways, shots, queries)


def build_metadataset(split: SplitData, with_index: bool = False,
                      preprocessing: Optional[Preprocessing] = None) -> "MetaDataset":
    """A `learn2learn.data.MetaDataset` over `split`: items (model input [C, H, W] or [D], label)
    or, with `with_index`, (input, label, index).  The label maps are passed in, so construction
    does not iterate over the images."""
    import learn2learn as l2l

    labels = split.labels.tolist()
    labels_to_indices: Dict[int, List[int]] = {c: [] for c in range(split.num_classes)}
    for i, c in enumerate(labels):
        labels_to_indices[c].append(i)
    indices_to_labels = dict(enumerate(labels))
    return l2l.data.MetaDataset(_SplitDataset(split, with_index, preprocessing), labels_to_indices=labels_to_indices,
                                indices_to_labels=indices_to_labels)


class _SplitDataset(torch.utils.data.Dataset):
    """`split` as a torch Dataset of (model input [C, H, W] or [D], label[, index])."""

    def __init__(self, split: SplitData, with_index: bool, preprocessing: Optional[Preprocessing] = None) -> None:
        self.images, self.labels, self.with_index = split.images, split.labels, with_index
        self.to_input = input_function(preprocessing, "cpu")

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int) -> Union[Tuple[torch.Tensor, int], Tuple[torch.Tensor, int, int]]:
        x = self.to_input(self.images[i])
        y = int(self.labels[i])
        return (x, y, i) if self.with_index else (x, y)


class L2LTaskSource:
    """learn2learn reference sampler: `TaskDataset(MetaDataset, [NWays, KShots, LoadData, RemapLabels])`.

    Each task is one `TaskDataset.sample()` (num_tasks=-1: a fresh task every call) drawn under
    this source's private `random` state.  Images are stable-sorted by remapped label so the
    support holds, for each class, the first `shots` of its `shots + queries` sampled images.
    """

    def __init__(self, split: SplitData, ways: int, shots: int, queries: int, seed: int,
                 device: torch.device | str = "cpu", flags: Tuple[str, str, str] = EPISODE_FLAGS,
                 preprocessing: Optional[Preprocessing] = None) -> None:
        import learn2learn as l2l

        validate_episode_shape(split, ways, shots, queries, flags)
        self.split, self.ways, self.shots, self.queries = split, ways, shots, queries
        self.device = torch.device(device)
        self.to_input = input_function(preprocessing, "cpu")
        self.metadataset = build_metadataset(split, with_index=True, preprocessing=preprocessing)
        t = l2l.data.transforms
        transforms = [t.NWays(self.metadataset, ways), t.KShots(self.metadataset, shots + queries),
                      t.LoadData(self.metadataset), t.RemapLabels(self.metadataset)]
        outer = random.getstate()
        try:  # guard against any draw made while building the task dataset
            with warnings.catch_warnings():  # "TaskDataset is deprecated, use Taskset": same class in 0.2
                warnings.simplefilter("ignore", DeprecationWarning)
                self.taskset = l2l.data.TaskDataset(self.metadataset, task_transforms=transforms, num_tasks=-1)
        finally:
            random.setstate(outer)
        self._rng = random.Random(seed)

    def _one_task(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """One episode's (support_idx [ways*shots], query_idx [ways*queries]) under the private state."""
        outer = random.getstate()
        random.setstate(self._rng.getstate())
        try:
            _, y, idx = self.taskset.sample()
        finally:
            self._rng.setstate(random.getstate())
            random.setstate(outer)
        k = self.shots + self.queries
        order = torch.argsort(torch.as_tensor(y), stable=True)
        idx = torch.as_tensor(idx)[order].reshape(self.ways, k)
        return idx[:, :self.shots].reshape(-1), idx[:, self.shots:].reshape(-1)

    def sample_indices(self, num_tasks: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(support_idx [B, ways*shots], query_idx [B, ways*queries]) on the CPU; indices into split.images."""
        if num_tasks < 1:
            raise ConfigError(f"number of tasks must be at least 1, got {num_tasks}")
        parts = [self._one_task() for _ in range(num_tasks)]
        return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])

    def batch_at(self, support_idx: torch.Tensor, query_idx: torch.Tensor) -> EpisodeBatch:
        """The episodes at these indices, as model inputs on `device`."""
        # The loaded images (LoadData) equal to_input(split.images[idx]); gathering them at once is
        # cheaper than stacking per-task float copies.
        batch = _batch_from_indices(self.split.images, support_idx.cpu(), query_idx.cpu(), self.ways, self.shots,
                                    self.queries, self.to_input)
        return batch.to(self.device)

    def sample_with_indices(self, num_tasks: int) -> Tuple[EpisodeBatch, torch.Tensor, torch.Tensor]:
        """(batch, support_idx [B, ways*shots], query_idx [B, ways*queries]); indices into split.images."""
        support_idx, query_idx = self.sample_indices(num_tasks)
        return self.batch_at(support_idx, query_idx), support_idx, query_idx

    def sample(self, num_tasks: int) -> EpisodeBatch:
        return self.sample_with_indices(num_tasks)[0]

    def state_dict(self) -> Dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {"kind": "l2l", "random_state": [version, list(internal), gauss]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        version, internal, gauss = state["random_state"]
        self._rng.setstate((version, tuple(int(v) for v in internal), gauss))


class TensorTaskSource:
    """On-device sampler: the split is one uint8 tensor on `device`; a meta-batch is a few tensor ops.

    Per task: `ways` distinct classes (top-k of uniform keys over classes), then per class
    `shots + queries` distinct images among that class's own images (top-k of uniform keys over an
    index table [classes, max_count], padding keyed -inf so unequal class sizes are handled).
    """

    def __init__(self, split: SplitData, ways: int, shots: int, queries: int, seed: int,
                 device: torch.device | str = "cpu", flags: Tuple[str, str, str] = EPISODE_FLAGS,
                 preprocessing: Optional[Preprocessing] = None) -> None:
        validate_episode_shape(split, ways, shots, queries, flags)
        self.split, self.ways, self.shots, self.queries = split, ways, shots, queries
        self.device = torch.device(device)
        self.to_input = input_function(preprocessing, self.device)
        self.images = split.images.to(self.device)
        table, counts = split.index_table()
        self.table = table.to(self.device)
        self.valid = (torch.arange(table.shape[1]) < counts[:, None]).to(self.device)  # [C, M]
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    #: the names of `draw_keys`'s tensors (the arguments of `indices_from_keys` and `batch_from_keys`)
    KEY_NAMES = ("class_keys", "image_keys")

    def draw_keys(self, num_tasks: int) -> Dict[str, torch.Tensor]:
        """A meta-batch's random draws, the only part of sampling that uses the generator:
        class_keys [B, num_classes] and image_keys [B, ways, max images per class], uniform on `device`."""
        if num_tasks < 1:
            raise ConfigError(f"number of tasks must be at least 1, got {num_tasks}")
        g, dev = self.generator, self.device
        num_classes, width = self.table.shape
        class_keys = torch.rand(num_tasks, num_classes, generator=g, device=dev)
        image_keys = torch.rand(num_tasks, self.ways, width, generator=g, device=dev)
        return dict(zip(self.KEY_NAMES, (class_keys, image_keys)))

    def indices_from_keys(self, class_keys: torch.Tensor,
                          image_keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(support_idx [B, ways*shots], query_idx [B, ways*queries]) for the keys of `draw_keys`:
        deterministic tensor ops with no host synchronisation (a CUDA graph can hold them)."""
        num_tasks = class_keys.shape[0]
        classes = class_keys.topk(self.ways, dim=1).indices  # [B, W], distinct, uniformly random order
        image_keys = image_keys.masked_fill(~self.valid[classes], float("-inf"))
        pos = image_keys.topk(self.shots + self.queries, dim=2).indices  # [B, W, K] distinct valid positions
        idx = self.table[classes].gather(2, pos)  # [B, W, K] indices into images
        return (idx[:, :, :self.shots].reshape(num_tasks, -1), idx[:, :, self.shots:].reshape(num_tasks, -1))

    def batch_from_keys(self, class_keys: torch.Tensor, image_keys: torch.Tensor) -> EpisodeBatch:
        """The meta-batch the keys of `draw_keys` select (what `sample` returns for them)."""
        return self.batch_at(*self.indices_from_keys(class_keys, image_keys))

    def sample_indices(self, num_tasks: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(support_idx [B, ways*shots], query_idx [B, ways*queries]) on `device`."""
        return self.indices_from_keys(**self.draw_keys(num_tasks))

    def batch_at(self, support_idx: torch.Tensor, query_idx: torch.Tensor) -> EpisodeBatch:
        """The episodes at these indices (into split.images), as model inputs on `device`."""
        return _batch_from_indices(self.images, support_idx.to(self.device), query_idx.to(self.device), self.ways,
                                   self.shots, self.queries, self.to_input)

    def sample_with_indices(self, num_tasks: int) -> Tuple[EpisodeBatch, torch.Tensor, torch.Tensor]:
        support_idx, query_idx = self.sample_indices(num_tasks)
        return self.batch_at(support_idx, query_idx), support_idx, query_idx

    def sample(self, num_tasks: int) -> EpisodeBatch:
        return self.sample_with_indices(num_tasks)[0]

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": "tensor", "generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())


def build_task_source(kind: str, split: SplitData, ways: int, shots: int, queries: int, seed: int,
                      device: torch.device | str = "cpu", flags: Tuple[str, str, str] = EPISODE_FLAGS,
                      preprocessing: Optional[Preprocessing] = None) -> TaskSource:
    """'l2l' -> L2LTaskSource, 'tensor' -> TensorTaskSource; inputs prepared by `preprocessing`
    (None: pixels / 255)."""
    if kind == "l2l":
        return L2LTaskSource(split, ways, shots, queries, seed, device, flags, preprocessing)
    if kind == "tensor":
        return TensorTaskSource(split, ways, shots, queries, seed, device, flags, preprocessing)
    close = difflib.get_close_matches(str(kind), KINDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown task source {kind!r}{hint}; valid: {', '.join(KINDS)}; "
                      "pass --sampler with one of them")
