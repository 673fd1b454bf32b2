"""The tensor cache of decoded splits, for any dataset.

Each split is decoded once, resized, and cached as one uint8 tensor file
`<dataset>-<split>-<key>.pt`; a later load reads that file (well under a second).  The key
(`cache_key`) hashes the source's content, the dataset's preprocessing parameters
(`Dataset.cache_params`), the resize filter, the split file and CACHE_VERSION, so any change to
them misses the cache.  Caches live in `<data root>/.cache`, else $L2L_APP_CACHE_DIR or
~/.cache/l2l_app (see `cache_dirs`); an unreadable cache file is ignored with a warning and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import List, Optional

import torch

from l2l_app.data import images
from l2l_app.data.types import Dataset, Source, SplitData
from l2l_app.errors import CheckpointError
from l2l_app.fileio import atomic_write

CACHE_VERSION = 3  # 2: images turned upright by their EXIF orientation; 3: each item's source recorded


def cache_key(dataset: Dataset, source: Source, split: str, split_file: Path) -> str:
    """Short hash of source content, preprocessing parameters, the split's class listing
    (`Dataset.split_identity`: the split file's bytes) and CACHE_VERSION."""
    h = hashlib.sha256()
    params = {"version": CACHE_VERSION, "filter": images.RESIZE_FILTER, **dataset.cache_params()}
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update(source.fingerprint(split_file).encode())
    h.update(dataset.split_identity(split, split_file))
    return h.hexdigest()[:16]


def cache_dirs(root: Path) -> List[Path]:
    """Where caches are looked for, in order: `<root>/.cache` (beside the file when the data root is
    one file, e.g. a features table), then $L2L_APP_CACHE_DIR or ~/.cache/l2l_app."""
    fallback = os.environ.get("L2L_APP_CACHE_DIR")
    own = root.parent / ".cache" if root.is_file() else root / ".cache"
    return [own, Path(fallback).expanduser() if fallback else Path.home() / ".cache" / "l2l_app"]


def cache_name(dataset: Dataset, split: str, key: str) -> str:
    """The cache file's name: `<dataset>-<split>-<key>.pt`."""
    return f"{dataset.name}-{split}-{key}.pt"


def read_cache_path(dataset: Dataset, split: str, key: str, root: Path) -> Optional[Path]:
    """The first existing cache file of (split, key) among `cache_dirs(root)`, or None."""
    for d in cache_dirs(root):
        p = d / cache_name(dataset, split, key)
        if p.is_file():
            return p
    return None


def read_cache(dataset: Dataset, split: str, key: str, root: Path) -> Optional[SplitData]:
    """The cached split (images uint8 [N, C, H, W], labels int64 [N]), or None on a miss or an unreadable file."""
    p = read_cache_path(dataset, split, key, root)
    if p is None:
        return None
    try:
        d = torch.load(p, map_location="cpu", weights_only=True)
        return SplitData(d["images"], d["labels"], list(d["class_names"]), dataset.name, split,
                         ignored=list(d.get("ignored", [])), sources=_unpacked(d.get("sources", "")))
    except Exception as e:  # a truncated or foreign file: rebuild it
        warnings.warn(f"ignoring unreadable cache {p}: {images.one_line(e)}", stacklevel=3)
        return None


def _packed(sources: List[str]) -> str:
    """`SplitData.sources` as one NUL-separated string (no path holds NUL): one object to unpickle,
    not one per image (5x faster to load for Omniglot's 82,240)."""
    return "\0".join(sources)


def _unpacked(packed: str) -> List[str]:
    return packed.split("\0") if packed else []


def _dir_writable(d: Path) -> bool:
    """True if `d` (or the nearest existing parent it would be created in) may be written.

    Honours the permission bits even for root, so a read-only shared folder (mode r-x) stays untouched.
    """
    p = d
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    try:
        return p.is_dir() and os.access(p, os.W_OK | os.X_OK) and bool(p.stat().st_mode & 0o200)
    except OSError:
        return False


def write_cache(data: SplitData, dataset: Dataset, split: str, key: str, root: Path) -> Optional[Path]:
    """Atomically write the cache into the first writable cache dir; warn and return None if none is."""
    payload = {"images": data.images, "labels": data.labels, "class_names": list(data.class_names),
               "ignored": list(data.ignored), "sources": _packed(data.sources), "key": key, "version": CACHE_VERSION}
    for d in cache_dirs(root):
        if not _dir_writable(d):
            continue
        try:
            d.mkdir(parents=True, exist_ok=True)
            target = d / cache_name(dataset, split, key)
            atomic_write(target, lambda f: torch.save(payload, f))
            return target
        except (OSError, CheckpointError):
            continue
    warnings.warn(f"could not write a cache for the {dataset.name} {split} split (no writable folder among "
                  f"{', '.join(map(str, cache_dirs(root)))}); set L2L_APP_CACHE_DIR", stacklevel=3)
    return None
