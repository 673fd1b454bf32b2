"""mini-ImageNet (Vinyals et al. 2016; split of Ravi & Larochelle 2017) as uint8 tensors.

Two layouts of a data root:

* Ravi & Larochelle's: `images/*.jpg`, with `{train,val,test}.csv` (`filename,label`) from the data
  root when present, otherwise the packaged ones.  Classes: the split file's labels in order of first
  appearance.  Decoded in parallel threads (`images.decode_files`).  The source's fingerprint (cache
  key input) is the relative paths, sizes and mtimes of the images the split file lists.
* learn2learn's: `mini-imagenet-cache-{train,validation,test}.pkl` (and no `images/`), each a pickled
  dict {'image_data': uint8 [N, 84, 84, 3], 'class_dict': {class name: [row indices]}}, read only
  through `safe_pickle` (no code runs).  Splits train/val/test come from the train/validation/test
  pickles; classes in sorted order.  Each pickle stands in for its split file; the fingerprint is its
  size and mtime (a pickle is ~1 GB: never hashed byte by byte).

Both give RGB 84x84 by default; `--image-size`, `--channels` and `--resize` apply (PIL, LANCZOS; an
image already the target size is not resampled).  There is no bundled copy.
"""
from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch

from l2l_app.data import images, safe_pickle
from l2l_app.data.types import SPLITS_DIR, Dataset, PathLike, Source, SplitData
from l2l_app.errors import DataError
from l2l_app.registry import DATASETS

if TYPE_CHECKING:
    import numpy as np

#: learn2learn's pickle of each split (its 'validation' is our 'val')
PICKLE_FILES: Dict[str, str] = {"train": "mini-imagenet-cache-train.pkl",
                                "val": "mini-imagenet-cache-validation.pkl",
                                "test": "mini-imagenet-cache-test.pkl"}
_BOTH_LAYOUTS = ("a folder images/ with the 84x84 JPEGs (and optionally train.csv, val.csv, test.csv: Ravi & "
                 f"Larochelle's layout), or learn2learn's {', '.join(PICKLE_FILES.values())}")


class MiniImageNetSource(Source):
    """`images/*.jpg`; fingerprint = relative paths, sizes and mtimes of the split's files."""

    def fingerprint(self, split_file: Path) -> str:
        h = hashlib.sha256()
        for name, _ in read_csv(split_file):
            p = self.root / "images" / name
            try:
                st = p.stat()
                h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{name}:missing\n".encode())
        return h.hexdigest()


class PickleSource(Source):
    """learn2learn's pickles; fingerprint = the split's pickle name, size and mtime (not its bytes)."""

    def fingerprint(self, split_file: Path) -> str:
        try:
            st = split_file.stat()
            return f"{split_file.name}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            return f"{split_file.name}:missing"


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


def read_pickle(path: Path) -> Tuple["np.ndarray", Dict[str, "np.ndarray"]]:
    """learn2learn's split pickle -> (image_data uint8 [N, H, W, 3], class name -> int64 row indices),
    checked; DataError naming `path` when it is not such a pickle or a class lists a row past N."""
    import numpy as np

    fix = "re-extract or re-download learn2learn's mini-ImageNet pickles"
    data = safe_pickle.load(path, str(path), encoding="latin1")  # latin1: also Python 2 pickles
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        got = f"a dict with keys {sorted(map(str, data))}" if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected learn2learn's mini-ImageNet pickle, a dict with 'image_data' and "
                        f"'class_dict', got {got}; {fix}")
    pixels, class_dict = data["image_data"], data["class_dict"]
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 4 and pixels.shape[3] == 3):
        got = f"{pixels.dtype} {list(pixels.shape)}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise DataError(f"{path}: 'image_data' must be a uint8 array [N, H, W, 3], got {got}; {fix}")
    if not isinstance(class_dict, dict):
        raise DataError(f"{path}: 'class_dict' must map class names to row indices, got "
                        f"{type(class_dict).__name__}; {fix}")
    n = pixels.shape[0]
    rows: Dict[str, np.ndarray] = {}
    for key, listed in class_dict.items():
        name = key.decode("latin1") if isinstance(key, bytes) else str(key)
        idx = np.asarray(listed)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise DataError(f"{path}: class {name} must list integer row indices, got {idx.dtype} "
                            f"{list(idx.shape)}; {fix}")
        outside = idx[(idx < 0) | (idx >= n)]
        if outside.size:
            raise DataError(f"{path}: class {name} lists row {int(outside[0])}, but 'image_data' has {n} images "
                            f"(rows 0..{n - 1}); {fix}")
        rows[name] = idx.astype(np.int64)
    return pixels, rows


def _holds_jpegs(folder: Path) -> bool:
    """Whether `folder` itself holds .jpg/.jpeg files (a mini-ImageNet images/ folder)."""
    try:
        with os.scandir(folder) as entries:
            return any(e.name.lower().endswith((".jpg", ".jpeg")) for e in entries)
    except OSError:
        return False


def _no_images_folder(root: Path) -> str:
    """The message for a mini-ImageNet data root with neither images/ nor pickles, pointing at the right folder."""
    expected = f"no mini-ImageNet images under {root}: expected {_BOTH_LAYOUTS}"
    if not _holds_jpegs(root):
        return f"{expected}; pass --data-root the folder that contains images/ or the pickles"
    if root.name == "images":
        return (f"{expected}, but {root} is that images/ folder itself (it holds the JPEGs); pass its parent: "
                f"--data-root {root.parent}")
    return (f"{expected}, but {root} holds the JPEGs itself; move them into {root / 'images'} and keep "
            f"--data-root {root}")


def _pickle_layout(root: Path) -> bool:
    """learn2learn's layout: no images/ folder, and at least one of its pickles."""
    return not (root / "images").is_dir() and any((root / name).exists() for name in PICKLE_FILES.values())


class MiniImageNet(Dataset):
    """mini-ImageNet: RGB 84x84; JPEGs + split files, or learn2learn's pickles (see the module doc)."""

    def open(self, data_root: Optional[PathLike]) -> Source:
        root = images.resolve_root(self, data_root)
        if not _pickle_layout(root):
            if not (root / "images").is_dir():
                raise DataError(_no_images_folder(root))
            return MiniImageNetSource(root)
        missing = [name for name in PICKLE_FILES.values() if not (root / name).is_file()]
        if missing:
            raise DataError(f"learn2learn's mini-ImageNet pickles under {root} are incomplete: {', '.join(missing)} "
                            f"not found; expected {_BOTH_LAYOUTS}; add the missing file(s) or pass --data-root "
                            "the complete folder")
        return PickleSource(root)

    def split_files(self, root: Path, split_dir: Optional[PathLike]) -> Dict[str, Path]:
        """split -> its split file; in learn2learn's layout its pickle (`split_dir` unused: the classes
        are the pickle's)."""
        if _pickle_layout(root):
            return {s: root / PICKLE_FILES[s] for s in self.splits if (root / PICKLE_FILES[s]).is_file()}
        return super().split_files(root, split_dir)

    def split_identity(self, split: str, split_file: Path) -> bytes:
        """A pickle's name (its content is in `PickleSource.fingerprint`, read from size and mtime); a
        split file's bytes."""
        if split_file.suffix == ".pkl":
            return f"learn2learn-pickle:{split_file.name}".encode()
        return super().split_identity(split, split_file)

    def build(self, source: Source, files: Dict[str, Path], progress: bool,
              skip_bad_images: bool = False) -> Dict[str, SplitData]:
        """Decode the splits `files` (split name -> split file or pickle): images uint8 [N, C, image_size,
        image_size], labels grouped by class."""
        if isinstance(source, PickleSource):
            return {s: self._from_pickle(s, path, progress) for s, path in files.items()}
        return self._from_jpegs(source, files, progress, skip_bad_images)

    # ------------------------------------------------------------------ Ravi & Larochelle's JPEGs
    def _from_jpegs(self, source: Source, files: Dict[str, Path], progress: bool,
                    skip_bad_images: bool) -> Dict[str, SplitData]:
        """Every image the split files list, decoded in threads under one progress bar."""
        classes = {s: _group_by_label(source.root / "images", read_csv(f)) for s, f in files.items()}
        self._check_listed_images_exist(classes, files)
        total = sum(len(paths) for groups in classes.values() for paths in groups.values())
        out = {}
        with images.decode_progress(total, f"decoding {self.name} ({', '.join(files)})", progress) as bar:
            for s, groups in classes.items():
                bad = images.BadImages(skip_bad_images)
                paths = [p for class_paths in groups.values() for p in class_paths]
                arrays = images.decode_files(paths, self.mode, self.image_size, self.resize, bad, bar)
                sources = [images.relative_name(p, source.root) for p, a in zip(paths, arrays) if a is not None]
                per_class = self._stack_classes(arrays, [len(class_paths) for class_paths in groups.values()])
                out[s] = SplitData.from_classes(per_class, list(groups), self.name, s, files[s], bad.files,
                                                sources=sources)
        return out

    def _check_listed_images_exist(self, classes: Dict[str, Dict[str, List[Path]]], files: Dict[str, Path]) -> None:
        """DataError naming the class, split file and path of the first listed image that does not exist
        (before any decoding, and whatever skip_bad_images says: the split file or data root is wrong)."""
        for s, groups in classes.items():
            for label, paths in groups.items():
                for p in paths:
                    try:
                        os.stat(p)
                    except FileNotFoundError:
                        raise DataError(f"class {label} of the {self.name} {s} split ({files[s]}): image {p} "
                                        "not found; pass the right --data-root or fix the split file") from None
                    except OSError:  # unreadable (a link loop, permissions): decode_files reports it
                        pass

    def _stack_classes(self, arrays: List[Optional["np.ndarray"]], counts: Sequence[int]) -> List[torch.Tensor]:
        """Consecutive runs of `counts[c]` decoded arrays (None: skipped) -> per-class uint8 [n_c, C, H, W].
        Each run is released from `arrays` once stacked, so a split is held about once, not twice."""
        per_class, start = [], 0
        for n in counts:
            kept = [a for a in arrays[start:start + n] if a is not None]
            per_class.append(images.to_chw(kept, self.mode, self.image_size))
            arrays[start:start + n] = [None] * n
            start += n
        return per_class

    # ------------------------------------------------------------------ learn2learn's pickles
    def _from_pickle(self, split: str, path: Path, progress: bool) -> SplitData:
        """One split from its pickle: classes in sorted order, each class's rows in the listed order."""
        pixels, rows = read_pickle(path)
        names = sorted(rows)
        total = sum(len(rows[name]) for name in names)
        with images.decode_progress(total, f"reading {self.name} {split} ({path.name})", progress) as bar:
            per_class = []
            for name in names:
                per_class.append(self._prepare_rows(pixels[rows[name]]))
                bar.advance(len(rows[name]))
        del pixels  # the split's pixels are now held once, in per_class
        return SplitData.from_classes(per_class, names, self.name, split, path)

    def _prepare_rows(self, pixels: "np.ndarray") -> torch.Tensor:
        """uint8 [n, H, W, 3] -> uint8 [n, C, image_size, image_size] in this dataset's mode and resize."""
        if self.mode == "RGB" and pixels.shape[1:3] == (self.image_size, self.image_size):
            return torch.from_numpy(pixels).permute(0, 3, 1, 2)
        from PIL import Image

        return images.to_chw([images.prepare(Image.fromarray(p), self.mode, self.image_size, self.resize)
                              for p in pixels], self.mode, self.image_size)


def _group_by_label(folder: Path, entries: Sequence[Tuple[str, str]]) -> Dict[str, List[Path]]:
    """[(filename, label)] -> label -> image paths under `folder`, labels in order of first appearance."""
    groups: Dict[str, List[Path]] = {}
    for fname, label in entries:
        groups.setdefault(label, []).append(folder / fname)
    return groups


MINIIMAGENET = MiniImageNet("miniimagenet", in_channels=3, image_size=84, default_root=None, split_suffix="csv",
                            packaged_splits=SPLITS_DIR / "miniimagenet-ravi",
                            root_hint="a folder with images/*.jpg (and optionally train/val/test.csv in the "
                                      "Ravi & Larochelle layout), or learn2learn's mini-imagenet-cache-*.pkl")
DATASETS.register(MINIIMAGENET.name, MINIIMAGENET)
