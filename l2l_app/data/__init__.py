"""Datasets as uint8 tensors, and the few-shot episodes sampled from them.

* `types`: the shared types (`SplitData`, `EpisodeBatch`, `TaskSource`) and the `Dataset` interface;
* one module per dataset (`omniglot`, `miniimagenet`), each registering its `Dataset` in
  `l2l_app.registry.DATASETS` -- every module of this package is imported here, so adding a
  dataset is adding one file;
* `images` (raw files and decoding) and `cache` (the tensor cache of decoded splits), for any dataset;
* `preprocess`: a run's `Preprocessing` (decoding and normalisation, saved in the run);
* `loading`: `load_split` / `load_splits` / `check_disjoint` / `dataset_spec`;
* `samplers`: the task sources (`build_task_source`) and learn2learn's view (`build_metadataset`).
"""
from l2l_app.registry import import_submodules

from . import omniglot  # noqa: F401  the default dataset registers first, so name listings start with it

import_submodules(__name__)

from .loading import check_disjoint, dataset_spec, list_classes, load_split, load_splits  # noqa: E402
from .preprocess import Preprocessing  # noqa: E402
from .samplers import build_metadataset, build_task_source  # noqa: E402
from .types import Dataset, EpisodeBatch, PathLike, SplitData, TaskSource  # noqa: E402

__all__ = ["Dataset", "EpisodeBatch", "PathLike", "Preprocessing", "SplitData", "TaskSource", "build_metadataset",
           "build_task_source", "check_disjoint", "dataset_spec", "list_classes", "load_split", "load_splits"]
