"""`--dataset features`: few-shot learning on feature vectors (pre-extracted embeddings, sensor
readings, tabular records), one vector per row, as float32 [N, D] splits.

`--data-root` is a file or a folder:

* `F.npz`: the vectors (the array named `features`, else `x`, `X` or `data`, else the only 2-D
  float array) and the labels (the array named by `--label-column`, default `label`);
* `F.csv`: a header row; the `--label-column` column holds the class, every other column a number;
* `F.npy` with `labels.npy` or `labels.txt` (one label per line) beside it, or a folder that
  holds `features.npy` and one of those label files (`--label-column` does not apply).

Labels are integers or text (a class is named `str(label)`; whole-number floats count as
integers).  Every value must be finite in float32: a NaN or inf is refused, naming its row and
column (impute or drop such rows first).  Arrays are read with `allow_pickle=False`.

Classes are split like class folders (`l2l_app.data.class_split`): `--split-file`, else a seeded
split of the sorted class names (`--split-seed`, `--split-ratios`).  Within a split, classes are in
sorted order and each class's rows in file order.  The cache key hashes the files' sizes and
mtimes, the split's class list, the split settings and the label column; the cache of a file data
root lives in a `.cache` folder beside the file (else $L2L_APP_CACHE_DIR or ~/.cache/l2l_app).  The label
reads behind the split are memoised per file identity (path, size, mtime), so a cache hit does
not parse a CSV several times.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch

from l2l_app.data import images
from l2l_app.data.class_split import check_split, read_split_file, seeded_split, split_ratios
from l2l_app.data.types import VECTORS, Dataset, PathLike, Source, SplitData
from l2l_app.errors import DataError
from l2l_app.registry import DATASETS

if TYPE_CHECKING:
    import numpy as np

#: names the vectors of an .npz are looked for under, in order
VECTOR_NAMES = ("features", "x", "X", "data")
#: the labels beside an .npy of vectors, in order
LABEL_FILES = ("labels.npy", "labels.txt")
#: the vectors a folder data root holds
FOLDER_FILE = "features.npy"
SUFFIXES = (".npz", ".npy", ".csv")
DEFAULT_LABEL_COLUMN = "label"
ROOT_HINT = "an .npz, .npy or .csv file of feature vectors with their labels, or a folder with features.npy and labels.npy"


@dataclass(frozen=True)
class Layout:
    """Where a data root's arrays are: `kind` ('npz', 'npy' or 'csv'), the file of vectors, and
    for 'npy' the labels file beside it."""

    kind: str
    data: Path
    labels: Optional[Path] = None

    @property
    def files(self) -> Tuple[Path, ...]:
        return (self.data,) + ((self.labels,) if self.labels is not None else ())

    def identity(self) -> str:
        """'path:size:mtime_ns' of each file: changes whenever a file is rewritten."""
        parts = []
        for f in self.files:
            try:
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
            except OSError as e:
                parts.append(f"{f.name}:unreadable:{e.errno}")
        return "|".join(parts)


def locate(root: Path) -> Layout:
    """The layout of a checked data root (a file or a folder), or DataError saying what is missing."""
    if root.is_dir():
        data = root / FOLDER_FILE
        if not data.is_file():
            found = sorted(p.name for p in root.iterdir() if p.suffix.lower() in (".npz", ".csv"))[:3]
            hint = f" (it holds {', '.join(found)}: pass --data-root {root / found[0]})" if found else ""
            raise DataError(f"no feature vectors in folder {root}: expected {FOLDER_FILE} with labels.npy or "
                            f"labels.txt{hint}; or pass --data-root an .npz, .npy or .csv file")
    else:
        data = root
    kind = data.suffix.lower().lstrip(".")
    if f".{kind}" not in SUFFIXES:
        raise DataError(f"data root {data} is a {data.suffix or 'suffix-less'} file; --dataset features reads "
                        f".npz, .npy or .csv files, or a folder with {FOLDER_FILE} and labels.npy; pass "
                        "--data-root one of those")
    if kind != "npy":
        return Layout(kind, data)
    if data.name in LABEL_FILES:
        raise DataError(f"data root {data} is the labels file; pass --data-root the .npy of vectors beside it "
                        f"(or their folder)")
    labels = next((data.parent / n for n in LABEL_FILES if (data.parent / n).is_file()), None)
    if labels is None:
        raise DataError(f"no labels for {data}: expected labels.npy or labels.txt (one label per row) beside it "
                        f"in {data.parent}; add one or save the vectors and labels together in an .npz")
    return Layout(kind, data, labels)


class FeatureSource(Source):
    """A checked features data root; fingerprint = the sizes and mtimes of its files."""

    def __init__(self, root: Path, layout: Layout) -> None:
        super().__init__(root)
        self.layout = layout

    def fingerprint(self, split_file: Path) -> str:
        return self.layout.identity()


# ----------------------------------------------------------------------------- reading


def _read_error(path: Path, e: BaseException) -> DataError:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else images.one_line(e)
    return DataError(f"cannot read {path}: {reason}; pass --data-root a readable file saved by numpy "
                     "(np.save/np.savez, without pickled objects) or a CSV")


def _load_npy(path: Path) -> "np.ndarray":
    import numpy as np
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _read_error(path, e) from None


def _npz_arrays(path: Path, label_column: str, with_vectors: bool) -> Tuple[Optional["np.ndarray"], "np.ndarray"]:
    """(vectors or None, labels) of an .npz; DataError listing the arrays when one is not found."""
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if label_column not in names:
                raise DataError(f"{path} has no array {label_column!r} (arrays: {', '.join(names) or 'none'}); "
                                "pass --label-column with the array that holds the class")
            labels = z[label_column]
            if not with_vectors:
                return None, labels
            name = next((n for n in VECTOR_NAMES if n in names and n != label_column), None)
            if name is None:
                matrices = [n for n in names if n != label_column and _is_float_matrix(z, n)]
                if len(matrices) != 1:
                    raise DataError(f"{path}: which array holds the feature vectors? expected one named "
                                    f"{', '.join(VECTOR_NAMES[:-1])} or {VECTOR_NAMES[-1]}, or a single 2-D float "
                                    f"array (arrays: {', '.join(names)}); save it as np.savez(path, features=X, "
                                    f"{label_column}=y)")
                name = matrices[0]
            return z[name], labels
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _read_error(path, e) from None


def _is_float_matrix(z, name: str) -> bool:
    try:
        a = z[name]
    except ValueError:  # an object array, which allow_pickle=False refuses
        return False
    return a.ndim == 2 and a.dtype.kind == "f"


def _read_csv(path: Path, label_column: str, with_vectors: bool
              ) -> Tuple[Optional["np.ndarray"], List[str], List[str], List[int]]:
    """(vectors float64 [N, D] or None, labels, feature column names, file line of each row)."""
    import numpy as np
    rows: List[List[float]] = []
    labels: List[str] = []
    lines: List[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if header.count(label_column) != 1:
                which = "no" if label_column not in header else "more than one"
                raise DataError(f"{path} has {which} column {label_column!r} in its header (columns: "
                                f"{', '.join(header) or 'none'}); pass --label-column with the column that "
                                "holds the class")
            at = header.index(label_column)
            columns = [i for i in range(len(header)) if i != at]
            if not columns:
                raise DataError(f"{path} has no feature columns, only {label_column!r}; add the numeric columns")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                where = f"{path} row {len(labels) + 1} (line {reader.line_num})"
                if len(row) != len(header):
                    raise DataError(f"{where} has {len(row)} cells but the header has {len(header)}; fix the row")
                label = row[at].strip()
                if not label:
                    raise DataError(f"{where} has an empty {label_column!r}; give every row its class")
                labels.append(label)
                lines.append(reader.line_num)
                if with_vectors:
                    try:
                        rows.append([float(row[i]) for i in columns])
                    except ValueError:
                        bad = next(i for i in columns if not _is_number(row[i]))
                        raise DataError(f"{where}, column {header[bad]!r}: {row[bad]!r} is not a number; every "
                                        f"column but {label_column!r} must be numeric: fix the cell or drop the "
                                        "column") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise _read_error(path, e) from None
    names = [header[i] for i in columns]
    vectors = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(columns)) if with_vectors else None
    return vectors, labels, names, lines


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _label_names(labels: "np.ndarray", where: str) -> List[str]:
    """A 1-D array of integer, whole-number float, boolean or text labels -> class names (str)."""
    import numpy as np
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be one per row (shape [N]), got shape {list(labels.shape)}")
    kind = labels.dtype.kind
    if kind == "f":
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise DataError(f"{where}: the labels hold fractional or non-finite numbers; use integer or text "
                            "class labels")
        return [str(int(v)) for v in labels.tolist()]
    if kind in "iub":
        return [str(v) for v in labels.tolist()]
    if kind == "S":
        return [v.decode("utf-8", "replace") for v in labels.tolist()]
    if kind == "U":
        return [str(v) for v in labels.tolist()]
    raise DataError(f"{where}: labels of dtype {labels.dtype} are not integers or text; save integer or "
                    "string labels")


def _labels_txt(path: Path) -> List[str]:
    try:
        lines = path.read_text(encoding="utf-8").rstrip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _read_error(path, e) from None
    labels = [line.strip() for line in lines]
    if "" in labels:
        raise DataError(f"{path} line {labels.index('') + 1} is empty; write one label per row of the vectors")
    return labels


def read_labels(layout: Layout, label_column: str) -> List[str]:
    """The class name of every row, in file order (vectors not converted)."""
    if layout.kind == "csv":
        return _read_csv(layout.data, label_column, with_vectors=False)[1]
    if layout.kind == "npz":
        return _label_names(_npz_arrays(layout.data, label_column, with_vectors=False)[1], str(layout.data))
    assert layout.labels is not None
    if layout.labels.suffix == ".txt":
        return _labels_txt(layout.labels)
    return _label_names(_load_npy(layout.labels), str(layout.labels))


@functools.lru_cache(maxsize=4)
def _memo_labels(layout: Layout, label_column: str, identity: str) -> Tuple[str, ...]:
    return tuple(read_labels(layout, label_column))


def labels_of(layout: Layout, label_column: str) -> Tuple[str, ...]:
    """`read_labels`, memoised per file identity (a rewritten file is read again)."""
    return _memo_labels(layout, label_column, layout.identity())


def read_table(layout: Layout, label_column: str) -> Tuple["np.ndarray", List[str]]:
    """(vectors float32 [N, D], class name of each row); DataError for a non-numeric, NaN or inf
    value (naming its row and column) or a label count that differs from the row count."""
    import numpy as np
    columns: Optional[List[str]] = None
    lines: Optional[List[int]] = None
    if layout.kind == "csv":
        raw, labels, columns, lines = _read_csv(layout.data, label_column, with_vectors=True)
    elif layout.kind == "npz":
        raw, label_array = _npz_arrays(layout.data, label_column, with_vectors=True)
        labels = _label_names(label_array, str(layout.data))
    else:
        raw, labels = _load_npy(layout.data), read_labels(layout, label_column)
    where = str(layout.data)
    if raw.ndim != 2 or raw.shape[1] < 1:
        raise DataError(f"{where}: the feature vectors must be a 2-D array [rows, features], got shape "
                        f"{list(raw.shape)}; reshape them to one row per item")
    if raw.dtype.kind not in "fiub":
        raise DataError(f"{where}: the feature vectors are {raw.dtype}, not numbers; save a numeric array")
    if len(labels) != raw.shape[0]:
        raise DataError(f"{where}: {raw.shape[0]} rows of vectors but {len(labels)} labels; give one label per row")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range becomes inf, refused below
        vectors = np.ascontiguousarray(raw, dtype=np.float32)
    finite = np.isfinite(vectors)
    if not finite.all():
        r, c = (int(i) for i in np.argwhere(~finite)[0])
        row = f"row {r + 1} (line {lines[r]})" if lines is not None else f"row {r} (0-based)"
        column = f"column {columns[c]!r}" if columns is not None else f"feature {c} (0-based)"
        raise DataError(f"{where} {row}, {column} (class {labels[r]}): {raw[r, c]} is not a finite float32 "
                        f"number; impute or drop the rows with NaN, inf or out-of-range values")
    return vectors, labels


# ----------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class FeatureVectors(Dataset):
    """Feature vectors with class labels from one file (see the module doc); class-level splits."""

    normalize: bool = True
    split_file: Optional[str] = None
    split_seed: int = 0
    split_ratios: str = "0.64,0.16,0.2"
    label_column: str = DEFAULT_LABEL_COLUMN
    options: Tuple[str, ...] = ("normalize", "split_file", "split_seed", "split_ratios", "label_column")
    kind: str = VECTORS

    def open(self, data_root: Optional[PathLike]) -> FeatureSource:
        root = self._resolve(data_root)
        layout = locate(root)
        if layout.kind == "npy" and self.label_column != DEFAULT_LABEL_COLUMN:
            raise DataError(f"--label-column {self.label_column!r} applies to .npz and .csv data; {layout.data} "
                            f"takes its labels from {layout.labels}; drop --label-column")
        return FeatureSource(root, layout)

    def _resolve(self, data_root: Optional[PathLike]) -> Path:
        """The data root checked to exist and be readable (a file here; folders and None by `resolve_root`)."""
        if data_root is None:
            return images.resolve_root(self, None)
        root = Path(data_root).expanduser()
        if root.is_dir() or root.is_symlink() and not root.exists():
            return images.resolve_root(self, root)  # a folder, or a dangling link / loop it explains
        if not root.exists():
            raise DataError(f"data root {root} does not exist; pass --data-root an existing .npz, .npy or .csv "
                            f"file, or a folder with {FOLDER_FILE} and labels.npy")
        if not os.access(root, os.R_OK):
            raise DataError(f"data root {root} is not readable (permission denied); fix its permissions or pass "
                            "--data-root a readable copy")
        return root

    # ---- the split --------------------------------------------------------------------------------
    def split_files(self, root: Path, split_dir: Optional[PathLike]) -> Dict[str, Path]:
        """Every split -> the --split-file, or for a seeded split the file of vectors (`split_dir`
        does not apply: features splits come from --split-file or the seed)."""
        target = Path(self.split_file).expanduser() if self.split_file is not None else locate(root).data
        return {s: target for s in self.splits}

    def split_identity(self, split: str, split_file: Path) -> bytes:
        """The split's sorted class list with the split settings and label column, as JSON bytes."""
        if self.split_file is not None:
            classes = sorted(read_split_file(split_file)[split])
            settings = {"by": "split-file"}
        else:
            classes = self.class_split(labels_of(locate(split_file), self.label_column))[split]
            settings = {"split_seed": self.split_seed, "split_ratios": list(split_ratios(self.split_ratios))}
        return json.dumps({"classes": classes, "label_column": self.label_column, **settings},
                          sort_keys=True).encode()

    def class_split(self, labels: Sequence[str]) -> Dict[str, List[str]]:
        """split -> sorted class names of the data's `labels`: the checked --split-file, else the seeded split."""
        classes = sorted(set(labels))
        if self.split_file is not None:
            path = Path(self.split_file).expanduser()
            listed = read_split_file(path)
            check_split(listed, classes, f"--split-file {path}")
            return {s: sorted(listed[s]) for s in self.splits}
        return seeded_split(classes, split_ratios(self.split_ratios), self.split_seed)

    def class_lists(self, source: Source, files: Dict[str, Path]) -> Dict[str, List[str]]:
        assert isinstance(source, FeatureSource)
        return self.class_split(labels_of(source.layout, self.label_column))


    # ---- reading ----------------------------------------------------------------------------------
    def build(self, source: Source, files: Dict[str, Path], progress: bool,
              skip_bad_images: bool = False) -> Dict[str, SplitData]:
        """Read the table once and cut it into the splits `files` names (`progress`, `skip_bad_images`
        do not apply: a bad value is always an error)."""
        assert isinstance(source, FeatureSource)
        vectors, labels = read_table(source.layout, self.label_column)
        rows: Dict[str, List[int]] = {}
        for i, name in enumerate(labels):
            rows.setdefault(name, []).append(i)
        chosen = self.class_split(labels)
        out = {}
        for s in files:
            per_class = [torch.from_numpy(vectors[rows[name]]) for name in chosen[s]]
            out[s] = SplitData.from_classes(per_class, chosen[s], self.name, s, files[s])
        return out


FEATURES = FeatureVectors("features", in_channels=0, image_size=0, default_root=None, root_hint=ROOT_HINT)
DATASETS.register(FEATURES.name, FEATURES)
