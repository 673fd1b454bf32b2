"""mini-ImageNet (Vinyals et al. 2016; split of Ravi & Larochelle 2017) as uint8 tensors.

`images/*.jpg` under the data root, `{train,val,test}.csv` (`filename,label`) from the data root
when present, otherwise the packaged ones; RGB, resized to 84x84 with LANCZOS only when an image
is not already 84x84.  There is no bundled copy.  The source's fingerprint (cache key input) is
the relative paths, sizes and mtimes of the images the split file lists.
"""
from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from l2l_app.data import images
from l2l_app.data.types import SPLITS_DIR, Dataset, PathLike, Source, SplitData
from l2l_app.errors import DataError
from l2l_app.registry import DATASETS


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


def _holds_jpegs(folder: Path) -> bool:
    """Whether `folder` itself holds .jpg/.jpeg files (a mini-ImageNet images/ folder)."""
    try:
        with os.scandir(folder) as entries:
            return any(e.name.lower().endswith((".jpg", ".jpeg")) for e in entries)
    except OSError:
        return False


def _no_images_folder(root: Path) -> str:
    """The message for a mini-ImageNet data root without images/, pointing at the right folder."""
    expected = f"no mini-ImageNet images under {root}: expected a folder images/ with the 84x84 JPEGs"
    if not _holds_jpegs(root):
        return (f"{expected} (and optionally train.csv, val.csv, test.csv); pass --data-root the folder "
                "that contains images/")
    if root.name == "images":
        return (f"{expected}, but {root} is that images/ folder itself (it holds the JPEGs); pass its parent: "
                f"--data-root {root.parent}")
    return (f"{expected}, but {root} holds the JPEGs itself; move them into {root / 'images'} and keep "
            f"--data-root {root}")


class MiniImageNet(Dataset):
    """mini-ImageNet: RGB 84x84, classes as the split file's labels in order of first appearance."""

    def open(self, data_root: Optional[PathLike]) -> MiniImageNetSource:
        root = images.resolve_root(self, data_root)
        if not (root / "images").is_dir():
            raise DataError(_no_images_folder(root))
        return MiniImageNetSource(root)

    def build(self, source: Source, files: Dict[str, Path], progress: bool,
              skip_bad_images: bool = False) -> Dict[str, SplitData]:
        """Decode every image the split files `files` list, split by split."""
        import numpy as np

        rows = {s: read_csv(f) for s, f in files.items()}
        size = self.image_size
        out = {}
        with images.decode_progress(sum(len(r) for r in rows.values()), f"decoding {self.name} ({', '.join(files)})",
                                    progress) as bar:
            for s, entries in rows.items():
                groups: Dict[str, List[str]] = {}
                for fname, label in entries:
                    groups.setdefault(label, []).append(fname)
                imgs = []
                bad = images.BadImages(skip_bad_images)
                for label, fnames in groups.items():
                    arrs = []
                    for fname in fnames:
                        p = source.root / "images" / fname
                        data: Optional[bytes] = None
                        try:
                            data = p.read_bytes()
                        except FileNotFoundError:
                            raise DataError(f"class {label} of the {self.name} {s} split ({files[s]}): image {p} "
                                            "not found; pass the right --data-root or fix the split file") from None
                        except OSError as e:
                            bad.record(DataError(f"cannot read image {p}: {images.one_line(e)}; fix its permissions, "
                                                 "restore the file or pass --skip-bad-images"))
                        arr = None if data is None else bad.attempt(images.decode, data, str(p), "RGB", size)
                        if arr is not None:
                            arrs.append(arr)
                        bar.advance(1)
                    arr = np.stack(arrs) if arrs else np.zeros((0, size, size, 3), dtype=np.uint8)
                    imgs.append(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous())  # [n, 3, size, size]
                out[s] = SplitData.from_classes(imgs, list(groups), self.name, s, files[s], bad.files)
        return out


MINIIMAGENET = MiniImageNet("miniimagenet", in_channels=3, image_size=84, default_root=None, split_suffix="csv",
                            packaged_splits=SPLITS_DIR / "miniimagenet-ravi",
                            root_hint="a folder with images/*.jpg (and optionally train/val/test.csv in the "
                                      "Ravi & Larochelle layout)")
DATASETS.register(MINIIMAGENET.name, MINIIMAGENET)
