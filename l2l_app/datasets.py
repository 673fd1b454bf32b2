"""Datasets: Omniglot (Vinyals split, rotations) and mini-ImageNet (Ravi split) as uint8 tensors.

Each split is decoded once, resized, and cached as one uint8 tensor file; a later load reads
that file (well under a second).  Nothing is ever downloaded.

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

Images of any PIL mode (1-bit, grey, palette, RGB, RGBA, ...) are converted to the dataset's
mode (L for Omniglot, RGB for mini-ImageNet), transparency composited over white.  An unreadable
image raises DataError naming the file, or with `skip_bad_images` is left out and listed in
`SplitData.skipped` (such a split is not cached).

Shapes: `SplitData.images` is uint8 [N, C, H, W]; `labels` int64 [N] grouped by class.
"""
from __future__ import annotations

import csv
import difflib
import errno
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from l2l_app.errors import DataError

PathLike = Union[str, Path]

CACHE_VERSION = 1
PACKAGE_DIR = Path(__file__).resolve().parent
SPLITS_DIR = PACKAGE_DIR / "splits"
BUNDLED_DATA = PACKAGE_DIR.parent / "data"
RESIZE_FILTER = "LANCZOS"
OMNIGLOT_ARCHIVES = ("images_background", "images_evaluation")
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
    source = _open_source(spec, data_root)
    split_files = _split_files(spec, source.root, split_dir)
    # On a miss, build every split whose file exists, so the archive is decoded only once.
    wanted = list(splits) + [s for s in spec.splits if s not in splits and s in split_files]
    for s in splits:
        if s not in split_files:
            raise DataError(f"split file for the {spec.name} {s} split not found: expected "
                            f"{_expected_split_file(spec, s, source.root, split_dir)}; pass --data-root or add the file")
    keys = {s: cache_key(spec, source, split_files[s]) for s in splits}
    out: Dict[str, SplitData] = {}
    if cache:
        for s in splits:
            hit = _read_cache(spec, s, keys[s], source.root)
            if hit is not None:
                out[s] = hit
    missing = [s for s in splits if s not in out]
    if missing:
        if cache:  # decode the archive once: also build the other splits that have no cache yet
            for s in wanted[len(splits):]:
                keys[s] = cache_key(spec, source, split_files[s])
                if _read_cache_path(spec, s, keys[s], source.root) is None:
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
                _write_cache(data, spec, s, keys[s], source.root)
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


def cache_key(spec: DatasetSpec, source: "_Source", split_file: Path) -> str:
    """Short hash of source content, preprocessing parameters, the split file and CACHE_VERSION."""
    h = hashlib.sha256()
    params = {"version": CACHE_VERSION, "dataset": spec.name, "image_size": spec.image_size,
              "channels": spec.in_channels, "filter": RESIZE_FILTER,
              "rotations": spec.name == "omniglot", "invert": spec.name == "omniglot"}
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update(source.fingerprint(split_file).encode())
    h.update(split_file.read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- sources


class _SplitDataset(torch.utils.data.Dataset):
    def __init__(self, split: SplitData, with_index: bool) -> None:
        self.images, self.labels, self.with_index = split.images, split.labels, with_index

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255.0)
        y = int(self.labels[i])
        return (x, y, i) if self.with_index else (x, y)


class _Source:
    """A data root that has been checked to exist; knows how to fingerprint itself."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def fingerprint(self, split_file: Path) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


class _OmniglotSource(_Source):
    """Two archives (zip or folder) mapping alphabet -> character -> sorted PNG names."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.archives: Dict[str, Tuple[str, Path]] = {}  # name -> ('zip'|'folder', path)
        for name in OMNIGLOT_ARCHIVES:
            z, d = root / f"{name}.zip", root / name
            if z.is_file():
                self.archives[name] = ("zip", z)
            elif d.is_dir():
                self.archives[name] = ("folder", d)
        if not self.archives:
            raise DataError(f"no Omniglot data under {root}: expected images_background.zip and "
                            "images_evaluation.zip, or the extracted folders images_background/ and "
                            "images_evaluation/; pass --data-root pointing at the folder that holds them")
        self._fp: Optional[str] = None
        self._folders: Dict[Tuple[str, str], str] = {}  # (alphabet, char) -> its folder, for messages

    def fingerprint(self, split_file: Path) -> str:
        if self._fp is None:
            parts = []
            for name, (kind, path) in sorted(self.archives.items()):
                parts.append(f"{name}:{kind}:{_sha256_file(path) if kind == 'zip' else _folder_fingerprint(path)}")
            self._fp = "|".join(parts)
        return self._fp

    def index(self) -> Dict[str, Dict[str, Tuple[str, List[str]]]]:
        """alphabet -> character -> (archive name, sorted member paths)."""
        tree: Dict[str, Dict[str, Tuple[str, List[str]]]] = {}
        for name, (kind, path) in self.archives.items():
            if kind == "zip":
                try:
                    with zipfile.ZipFile(path) as zf:
                        all_names = zf.namelist()
                    members = [m for m in all_names if m.lower().endswith(".png")]
                except (zipfile.BadZipFile, OSError) as e:
                    raise DataError(f"cannot read {path}: {_one_line(e)}; replace the corrupt zip or extract it "
                                    "and pass --data-root to the folder") from None
                # directory entries: an empty character folder is still a (too small) class
                dirs = [m.rstrip("/") for m in all_names if m.endswith("/")]
            else:
                files, dirs = _walk(path)
                members = [m for m in files if m.lower().endswith(".png")]
            for d in dirs:
                parts = d.split("/")
                if len(parts) >= 2:
                    tree.setdefault(parts[-2], {}).setdefault(parts[-1], (name, []))
                    self._folders[(parts[-2], parts[-1])] = f"{path}:{d}/" if kind == "zip" else f"{path / d}/"
            for m in members:
                parts = m.split("/")
                if len(parts) < 3:
                    continue
                alphabet, char = parts[-3], parts[-2]
                where = "/".join(parts[:-1])
                self._folders.setdefault((alphabet, char), f"{path}:{where}/" if kind == "zip" else f"{path / where}/")
                entry = tree.setdefault(alphabet, {}).setdefault(char, (name, []))
                entry[1].append(m)
        for chars in tree.values():
            for _, files in chars.values():
                files.sort()
        return tree

    def reader(self, name: str) -> "_Reader":
        kind, path = self.archives[name]
        return _Reader(kind, path)

    def describe_folder(self, archive: str, alphabet: str, char: str) -> str:
        """Where the class folder alphabet/char is (after `index()`)."""
        return self._folders.get((alphabet, char), f"{self.archives[archive][1]} .../{alphabet}/{char}/")


class _Reader:
    """Reads member bytes from a zip or a folder; a context manager."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path, self.zf = kind, path, None

    def __enter__(self) -> "_Reader":
        if self.kind == "zip":
            self.zf = zipfile.ZipFile(self.path)
        return self

    def __exit__(self, *exc) -> None:
        if self.zf is not None:
            self.zf.close()

    def describe(self, member: str) -> str:
        return f"{self.path}:{member}" if self.kind == "zip" else str(self.path / member)

    def read(self, member: str) -> bytes:
        try:
            return self.zf.read(member) if self.zf is not None else (self.path / member).read_bytes()
        except (OSError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else _one_line(e)
            raise DataError(f"cannot read image {self.describe(member)}: {reason}; restore the file, "
                            "re-extract the dataset or pass --skip-bad-images") from None


class _FolderSource(_Source):
    """mini-ImageNet: `images/*.jpg`; fingerprint = relative paths, sizes and mtimes of the split's files."""

    def fingerprint(self, split_file: Path) -> str:
        h = hashlib.sha256()
        for name, _ in _read_csv(split_file):
            p = self.root / "images" / name
            try:
                st = p.stat()
                h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{name}:missing\n".encode())
        return h.hexdigest()


def _open_source(spec: DatasetSpec, data_root: Optional[PathLike]) -> _Source:
    if data_root is None:
        if spec.default_root is None:
            raise DataError(f"{spec.name} has no bundled copy: pass --data-root pointing at a folder with "
                            "images/*.jpg (and optionally train/val/test.csv in the Ravi & Larochelle layout)")
        root = spec.default_root
        if not root.is_dir():
            raise DataError(f"the bundled {spec.name} data is missing at {root}; pass --data-root pointing at "
                            "the folder with images_background.zip and images_evaluation.zip")
    else:
        root = Path(data_root).expanduser()
        if root.is_symlink() and not root.exists():
            try:
                os.stat(root)
                why = "cannot be followed"
            except OSError as e:
                why = "is a symlink loop" if e.errno == errno.ELOOP else f"is a dangling symlink (to {os.readlink(root)})"
            raise DataError(f"data root {root} {why}; fix the link or pass --data-root the real folder")
        if not root.exists():
            raise DataError(f"data root {root} does not exist; pass --data-root an existing folder")
        if not root.is_dir():
            hint = f" (pass its folder {root.parent})" if root.suffix == ".zip" or root.parent.is_dir() else ""
            raise DataError(f"data root {root} is a file, not a folder; pass --data-root the folder that holds "
                            f"the data{hint}")
    if not _readable(root):
        raise DataError(f"data root {root} is not readable (permission denied); fix its permissions or pass "
                        "--data-root a readable copy")
    if spec.name == "omniglot":
        return _OmniglotSource(root)
    if not (root / "images").is_dir():
        raise DataError(f"no mini-ImageNet images under {root}: expected a folder images/ with the 84x84 JPEGs "
                        "(and optionally train.csv, val.csv, test.csv); pass --data-root pointing at that folder")
    return _FolderSource(root)


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK | os.X_OK)


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


def _read_csv(path: Path) -> List[Tuple[str, str]]:
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


# ----------------------------------------------------------------------------- decoding


def _decode(data: bytes, where: str, mode: str, size: int):
    """Bytes of an image -> uint8 numpy array [size, size] (mode 'L') or [size, size, 3] ('RGB').

    Any PIL mode is accepted: 1-bit, grey, palette, RGB, CMYK, 16-bit grey, and images with
    transparency (RGBA, LA, palette with a transparent colour), which are first composited
    over a white background (Omniglot's paper colour) so transparent pixels do not turn black.
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = _to_mode(img, mode)
            if img.size != (size, size):
                img = img.resize((size, size), resample=getattr(Image.Resampling, RESIZE_FILTER))
            return np.asarray(img, dtype=np.uint8)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on corrupt files
        raise DataError(f"cannot decode image {where}: {_one_line(e)}; the file is corrupt, restore it, "
                        "re-extract the dataset or pass --skip-bad-images") from None


def _to_mode(img, mode: str):
    """Convert a PIL image of any mode to 'L' or 'RGB' (transparency composited over white)."""
    from PIL import Image

    if img.mode == mode:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits, not clip
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
        return img if mode == "L" else img.convert(mode)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("L", "1") and "transparency" in img.info:
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert(mode)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


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


def _build(spec: DatasetSpec, source: _Source, files: Dict[str, Path], progress: bool,
           skip_bad_images: bool = False) -> Dict[str, SplitData]:
    if spec.name == "omniglot":
        assert isinstance(source, _OmniglotSource)
        return _build_omniglot(spec, source, files, progress, skip_bad_images)
    return _build_miniimagenet(spec, source, files, progress, skip_bad_images)


def _build_omniglot(spec: DatasetSpec, source: _OmniglotSource, files: Dict[str, Path],
                    progress: bool, skip_bad_images: bool = False) -> Dict[str, SplitData]:
    import numpy as np

    tree = source.index()
    lines = {s: read_omniglot_split(f) for s, f in files.items()}
    needed: Dict[Tuple[str, str], Tuple[str, List[str]]] = {}
    absent = "".join(f" ({a}.zip or {a}/ not found)" for a in OMNIGLOT_ARCHIVES if a not in source.archives)
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
                        arr = None if data is None else bad.attempt(_decode, data, reader.describe(m), "L", size)
                        if arr is not None:
                            arrs.append(arr)
                    arr = np.stack(arrs) if arrs else np.zeros((0, size, size), dtype=np.uint8)
                    base[key] = torch.from_numpy(255 - arr)  # invert: strokes 255, background 0
                    bar.update(len(members))
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


def _build_miniimagenet(spec: DatasetSpec, source: _Source, files: Dict[str, Path],
                        progress: bool, skip_bad_images: bool = False) -> Dict[str, SplitData]:
    import numpy as np

    rows = {s: _read_csv(f) for s, f in files.items()}
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
                            f"cannot read image {p}: {_one_line(e)}; fix its permissions, restore the file "
                            "or pass --skip-bad-images"))
                    arr = None if data is None else bad.attempt(_decode, data, str(p), "RGB", size)
                    if arr is not None:
                        arrs.append(arr)
                    bar.update(1)
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


# ----------------------------------------------------------------------------- cache


def cache_dirs(root: Path) -> List[Path]:
    """Where caches are looked for, in order: `<root>/.cache`, then $L2L_APP_CACHE_DIR or ~/.cache/l2l_app."""
    fallback = os.environ.get("L2L_APP_CACHE_DIR")
    return [root / ".cache", Path(fallback).expanduser() if fallback else Path.home() / ".cache" / "l2l_app"]


def _cache_name(spec: DatasetSpec, split: str, key: str) -> str:
    return f"{spec.name}-{split}-{key}.pt"


def _read_cache_path(spec: DatasetSpec, split: str, key: str, root: Path) -> Optional[Path]:
    for d in cache_dirs(root):
        p = d / _cache_name(spec, split, key)
        if p.is_file():
            return p
    return None


def _read_cache(spec: DatasetSpec, split: str, key: str, root: Path) -> Optional[SplitData]:
    p = _read_cache_path(spec, split, key, root)
    if p is None:
        return None
    try:
        d = torch.load(p, map_location="cpu", weights_only=True)
        return SplitData(d["images"], d["labels"], list(d["class_names"]), spec.name, split)
    except Exception as e:  # a truncated or foreign file: rebuild it
        warnings.warn(f"ignoring unreadable cache {p}: {_one_line(e)}", stacklevel=3)
        return None


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


def _write_cache(data: SplitData, spec: DatasetSpec, split: str, key: str, root: Path) -> Optional[Path]:
    """Atomically write the cache into the first writable cache dir; warn and return None if none is."""
    payload = {"images": data.images, "labels": data.labels, "class_names": list(data.class_names),
               "key": key, "version": CACHE_VERSION}
    for d in cache_dirs(root):
        if not _dir_writable(d):
            continue
        tmp = None
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=d)
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache may be shared
            target = d / _cache_name(spec, split, key)
            os.replace(tmp, target)
            return target
        except OSError:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    warnings.warn(f"could not write a cache for the {spec.name} {split} split (no writable folder among "
                  f"{', '.join(map(str, cache_dirs(root)))}); set L2L_APP_CACHE_DIR", stacklevel=3)
    return None


# ----------------------------------------------------------------------------- helpers


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _folder_fingerprint(folder: Path) -> str:
    """sha256 of the sorted (relative path, size, mtime) of every file under `folder` (symlinks followed)."""
    entries: List[str] = []
    files, _ = _walk(folder)
    for rel in files:
        try:
            st = (folder / rel).stat()
            entries.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
        except OSError as e:  # a dangling link or a file that loops onto itself: read later, reported there
            entries.append(f"{rel}:unreadable:{e.errno}")
    entries.sort()
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _walk(folder: Path) -> Tuple[List[str], List[str]]:
    """(files, folders) under `folder` as sorted relative POSIX paths, following symlinks.

    A symlink that leads back to one of its own parent folders (a loop) raises DataError naming
    it; an entry that cannot be stat'ed (a dangling link, a link to itself) is listed as a file,
    so reading it later gives an error naming the file (or skips it under --skip-bad-images).
    """
    files: List[str] = []
    dirs: List[str] = []

    def visit(path: str, prefix: str, ancestors: Tuple[Tuple[int, int], ...]) -> None:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"cannot list folder {path}: {_one_line(e)}; fix its permissions or pass "
                            "--data-root another copy") from None
        for e in entries:
            rel = prefix + e.name
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(rel)
                continue
            try:
                st = os.stat(e.path)
            except OSError:
                files.append(rel)
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in ancestors:
                raise DataError(f"symlink loop in the data: {e.path} leads back to its parent folder "
                                f"{os.path.realpath(e.path)}; remove or fix the link")
            dirs.append(rel)
            visit(e.path, rel + "/", ancestors + (ident,))

    st = os.stat(folder)
    visit(str(folder), "", ((st.st_dev, st.st_ino),))
    return files, dirs


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text


def _unknown(kind: str, value: str, valid: Iterable[str], fix: str):
    valid = list(valid)
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"unknown {kind} {value!r}{hint}; valid: {', '.join(valid)}; {fix}")


def _check_split_name(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        _unknown("split", split, spec.splits, f"{spec.name} has splits {', '.join(spec.splits)}")
