"""CIFAR-FS and FC100: few-shot splits of CIFAR-100 (Krizhevsky 2009), read from the user's own copy.

* CIFAR-FS (Bertinetto et al., "Meta-learning with differentiable closed-form solvers", ICLR 2019):
  64 / 16 / 20 fine classes;
* FC100 (Oreshkin et al., "TADAM", NeurIPS 2018): the fine classes of 12 / 4 / 4 superclasses
  (60 / 20 / 20 classes), so no superclass is shared between splits.

Both use all 600 images of a class: its 500 rows of the CIFAR-100 `train` batch, then its 100 rows
of `test`.  The data root holds the python version of CIFAR-100, either `cifar-100-python.tar.gz`
(members read straight from the archive, nothing extracted; it wins when both are present) or the
extracted folder `cifar-100-python/` with `train`, `test` and `meta`; --data-root may also be that
folder itself.  Nothing is downloaded.  The pickles are read with `l2l_app.data.safe_pickle`
(plain containers and NumPy arrays only); class names are `meta`'s `fine_label_names`.

A batch's `data` is uint8 [N, 3072]: per image 1024 red, then 1024 green, then 1024 blue values,
each 32x32 plane row-major, so a row reshapes to [3, 32, 32] (channel, row, column) as it is.  At
the default 32x32 RGB no pixel is resampled; another --image-size or --channels goes through
`images.decode` (PIL: 'L' conversion, LANCZOS resize with the --resize policy), like every dataset.

Split files (packaged in `l2l_app/splits/<dataset>/`, or `{train,val,test}.txt` in the data root):
one fine label name per line; blank lines and lines starting with '#' are skipped.  The source's
fingerprint (cache key input) is the size and mtime of the archive, or of the three files.
"""
from __future__ import annotations

import difflib
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from l2l_app.data import images, safe_pickle
from l2l_app.data.types import SPLITS_DIR, Dataset, PathLike, Source, SplitData
from l2l_app.errors import DataError
from l2l_app.registry import DATASETS

#: the archive, the folder it extracts to, and the pickles inside it
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
MEMBERS = ("train", "test", "meta")
#: side of a CIFAR image and the values of one row of a batch's `data` (3 x 32 x 32)
SIDE = 32
ROW = 3 * SIDE * SIDE


def _listing(items: Sequence[str]) -> str:
    """['train', 'test', 'meta'] -> 'train, test and meta'."""
    return " and ".join(filter(None, [", ".join(items[:-1]), items[-1]]))


_LOOKED_FOR = (f"{ARCHIVE}, or the extracted folder {FOLDER}/ with {_listing(MEMBERS)} "
               f"(or pass --data-root that folder itself); nothing is downloaded: get the python version of "
               "CIFAR-100 from https://www.cs.toronto.edu/~kriz/cifar.html")


class Cifar100(Source):
    """The python version of CIFAR-100 under a data root: `path` is the tar.gz (`is_archive`) or the extracted
    folder with `train`, `test` and `meta`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        if (root / ARCHIVE).is_file():
            self.is_archive, self.path = True, root / ARCHIVE
            return
        folder = root / FOLDER if (root / FOLDER).is_dir() else root  # extracted under the root, or the root itself
        absent = [m for m in MEMBERS if not (folder / m).is_file()]
        if folder == root and len(absent) == len(MEMBERS):
            raise DataError(f"no CIFAR-100 data under {root}: expected {_LOOKED_FOR}")
        if absent:
            raise DataError(f"the CIFAR-100 folder {folder} lacks {_listing(absent)} (it needs {_listing(MEMBERS)}); "
                            f"extract {ARCHIVE} again or pass --data-root the folder that holds it")
        self.is_archive, self.path = False, folder

    def describe(self, member: str = "") -> str:
        """Where `member` is, for messages: `.../cifar-100-python.tar.gz:meta` or `.../cifar-100-python/meta`."""
        if not member:
            return str(self.path)
        return f"{self.path}:{member}" if self.is_archive else str(self.path / member)

    def fingerprint(self, split_file: Path) -> str:
        files = [self.path] if self.is_archive else [self.path / m for m in MEMBERS]
        parts = []
        for f in files:
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        return ("archive|" if self.is_archive else "extracted|") + "|".join(parts)

    def read(self) -> Tuple[List[str], np.ndarray, np.ndarray]:
        """(fine label names, data uint8 [60000, 3072], fine labels int64 [60000]): the `train` batch's
        rows, then the `test` batch's, checked against `meta`; DataError naming the file on anything else."""
        pickles = self._unpickle_all()
        meta = self.describe("meta")
        names = _names(_entry(pickles["meta"], "fine_label_names", meta), meta)
        data, labels = zip(*(_batch(pickles[m], self.describe(m)) for m in ("train", "test")))
        labels_all = np.concatenate(labels)
        bad = labels_all[(labels_all < 0) | (labels_all >= len(names))]
        if bad.size:
            raise DataError(f"{self.describe()}: fine label {int(bad[0])} is outside meta's {len(names)} class names; "
                            f"the files do not belong together, extract {ARCHIVE} again")
        return names, np.concatenate(data), labels_all

    def _unpickle_all(self) -> Dict[str, Any]:
        """member -> its unpickled content, for the three MEMBERS (one pass over a tar)."""
        if not self.is_archive:
            return {m: safe_pickle.load(self.path / m, self.describe(m)) for m in MEMBERS}
        wanted = {f"{FOLDER}/{m}": m for m in MEMBERS}
        out: Dict[str, Any] = {}
        try:
            with tarfile.open(self.path, "r:*") as tar:
                for info in tar:
                    member = wanted.get(info.name)
                    stream: Optional[IO[bytes]] = tar.extractfile(info) if member and info.isfile() else None
                    if stream is not None:
                        out[member] = safe_pickle.load(stream, self.describe(member))
                        if len(out) == len(MEMBERS):
                            break
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"cannot read {self.path}: {images.one_line(e)}; the archive is corrupt or truncated: "
                            f"replace it with an intact {ARCHIVE} or pass --data-root the extracted folder") from None
        absent = [f"{FOLDER}/{m}" for m in MEMBERS if m not in out]
        if absent:
            raise DataError(f"{self.path} lacks {_listing(absent)}; it is not the python version of CIFAR-100 "
                            f"({ARCHIVE}): replace it with that archive")
        return out


def _entry(content: Any, key: str, where: str) -> Any:
    """`content[key]` of an unpickled CIFAR dict (keys are bytes in the original files, str if re-pickled)."""
    if isinstance(content, dict):
        for k in (key.encode(), key):
            if k in content:
                return content[k]
    found = f"a dict without {key!r}" if isinstance(content, dict) else type(content).__name__
    raise DataError(f"cannot read {where}: expected a dict with {key!r}, found {found}; it is not the python "
                    f"version of CIFAR-100, replace it with the contents of {ARCHIVE}")


def _names(entry: Any, where: str) -> List[str]:
    """meta's `fine_label_names` (a list of bytes in the original file) -> the class names as str."""

    def refuse(problem: str) -> DataError:
        return DataError(f"cannot read {where}: 'fine_label_names' must be a list of class names, but {problem}; "
                         f"extract {ARCHIVE} again")

    if not isinstance(entry, (list, tuple)):
        raise refuse(f"it is a {type(entry).__name__}")
    names: List[str] = []
    for name in entry:
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                raise refuse(f"{name!r} is not UTF-8") from None
        if not isinstance(name, str):
            raise refuse(f"{name!r} is not a string")
        names.append(name)
    return names


def _batch(content: Any, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """A `train` / `test` pickle -> (data uint8 [N, 3072], fine labels int64 [N])."""
    data = _entry(content, "data", where)
    labels = _entry(content, "fine_labels", where)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == ROW):
        shape = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"cannot read {where}: 'data' must be uint8 [N, {ROW}], found {shape}; extract {ARCHIVE} again")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
        fits = label_array.shape == (data.shape[0],)
    except (TypeError, ValueError, OverflowError):
        fits = False
    if not fits:
        raise DataError(f"cannot read {where}: 'fine_labels' must be {data.shape[0]} integers (one per row of "
                        f"'data'); extract {ARCHIVE} again")
    return data, label_array


def read_class_list(path: Path) -> List[str]:
    """A split file -> its class names in order (blank lines and '#' lines skipped); DataError on a repeat."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else images.one_line(e)
        raise DataError(f"cannot read split file {path}: {reason}; pass a readable UTF-8 file") from None
    names: List[str] = []
    for n, raw in enumerate(lines, 1):
        name = raw.strip()
        if not name or name.startswith("#"):
            continue
        if name in names:
            raise DataError(f"{path} line {n}: class {name!r} is listed twice; list each class once")
        names.append(name)
    return names


def _ppm(chw: np.ndarray) -> bytes:
    """uint8 [3, H, W] -> the bytes of a binary PPM (raw RGB, which PIL reads without decompressing)."""
    _, h, w = chw.shape
    return f"P6 {w} {h} 255\n".encode() + np.ascontiguousarray(chw.transpose(1, 2, 0)).tobytes()


class CifarFewShot(Dataset):
    """A class split of CIFAR-100; its published split files are in `packaged_splits`."""

    def open(self, data_root: Optional[PathLike]) -> Cifar100:
        return Cifar100(images.resolve_root(self, data_root))

    def class_lists(self, source: Source, files: Dict[str, Path]) -> Optional[Dict[str, List[str]]]:
        return {s: read_class_list(f) for s, f in files.items()}

    def build(self, source: Source, files: Dict[str, Path], progress: bool,
              skip_bad_images: bool = False) -> Dict[str, SplitData]:
        """Read the archive once and take every image of each class the split `files` list (a raw row
        cannot be unreadable on its own, so `skip_bad_images` has nothing to skip)."""
        assert isinstance(source, Cifar100)
        lists = self.class_lists(source, files)
        names, data, labels = source.read()
        index = {name: k for k, name in enumerate(names)}
        for s, classes in lists.items():
            for name in classes:
                if name not in index:
                    close = difflib.get_close_matches(name, names, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise DataError(f"class {name!r} of the {self.name} {s} split ({files[s]}) is not a CIFAR-100 "
                                    f"fine label in {source.describe('meta')}{hint}; fix the split file")
        out = {}
        total = sum(len(c) for c in lists.values())
        with images.decode_progress(total, f"reading {self.name} ({', '.join(files)})", progress) as bar:
            for s, classes in lists.items():
                per_class = []
                for name in classes:
                    rows = data[np.flatnonzero(labels == index[name])]  # [n, 3072]: train rows, then test rows
                    per_class.append(self._pixels(rows.reshape(-1, 3, SIDE, SIDE), f"{source.describe()} {name}"))
                    bar.advance(1)
                out[s] = SplitData.from_classes(per_class, classes, self.name, s, files[s])
        return out

    def _pixels(self, chw: np.ndarray, where: str) -> torch.Tensor:
        """uint8 [n, 3, 32, 32] -> uint8 [n, in_channels, image_size, image_size]; resampled by PIL only
        when the run asks for another size or grey."""
        if self.image_size == SIDE and self.in_channels == 3:
            return torch.from_numpy(np.ascontiguousarray(chw))

        def one(i: int) -> np.ndarray:
            return images.decode(_ppm(chw[i]), f"{where} image {i}", self.mode, self.image_size, self.resize)

        with ThreadPoolExecutor(max_workers=images.decode_workers()) as pool:  # PIL releases the GIL
            arrays = list(pool.map(one, range(chw.shape[0])))
        return images.to_chw(arrays, self.mode, self.image_size)


def _published(name: str) -> CifarFewShot:
    """The dataset `name`, split by the files packaged in `l2l_app/splits/<name>/`: RGB 32x32, normalised."""
    return CifarFewShot(name, in_channels=3, image_size=SIDE, default_root=None, split_suffix="txt",
                        packaged_splits=SPLITS_DIR / name, resize="stretch", normalize=True,
                        options=("image_size", "channels", "resize", "normalize"),
                        root_hint=f"the folder with {ARCHIVE} or the extracted {FOLDER}/ (nothing is downloaded)")


CIFAR_FS = _published("cifar-fs")
FC100 = _published("fc100")
for _dataset in (CIFAR_FS, FC100):
    DATASETS.register(_dataset.name, _dataset)
