"""Loading splits of any registered dataset: `load_split`, `load_splits`, `check_disjoint`, `dataset_spec`.

A load opens the dataset's data root (`Dataset.open`), finds its split files
(`Dataset.split_files`), serves each split from the tensor cache (`l2l_app.data.cache`) or, on a
miss, decodes every missing split in one pass (`Dataset.build`) and caches it.  Nothing is ever
downloaded.

An unreadable image raises DataError naming the file, or with `skip_bad_images` is left out and
listed in `SplitData.skipped` (such a split is not cached).

Shapes: `SplitData.images` is uint8 [N, C, H, W]; `labels` int64 [N] grouped by class.
"""
from __future__ import annotations

import difflib
import re
from typing import Dict, Iterable, List, Mapping, NoReturn, Optional, Sequence, Union

from l2l_app.data import cache as split_cache
from l2l_app.data.types import Dataset, PathLike, SplitData
from l2l_app.errors import DataError
from l2l_app.registry import DATASETS

#: a class name's rotation suffix: 'A/character01/rot090' is a rotation of the class 'A/character01'
_ROT_RE = re.compile(r"/rot(\d{3})$")


def load_split(dataset: Union[str, Dataset], split: str, data_root: Optional[PathLike] = None, cache: bool = True,
               progress: bool = True, split_dir: Optional[PathLike] = None,
               skip_bad_images: bool = False) -> SplitData:
    """Load one split of `dataset` (a name in `l2l_app.registry.DATASETS`, or a registered dataset
    `configured` with a run's data settings) as tensors.

    `data_root`: folder with the data (None: the dataset's bundled copy, if it has one).
    `split_dir`: a folder with the split files to use instead (tests).  On a cache miss, every
    split of the dataset that misses is decoded in the same pass and cached (the archive is read once).

    `skip_bad_images`: an unreadable or undecodable image is left out and listed in
    `SplitData.skipped` instead of raising DataError.  A split from which an image was skipped
    is never cached, so a cache always holds exactly what a strict load gives (the cache key
    needs no flag) and every later run decodes again and reports the skipped files again.
    """
    return load_splits(dataset, (split,), data_root, cache=cache, progress=progress,
                       split_dir=split_dir, check=False, skip_bad_images=skip_bad_images)[split]


def load_splits(dataset: Union[str, Dataset], splits: Optional[Sequence[str]] = None, data_root: Optional[PathLike] = None,
                cache: bool = True, progress: bool = True, split_dir: Optional[PathLike] = None,
                check: bool = True, skip_bad_images: bool = False) -> Dict[str, SplitData]:
    """Load several splits (default: all of the dataset's) in one pass; `check` asserts they are
    class-disjoint.  `skip_bad_images`: see `load_split`."""
    spec = dataset if isinstance(dataset, Dataset) else dataset_spec(dataset)
    splits = tuple(spec.splits if splits is None else splits)
    for s in splits:
        _check_split_name(spec, s)
    source = spec.open(data_root)
    split_files = spec.split_files(source.root, split_dir)
    # On a miss, build every split whose file exists, so the archive is decoded only once.
    wanted = list(splits) + [s for s in spec.splits if s not in splits and s in split_files]
    for s in splits:
        if s not in split_files:
            raise DataError(f"split file for the {spec.name} {s} split not found: expected "
                            f"{spec.expected_split_file(s, source.root, split_dir)}; pass --data-root or add the file")
    keys = {s: split_cache.cache_key(spec, source, s, split_files[s]) for s in splits}
    out: Dict[str, SplitData] = {}
    if cache:
        for s in splits:
            hit = split_cache.read_cache(spec, s, keys[s], source.root)
            if hit is not None:
                out[s] = hit
    missing = [s for s in splits if s not in out]
    if missing:
        if cache:  # decode the archive once: also build the other splits that have no cache yet
            for s in wanted[len(splits):]:
                keys[s] = split_cache.cache_key(spec, source, s, split_files[s])
                if split_cache.read_cache_path(spec, s, keys[s], source.root) is None:
                    missing.append(s)
        try:
            built = spec.build(source, {s: split_files[s] for s in missing}, progress, skip_bad_images)
        except DataError:
            if all(s in splits for s in missing):
                raise
            # A problem in a split that was not asked for must not block the ones that were.
            built = spec.build(source, {s: split_files[s] for s in missing if s in splits}, progress,
                               skip_bad_images)
        for s, data in built.items():
            if cache and not data.skipped:  # never cache a split with holes (see load_split)
                split_cache.write_cache(data, spec, s, keys[s], source.root)
            if s in splits:
                out[s] = data
    result = {s: out[s] for s in splits}
    if check and len(result) > 1:
        check_disjoint(result)
    return result


def list_classes(dataset: Dataset, data_root: Optional[PathLike] = None,
                 split_dir: Optional[PathLike] = None) -> Optional[Dict[str, List[str]]]:
    """split -> class names of every split whose listing is known without decoding
    (`Dataset.class_lists`), checked class-disjoint; None when the dataset cannot tell."""
    source = dataset.open(data_root)
    lists = dataset.class_lists(source, dataset.split_files(source.root, split_dir))
    if lists is not None:
        check_disjoint(lists)
    return lists


def shared_classes(a: Iterable[str], b: Iterable[str]) -> List[str]:
    """The classes of two splits that are the same class (sorted): names compared without a trailing
    '/rotDDD', so two rotations of one (Omniglot) character count as one class."""
    return sorted({_ROT_RE.sub("", n) for n in a} & {_ROT_RE.sub("", n) for n in b})


def check_disjoint(splits: Mapping[str, Union[SplitData, Sequence[str]]]) -> None:
    """Raise DataError if two splits (SplitData or lists of class names) share a class.

    Names are compared without a trailing '/rotDDD', so two rotations of one (Omniglot)
    character in different splits count as a shared class.
    """
    names = list(splits)

    def classes(split: Union[SplitData, Sequence[str]]) -> Sequence[str]:
        return split.class_names if isinstance(split, SplitData) else split

    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = shared_classes(classes(splits[a]), classes(splits[b]))
            if common:
                shown = ", ".join(common[:3]) + (f" and {len(common) - 3} more" if len(common) > 3 else "")
                raise DataError(f"splits {a} and {b} share {len(common)} class(es): {shown}; "
                                "fix the split files so every class is in one split only")


def dataset_spec(dataset: str) -> Dataset:
    """The registered Dataset named `dataset`, or a one-line DataError listing the valid names and the closest."""
    spec = DATASETS.get(dataset)
    if spec is None:
        _unknown("dataset", dataset, DATASETS.names(), "pass --dataset with one of them")
    return spec


def _unknown(kind: str, value: str, valid: Iterable[str], fix: str) -> NoReturn:
    valid = list(valid)
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"unknown {kind} {value!r}{hint}; valid: {', '.join(valid)}; {fix}")


def _check_split_name(spec: Dataset, split: str) -> None:
    if split not in spec.splits:
        _unknown("split", split, spec.splits, f"{spec.name} has splits {', '.join(spec.splits)}")
