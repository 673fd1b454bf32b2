"""The data types every other part of the package shares, and the dataset interface.

A leaf module (torch, the standard library and `l2l_app.errors` only):

* `SplitData`: one split of a dataset as uint8 tensors;
* `EpisodeBatch`: the meta-batch of few-shot episodes every meta-learner consumes, and the
  `TaskSource` protocol of what produces one (see `l2l_app.data.samplers`);
* `Dataset`: the interface of one dataset (its static facts; opening its data root as a
  `Source`; finding, decoding and cache-keying its splits).  Each concrete dataset is one
  instance of a subclass, in its own module, registered in `l2l_app.registry.DATASETS`.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import torch

from l2l_app.errors import DataError

PathLike = Union[str, Path]

#: the split files that ship with the package (one folder per published split)
SPLITS_DIR = Path(__file__).resolve().parent.parent / "splits"


# ----------------------------------------------------------------------------- splits


@dataclass
class SplitData:
    """One split as tensors.

    images: uint8 [N, C, H, W] (image datasets) or float32 [N, D] (feature vectors, `--dataset
    features`); labels: int64 [N] in 0..num_classes-1, grouped (non-decreasing); class_names[c]
    names class c.  `dataset` / `split` only serve messages.  `skipped` lists the unreadable
    images left out when loaded with ``skip_bad_images`` ("path: reason"); `ignored` the files
    that were not images at all (hidden files, text files; class-folder datasets), counted by
    `l2l-app data check`.  `sources[i]`, where the dataset records it, says where item i came
    from (a path relative to the data root, an archive member), so `data check` can name files;
    empty otherwise.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: List[str]
    dataset: str = ""
    split: str = ""
    skipped: List[str] = field(default_factory=list)  # images left out by skip_bad_images (file: reason)
    ignored: List[str] = field(default_factory=list)  # files that are not images (relative paths)
    sources: List[str] = field(default_factory=list)  # per item: where it came from ([] when not recorded)

    def __post_init__(self) -> None:
        is_image = self.images.dim() == 4 and self.images.dtype == torch.uint8
        is_vector = self.images.dim() == 2 and self.images.dtype == torch.float32
        if not (is_image or is_vector):
            raise ValueError(f"images must be uint8 [N, C, H, W] or float32 [N, D], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be [N={self.images.shape[0]}], got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()
        if self.sources and len(self.sources) != self.images.shape[0]:
            raise ValueError(f"sources must name all {self.images.shape[0]} items, got {len(self.sources)}")

    @classmethod
    def from_classes(cls, images: Sequence[torch.Tensor], names: Sequence[str], dataset: str, split: str,
                     split_file: Path, skipped: Sequence[str] = (), ignored: Sequence[str] = (),
                     sources: Sequence[str] = ()) -> "SplitData":
        """Per-class uint8 images (`images[c]`: [n_c, H, W] or [n_c, C, H, W], class `names[c]`; or
        float32 vectors [n_c, D]) -> a SplitData with labels 0..len(names)-1 in that order, `sources`
        naming the items in the same order (or empty); DataError (naming `split_file`) when the
        split has fewer than 2 classes or a class has fewer than 2 images."""
        if len(names) < 2:
            raise DataError(f"too few classes in the {dataset} {split} split ({split_file}): found {len(names)}, "
                            "a few-shot task needs at least 2; fix the split file")
        for x, name in zip(images, names):
            if x.shape[0] == 0:
                readable = "readable " if skipped else ""
                raise DataError(f"class {name} of the {dataset} {split} split has no {readable}images; add images "
                                f"to it or remove it")
            if x.shape[0] < 2:
                after = " after skipping unreadable images" if skipped else ""
                raise DataError(f"too few images for class {name} in the {dataset} {split} split{after}: found "
                                f"{x.shape[0]}, need at least 2 (one support, one query); fix the split file or data")
        stacked = torch.cat(list(images))
        if stacked.dim() == 3:
            stacked = stacked.unsqueeze(1)
        labels = torch.cat([torch.full((x.shape[0],), c, dtype=torch.long) for c, x in enumerate(images)])
        return cls(stacked.contiguous(), labels, list(names), dataset, split, list(skipped), list(ignored),
                   list(sources))

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """The shape of one item: (C, H, W) for images, (D,) for feature vectors."""
        return tuple(self.images.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.images.dtype == torch.uint8

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_counts(self) -> torch.Tensor:
        """int64 [num_classes]: images in each class."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    @property
    def images_per_class(self) -> int:
        """The smallest number of images of any class."""
        return int(self.class_counts.min()) if self.num_classes else 0

    def class_indices(self, c: int) -> torch.Tensor:
        """int64 indices (into `images`) of class c."""
        return torch.nonzero(self.labels == c, as_tuple=False).flatten()

    def index_table(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(table int64 [num_classes, max_count], counts int64 [num_classes]).

        Row c holds the image indices of class c in order, padded with -1 past counts[c].
        """
        counts = self.class_counts
        width = int(counts.max()) if self.num_classes else 0
        order = torch.argsort(self.labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(self.labels.numel()) - starts[self.labels[order]]
        table = torch.full((self.num_classes, width), -1, dtype=torch.long)
        table[self.labels[order], pos] = order
        return table, counts

    def describe(self) -> str:
        """'the omniglot test split' (for messages)."""
        parts = " ".join(p for p in (self.dataset, self.split) if p)
        return f"the {parts} split" if parts else "the split"


# ----------------------------------------------------------------------------- episodes


@dataclass
class EpisodeBatch:
    """A meta-batch of B few-shot episodes, each `ways`-way `shots`-shot with `queries` queries per class.

    Shapes (feature vectors: [D] in place of C, H, W):
        support_x: [B, ways*shots, C, H, W] float32: pixels in [0, 1], or standardised with the
                   run's statistics (`l2l_app.data.preprocess`)
        support_y: [B, ways*shots] long, labels in 0..ways-1
        query_x:   [B, ways*queries, C, H, W]
        query_y:   [B, ways*queries]
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int
    shots: int
    queries: int

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "EpisodeBatch":
        """Move to `device` (and cast images to `dtype` if given); labels stay long."""
        def images(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)
        return EpisodeBatch(images(self.support_x), self.support_y.to(device),
                            images(self.query_x), self.query_y.to(device),
                            self.ways, self.shots, self.queries)

    def task(self, i: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The i-th episode as (support_x, support_y, query_x, query_y), task dimension dropped."""
        return self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i]

    def tasks(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        for i in range(self.num_tasks):
            yield self.task(i)

    def chunks(self, size: int) -> Iterator["EpisodeBatch"]:
        """Split along the task dimension into consecutive batches of at most `size` tasks."""
        for start in range(0, self.num_tasks, size):
            sl = slice(start, start + size)
            yield EpisodeBatch(self.support_x[sl], self.support_y[sl], self.query_x[sl],
                               self.query_y[sl], self.ways, self.shots, self.queries)

    @staticmethod
    def stack(episodes: list[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
              ways: int, shots: int, queries: int) -> "EpisodeBatch":
        """Stack per-task (support_x, support_y, query_x, query_y) tuples into one batch."""
        sx, sy, qx, qy = (torch.stack(parts) for parts in zip(*episodes))
        return EpisodeBatch(sx, sy, qx, qy, ways, shots, queries)


class TaskSource(Protocol):
    """Anything that samples meta-batches of episodes from one split with its own RNG.

    Sources draw only from their own generator and expose `state_dict()` / `load_state_dict()`
    so that a resumed run sees the same episodes.
    """

    ways: int
    shots: int
    queries: int

    def sample(self, num_tasks: int) -> EpisodeBatch:
        ...

    def sample_indices(self, num_tasks: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(support_idx [B, ways*shots], query_idx [B, ways*queries]): indices into the split's images."""
        ...

    def batch_at(self, support_idx: torch.Tensor, query_idx: torch.Tensor) -> EpisodeBatch:
        """The episodes at those indices, as model inputs on the source's device."""
        ...

    def state_dict(self) -> Dict[str, Any]:
        ...

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        ...


# ----------------------------------------------------------------------------- the dataset interface


class Source(abc.ABC):
    """A data root that has been checked to exist; knows how to fingerprint itself."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @abc.abstractmethod
    def fingerprint(self, split_file: Path) -> str:
        """A string that changes whenever the raw data the split `split_file` uses changes (cache key input)."""


#: the data settings (`DataConfig` fields) a dataset may accept beyond the common ones
#: (dataset, data_root, sampler, skip_bad_images), with the flag that sets each
DATA_OPTIONS: Dict[str, str] = {
    "image_size": "--image-size", "channels": "--channels", "resize": "--resize", "normalize": "--normalize",
    "split_file": "--split-file", "split_seed": "--split-seed", "split_ratios": "--split-ratios",
    "label_column": "--label-column",
}
#: `Dataset.kind` / `Preprocessing.kind`: images (uint8 [N, C, H, W]) or feature vectors (float32 [N, D])
IMAGES = "image"
VECTORS = "vectors"
#: --resize: how an image becomes image_size x image_size
RESIZE_POLICIES = ("stretch", "crop")



@dataclass(frozen=True)
class Dataset(abc.ABC):
    """One dataset: its static facts and how its raw data becomes `SplitData`.

    Facts: `name` (the --dataset value), `in_channels` and `image_size` (the side of the square
    images after preprocessing; for feature vectors `in_channels` is 0 until the data is read and
    `image_size` 0), `default_root` (the bundled copy; None: none), `splits` (names).  Split files
    are `{split}.{split_suffix}`, looked for in the data root and then in `packaged_splits` (None:
    nothing packaged); `root_hint` says what a data root holds, for messages.

    Preprocessing: `resize` (a RESIZE_POLICIES entry: 'stretch' squashes to image_size x
    image_size, 'crop' scales the shorter side to image_size and takes the centre square) and
    `normalize` (standardise inputs with the train split's per-channel mean and std, computed by
    `l2l_app.data.preprocess`).  `options` lists the DATA_OPTIONS a run may set for this dataset;
    `configured(data)` returns the dataset with a run's values applied (`l2l_app.config.DataConfig`),
    and every other field of a dataclass subclass (split seed, ratios...) may be set the same way.
    """

    name: str
    in_channels: int
    image_size: int
    default_root: Optional[Path]
    splits: Tuple[str, ...] = ("train", "val", "test")
    split_suffix: str = "txt"
    packaged_splits: Optional[Path] = None
    root_hint: str = "the folder that holds the data"
    resize: str = "stretch"
    normalize: bool = False
    options: Tuple[str, ...] = ("image_size", "channels", "resize", "normalize")
    #: IMAGES (uint8 [N, C, H, W]) or VECTORS (float32 [N, D])
    kind: str = IMAGES

    @property
    def mode(self) -> str:
        """The PIL mode images are decoded to: 'L' (1 channel) or 'RGB' (3)."""
        return "L" if self.in_channels == 1 else "RGB"

    def configured(self, data: Any) -> "Dataset":
        """This dataset with the values a run's `DataConfig` sets (None: keep the dataset's own).

        Only `options` are read; `channels` sets `in_channels`.  Raises nothing: config validation
        refuses options a dataset does not take before this is called.
        """
        changes: Dict[str, Any] = {}
        for name in self.options:
            value = getattr(data, name, None)
            if value is None:
                continue
            changes["in_channels" if name == "channels" else name] = value
        return dataclasses.replace(self, **changes) if changes else self

    def split_identity(self, split: str, split_file: Path) -> bytes:
        """What the cache key hashes for `split`'s class listing: the split file's bytes (a dataset
        whose listing is derived, like a seeded split of class folders, returns that listing)."""
        return split_file.read_bytes()

    def class_lists(self, source: "Source", files: Dict[str, Path]) -> Optional[Dict[str, List[str]]]:
        """split -> class names, without decoding (None: only known after decoding); the trainer
        writes them into the run (splits.json) so a derived split is reproducible."""
        return None

    @abc.abstractmethod
    def open(self, data_root: Optional[PathLike]) -> Source:
        """The checked source under `data_root` (None: `default_root`), or DataError saying what is wrong."""


    @abc.abstractmethod
    def build(self, source: Source, files: Dict[str, Path], progress: bool,
              skip_bad_images: bool = False) -> Dict[str, SplitData]:
        """Decode the splits `files` (split name -> split file) from `source` in one pass.

        `skip_bad_images`: leave an unreadable image out (listed in `SplitData.skipped`) instead of
        raising DataError.  `progress`: show decoding progress.
        """

    def cache_params(self) -> Dict[str, Any]:
        """The preprocessing facts of this dataset that the cache key hashes (every dataset gives
        every key, so two datasets never share a key; 'resize' only when not the historical
        'stretch', so existing caches keep their keys)."""
        params = {"dataset": self.name, "image_size": self.image_size, "channels": self.in_channels,
                  "rotations": False, "invert": False}
        if self.resize != "stretch":
            params["resize"] = self.resize
        return params

    def split_file_candidates(self, split: str, root: Path, split_dir: Optional[PathLike]) -> List[Path]:
        """Where `split`'s file may be, in order: `split_dir` alone if given, else the data root's
        own file (small custom data, tests), then the packaged one."""
        name = f"{split}.{self.split_suffix}"
        if split_dir is not None:
            return [Path(split_dir) / name]
        return [root / name] + ([self.packaged_splits / name] if self.packaged_splits is not None else [])

    def split_files(self, root: Path, split_dir: Optional[PathLike]) -> Dict[str, Path]:
        """split name -> file, for the splits whose file exists (see `split_file_candidates`)."""
        out = {}
        for s in self.splits:
            found = next((c for c in self.split_file_candidates(s, root, split_dir) if c.is_file()), None)
            if found is not None:
                out[s] = found
        return out

    def expected_split_file(self, split: str, root: Path, split_dir: Optional[PathLike]) -> Path:
        """The file a missing split is reported under: `split_dir`'s, else the packaged one."""
        return self.split_file_candidates(split, root, split_dir)[-1]
