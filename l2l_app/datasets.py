"""Datasets: Omniglot (Vinyals split, rotations) and mini-ImageNet (Ravi split) as uint8 tensors.

The public API (`load_split`, `load_splits`, `build_metadataset`, `check_disjoint`) and the
dataset facts: which split files are used and how a split is built from the decoded images.
Reading and decoding the raw files is in `l2l_app.image_sources`, the tensor cache in
`l2l_app.split_cache`.  Nothing is ever downloaded.

Omniglot (Lake et al. 2015, Science) preprocessing, as in learn2learn's Omniglot benchmark:

* read `images_background/<Alphabet>/characterNN/*.png` and `images_evaluation/...` from the
  two zips or from extracted folders under the data root (the zip wins when both exist);
* convert the 105x105 1-bit PNG to 8-bit grey, resize to 28x28 with PIL's LANCZOS filter
  (antialiased), then **invert** so strokes are bright (255) on a dark (0) background --
  the polarity of learn2learn's ``1.0 - x`` transform;
* the Vinyals et al. (2016) split (or the data root's own `{train,val,test}.txt` when present)
  lists `Alphabet/characterNN/rotDDD`; each rotation is its own
  class, made with ``torch.rot90(img, k=DDD // 90, dims=(-2, -1))``, i.e. DDD degrees
  **counterclockwise** (as `numpy.rot90`).

mini-ImageNet (Vinyals et al. 2016; split of Ravi & Larochelle 2017): `images/*.jpg` under the
data root, `{train,val,test}.csv` (`filename,label`) from the data root when present, otherwise
the packaged ones; RGB, resized to 84x84 with LANCZOS only when an image is not already 84x84.

An unreadable image raises DataError naming the file, or with `skip_bad_images` is left out and
listed in `SplitData.skipped` (such a split is not cached).

Shapes: `SplitData.images` is uint8 [N, C, H, W]; `labels` int64 [N] grouped by class.
"""
from __future__ import annotations

import csv
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from l2l_app import image_sources, split_cache
from l2l_app.errors import DataError
from l2l_app.image_sources import PathLike, one_line
from l2l_app.progress import Progress

# Re-exported for existing callers (read-only: to patch one, patch it in its own module).
from l2l_app.image_sources import OMNIGLOT_ARCHIVES, RESIZE_FILTER  # noqa: F401
from l2l_app.split_cache import CACHE_VERSION, cache_dirs, cache_key  # noqa: F401

PACKAGE_DIR = Path(__file__).resolve().parent
SPLITS_DIR = PACKAGE_DIR / "splits"
BUNDLED_DATA = PACKAGE_DIR.parent / "data"
_ROT_RE = re.compile(r"/rot(\d{3})$")


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset: channels, image side, bundled root (None: none), split names."""

    name: str
    in_channels: int
    image_size: int
    default_root: Optional[Path]
    splits: Tuple[str, ...] = ("train", "val", "test")


DATASETS: Dict[str, DatasetSpec] = {
    "omniglot": DatasetSpec("omniglot", 1, 28, BUNDLED_DATA / "omniglot"),
    "miniimagenet": DatasetSpec("miniimagenet", 3, 84, None),
}


@dataclass
class SplitData:
    """One split as tensors.

    images: uint8 [N, C, H, W]; labels: int64 [N] in 0..num_classes-1, grouped (non-decreasing);
    class_names[c] names class c.  `dataset` / `split` only serve messages.  `skipped` lists the
    unreadable images left out when loaded with ``skip_bad_images`` ("path: reason").
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: List[str]
    dataset: str = ""
    split: str = ""
    skipped: List[str] = field(default_factory=list)  # images left out by skip_bad_images (file: reason)

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be [N={self.images.shape[0]}], got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

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


# ----------------------------------------------------------------------------- public entry points


def load_split(dataset: str, split: str, data_root: Optional[PathLike] = None, cache: bool = True,
               progress: bool = True, split_dir: Optional[PathLike] = None,
               skip_bad_images: bool = False) -> SplitData:
    """Load one split of `dataset` ('omniglot' | 'miniimagenet') as uint8 tensors.

    `data_root`: folder with the data (None: the bundled copy, Omniglot only).  `split_dir`:
    a folder with the split files to use instead (tests).  On a cache miss, every split of the
    dataset that misses is decoded in the same pass and cached (the archive is read once).

    `skip_bad_images`: an unreadable or undecodable image is left out and listed in
    `SplitData.skipped` instead of raising DataError.  A split from which an image was skipped
    is never cached, so a cache always holds exactly what a strict load gives (the cache key
    needs no flag) and every later run decodes again and reports the skipped files again.
    """
    return load_splits(dataset, (split,), data_root, cache=cache, progress=progress,
                       split_dir=split_dir, check=False, skip_bad_images=skip_bad_images)[split]


def load_splits(dataset: str, splits: Optional[Sequence[str]] = None, data_root: Optional[PathLike] = None,
                cache: bool = True, progress: bool = True, split_dir: Optional[PathLike] = None,
                check: bool = True, skip_bad_images: bool = False) -> Dict[str, SplitData]:
    """Load several splits (default: all of the dataset's) in one pass; `check` asserts they are
    class-disjoint.  `skip_bad_images`: see `load_split`."""
    spec = dataset_spec(dataset)
    splits = tuple(spec.splits if splits is None else splits)
    for s in splits:
        _check_split_name(spec, s)
    source = image_sources.open_source(spec, data_root)
    split_files = _split_files(spec, source.root, split_dir)
    # On a miss, build every split whose file exists, so the archive is decoded only once.
    wanted = list(splits) + [s for s in spec.splits if s not in splits and s in split_files]
    for s in splits:
        if s not in split_files:
            raise DataError(f"split file for the {spec.name} {s} split not found: expected "
                            f"{_expected_split_file(spec, s, source.root, split_dir)}; pass --data-root or add the file")
    keys = {s: split_cache.cache_key(spec, source, split_files[s]) for s in splits}
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
                keys[s] = split_cache.cache_key(spec, source, split_files[s])
                if split_cache.read_cache_path(spec, s, keys[s], source.root) is None:
                    missing.append(s)
        try:
            built = _build(spec, source, {s: split_files[s] for s in missing}, progress, skip_bad_images)
        except DataError:
            if all(s in splits for s in missing):
                raise
            # A problem in a split that was not asked for must not block the ones that were.
            built = _build(spec, source, {s: split_files[s] for s in missing if s in splits}, progress,
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


def build_metadataset(split: SplitData, with_index: bool = False):
    """A `learn2learn.data.MetaDataset` over `split`: items (float image [C, H, W] in [0, 1], label)
    or, with `with_index`, (image, label, index).  The label maps are passed in, so construction
    does not iterate over the images."""
    import learn2learn as l2l

    labels = split.labels.tolist()
    labels_to_indices: Dict[int, List[int]] = {c: [] for c in range(split.num_classes)}
    for i, c in enumerate(labels):
        labels_to_indices[c].append(i)
    indices_to_labels = dict(enumerate(labels))
    return l2l.data.MetaDataset(_SplitDataset(split, with_index), labels_to_indices=labels_to_indices,
                                indices_to_labels=indices_to_labels)


def check_disjoint(splits: Mapping[str, SplitData]) -> None:
    """Raise DataError if two splits share a class.

    Names are compared without a trailing '/rotDDD', so two rotations of one Omniglot character
    in different splits count as a shared class.
    """
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            base_a = {_ROT_RE.sub("", n) for n in splits[a].class_names}
            base_b = {_ROT_RE.sub("", n) for n in splits[b].class_names}
            common = sorted(base_a & base_b)
            if common:
                shown = ", ".join(common[:3]) + (f" and {len(common) - 3} more" if len(common) > 3 else "")
                raise DataError(f"splits {a} and {b} share {len(common)} class(es): {shown}; "
                                "fix the split files so every class is in one split only")


def dataset_spec(dataset: str) -> DatasetSpec:
    """The DatasetSpec of `dataset`, or a DataError listing the valid names and the closest match."""
    if dataset in DATASETS:
        return DATASETS[dataset]
    return _unknown("dataset", dataset, list(DATASETS), "pass --dataset with one of them")


class _SplitDataset(torch.utils.data.Dataset):
    def __init__(self, split: SplitData, with_index: bool) -> None:
        self.images, self.labels, self.with_index = split.images, split.labels, with_index

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255.0)
        y = int(self.labels[i])
        return (x, y, i) if self.with_index else (x, y)


# ----------------------------------------------------------------------------- split files


def _split_files(spec: DatasetSpec, root: Path, split_dir: Optional[PathLike]) -> Dict[str, Path]:
    """split name -> file for the splits whose file exists: `split_dir` if given, else the data
    root's own `{split}.txt` (Omniglot) / `{split}.csv` (mini-ImageNet) when present, else the packaged one."""
    ext = "txt" if spec.name == "omniglot" else "csv"
    out = {}
    for s in spec.splits:
        if split_dir is not None:
            candidates = [Path(split_dir) / f"{s}.{ext}"]
        elif spec.name == "miniimagenet":
            candidates = [root / f"{s}.csv", SPLITS_DIR / "miniimagenet-ravi" / f"{s}.csv"]
        else:  # a data root may carry its own split files (small custom data, tests)
            candidates = [root / f"{s}.txt", SPLITS_DIR / "omniglot-vinyals" / f"{s}.txt"]
        for c in candidates:
            if c.is_file():
                out[s] = c
                break
    return out


def _expected_split_file(spec: DatasetSpec, split: str, root: Path, split_dir: Optional[PathLike]) -> Path:
    ext = "txt" if spec.name == "omniglot" else "csv"
    if split_dir is not None:
        return Path(split_dir) / f"{split}.{ext}"
    sub = "omniglot-vinyals" if spec.name == "omniglot" else "miniimagenet-ravi"
    return SPLITS_DIR / sub / f"{split}.{ext}"


def read_omniglot_split(path: Path) -> List[Tuple[str, str, int]]:
    """Lines `Alphabet/characterNN/rotDDD` -> [(alphabet, character, degrees)]."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("/")
        m = re.fullmatch(r"rot(\d{3})", parts[-1]) if len(parts) == 3 else None
        if m is None or int(m.group(1)) % 90 or int(m.group(1)) >= 360:
            raise DataError(f"{path} line {n}: expected 'Alphabet/characterNN/rotDDD' with DDD in "
                            f"000/090/180/270, got {line!r}; fix the split file")
        out.append((parts[0], parts[1], int(m.group(1))))
    return out


def read_csv(path: Path) -> List[Tuple[str, str]]:
    """A mini-ImageNet split file (header `filename,label`) -> [(filename, label)]."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
            raise DataError(f"{path}: expected a header 'filename,label', got {header!r}; fix the split file")
        for n, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"{path} line {n}: expected 'filename,label', got {row!r}; fix the split file")
            rows.append((row[0].strip(), row[1].strip()))
    return rows


# ----------------------------------------------------------------------------- building


def _progress(total: int, desc: str, enabled: bool) -> Progress:
    """Decoding progress: a redrawn line on a terminal, a plain line per tenth otherwise."""
    return Progress(desc, total, enabled=enabled, log_every=max(1, total // 10), unit="image")


class _BadImages:
    """Collects the images skipped under skip_bad_images; re-raises the DataError otherwise."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.files: List[str] = []

    def attempt(self, fn, *args):
        """fn(*args), or None (recorded) when it raises DataError and skipping is on."""
        try:
            return fn(*args)
        except DataError as e:
            if not self.skip:
                raise
            self.files.append(str(e).split("; ")[0])
            return None


def _build(spec: DatasetSpec, source: image_sources.Source, files: Dict[str, Path], progress: bool,
           skip_bad_images: bool = False) -> Dict[str, SplitData]:
    if spec.name == "omniglot":
        assert isinstance(source, image_sources.OmniglotSource)
        return _build_omniglot(spec, source, files, progress, skip_bad_images)
    return _build_miniimagenet(spec, source, files, progress, skip_bad_images)


def _build_omniglot(spec: DatasetSpec, source: image_sources.OmniglotSource, files: Dict[str, Path],
                    progress: bool, skip_bad_images: bool = False) -> Dict[str, SplitData]:
    import numpy as np

    tree = source.index()
    lines = {s: read_omniglot_split(f) for s, f in files.items()}
    needed: Dict[Tuple[str, str], Tuple[str, List[str]]] = {}
    absent = "".join(f" ({a}.zip or {a}/ not found)" for a in image_sources.OMNIGLOT_ARCHIVES
                     if a not in source.archives)
    for s, entries in lines.items():
        for alphabet, char, deg in entries:
            name = f"{alphabet}/{char}/rot{deg:03d}"
            if alphabet not in tree:
                raise DataError(f"class {name} of the {spec.name} {s} split ({files[s]}) is not in the data "
                                f"under {source.root}: alphabet {alphabet!r} is not in "
                                f"{' or '.join(sorted(source.archives))}{absent}; pass --data-root with both "
                                "zips or folders, or fix the split file")
            if char not in tree[alphabet]:
                raise DataError(f"class {name} of the {spec.name} {s} split ({files[s]}) is not in the data "
                                f"under {source.root}: alphabet {alphabet} has no {char}; pass the right "
                                "--data-root or fix the split file")
            needed[(alphabet, char)] = tree[alphabet][char]
    for (alphabet, char), (arch, members) in needed.items():
        if len(members) < 2:
            folder = source.describe_folder(arch, alphabet, char)
            empty = f" (its folder {folder} holds no .png images)" if not members else ""
            raise DataError(f"too few images for class {alphabet}/{char} under {source.root}: found "
                            f"{len(members)}{empty}, need at least 2 (one support, one query); restore the "
                            "dataset or remove the class from the split file")
    base: Dict[Tuple[str, str], torch.Tensor] = {}
    bad = _BadImages(skip_bad_images)
    size = spec.image_size
    total = sum(len(m) for _, m in needed.values())
    with _progress(total, f"decoding {spec.name} ({', '.join(files)})", progress) as bar:
        for archive in sorted({a for a, _ in needed.values()}):
            with source.reader(archive) as reader:
                for key, (arch, members) in needed.items():
                    if arch != archive:
                        continue
                    arrs = []
                    for m in members:
                        data = bad.attempt(reader.read, m)
                        arr = None if data is None else bad.attempt(image_sources.decode, data,
                                                                    reader.describe(m), "L", size)
                        if arr is not None:
                            arrs.append(arr)
                    arr = np.stack(arrs) if arrs else np.zeros((0, size, size), dtype=np.uint8)
                    base[key] = torch.from_numpy(255 - arr)  # invert: strokes 255, background 0
                    bar.advance(len(members))
    out = {}
    for s, entries in lines.items():
        imgs, labels, names = [], [], []
        for c, (alphabet, char, deg) in enumerate(entries):
            x = base[(alphabet, char)]
            imgs.append(torch.rot90(x, k=deg // 90, dims=(-2, -1)))
            labels.append(torch.full((x.shape[0],), c, dtype=torch.long))
            names.append(f"{alphabet}/{char}/rot{deg:03d}")
        chars = {(a, ch) for a, ch, _ in entries}
        skipped = [f for f in bad.files if any(f"/{a}/{ch}/" in f for a, ch in chars)]
        out[s] = _finish(spec, s, imgs, labels, names, files[s], skipped)
    return out


def _build_miniimagenet(spec: DatasetSpec, source: image_sources.Source, files: Dict[str, Path],
                        progress: bool, skip_bad_images: bool = False) -> Dict[str, SplitData]:
    import numpy as np

    rows = {s: read_csv(f) for s, f in files.items()}
    size = spec.image_size
    out = {}
    with _progress(sum(len(r) for r in rows.values()), f"decoding {spec.name} ({', '.join(files)})",
                   progress) as bar:
        for s, entries in rows.items():
            groups: Dict[str, List[str]] = {}
            for fname, label in entries:
                groups.setdefault(label, []).append(fname)
            imgs, labels, names = [], [], []
            bad = _BadImages(skip_bad_images)
            for c, (label, fnames) in enumerate(groups.items()):
                arrs = []
                for fname in fnames:
                    p = source.root / "images" / fname
                    try:
                        data = p.read_bytes()
                    except FileNotFoundError:
                        raise DataError(f"class {label} of the {spec.name} {s} split ({files[s]}): image {p} not "
                                        "found; pass the right --data-root or fix the split file") from None
                    except OSError as e:
                        data = bad.attempt(_raise, DataError(
                            f"cannot read image {p}: {one_line(e)}; fix its permissions, restore the file "
                            "or pass --skip-bad-images"))
                    arr = None if data is None else bad.attempt(image_sources.decode, data, str(p), "RGB", size)
                    if arr is not None:
                        arrs.append(arr)
                    bar.advance(1)
                arr = np.stack(arrs) if arrs else np.zeros((0, size, size, 3), dtype=np.uint8)
                x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
                imgs.append(x)
                labels.append(torch.full((x.shape[0],), c, dtype=torch.long))
                names.append(label)
            out[s] = _finish(spec, s, imgs, labels, names, files[s], bad.files)
    return out


def _raise(exc: BaseException):
    raise exc


def _finish(spec: DatasetSpec, split: str, imgs: List[torch.Tensor], labels: List[torch.Tensor],
            names: List[str], split_file: Path, skipped: Sequence[str] = ()) -> SplitData:
    if len(names) < 2:
        raise DataError(f"too few classes in the {spec.name} {split} split ({split_file}): found {len(names)}, "
                        "a few-shot task needs at least 2; fix the split file")
    for x, name in zip(imgs, names):
        if x.shape[0] < 2:
            after = " after skipping unreadable images" if skipped else ""
            raise DataError(f"too few images for class {name} in the {spec.name} {split} split{after}: found "
                            f"{x.shape[0]}, need at least 2 (one support, one query); fix the split file or data")
    images = torch.cat(imgs)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return SplitData(images.contiguous(), torch.cat(labels), names, spec.name, split, list(skipped))


# ----------------------------------------------------------------------------- errors


def _unknown(kind: str, value: str, valid: Iterable[str], fix: str):
    valid = list(valid)
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"unknown {kind} {value!r}{hint}; valid: {', '.join(valid)}; {fix}")


def _check_split_name(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        _unknown("split", split, spec.splits, f"{spec.name} has splits {', '.join(spec.splits)}")
