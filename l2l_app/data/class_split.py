"""Class-level splits of datasets that do not ship their own: a split file, or a seeded split.

A split file lists the classes of each split, as JSON (``{"train": [...], "val": [...],
"test": [...]}``) or as text with a ``[train]`` / ``[val]`` / ``[test]`` header before each
split's classes, one per line (blank lines and lines starting with ``#`` are skipped).  A seeded
split shuffles the sorted class names with `random.Random(seed)` and cuts them by the train/val/
test fractions, so the same classes and seed always give the same split, on any machine.
Every result is checked: each split has at least 2 classes and no class is in two splits.
"""
from __future__ import annotations

import difflib
import json
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from l2l_app.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


def read_split_file(path: Path) -> Dict[str, List[str]]:
    """split -> class names from a JSON or sectioned text split file (see the module doc)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DataError(f"cannot read --split-file {path}: {reason}; pass a readable UTF-8 file") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"--split-file {path} is not valid JSON: {e.msg} (line {e.lineno}); fix the file") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                                                 for v in data.values()):
            raise DataError(f"--split-file {path}: expected an object {{\"train\": [class names], \"val\": [...], "
                            f"\"test\": [...]}}; fix the file")
        out = {str(k): list(v) for k, v in data.items()}
    else:
        out = {}
        current = None
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1].strip()
                out.setdefault(current, [])
                continue
            if current is None:
                raise DataError(f"--split-file {path} line {n}: class {line!r} before any [train], [val] or [test] "
                                f"header; start each split's list with its header (or write JSON)")
            out[current].append(line)
    unknown = [k for k in out if k not in SPLIT_NAMES]
    if unknown:
        raise DataError(f"--split-file {path}: unknown split {unknown[0]!r}; the splits are {', '.join(SPLIT_NAMES)}")
    missing = [s for s in SPLIT_NAMES if s not in out]
    if missing:
        raise DataError(f"--split-file {path}: no {missing[0]} split; list the classes of {', '.join(SPLIT_NAMES)}")
    return out


def check_split(splits: Dict[str, List[str]], classes: Sequence[str], where: str) -> None:
    """Every listed class exists in `classes`, appears once, and each split has at least 2 classes
    (DataError naming `where`, e.g. the split file)."""
    known = set(classes)
    seen: Dict[str, str] = {}
    for split, names in splits.items():
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DataError(f"{where}: class {name!r} of the {split} split is not in the data{hint}; "
                                f"fix the split file")
            if name in seen:
                raise DataError(f"{where}: class {name!r} is in both the {seen[name]} and the {split} split; "
                                f"list every class in one split only")
            seen[name] = split
        if len(names) < 2:
            raise DataError(f"{where}: the {split} split has {len(names)} class(es); a few-shot task needs at "
                            f"least 2; move classes into it")


def split_ratios(text: str) -> Tuple[float, float, float]:
    """'0.64,0.16,0.2' -> (0.64, 0.16, 0.2): the train/val/test fractions of the classes of a seeded
    split; a DataError naming --split-ratios and what to write unless three positive numbers summing to 1."""
    def refuse(why: str) -> DataError:
        return DataError(f"--split-ratios {text!r}: {why}")

    try:
        values = tuple(float(p.strip()) for p in str(text).split(","))
    except ValueError:
        raise refuse("expected three numbers separated by commas (train,val,test), e.g. 0.64,0.16,0.2") from None
    if len(values) != 3:
        raise refuse(f"expected three fractions (train,val,test), got {len(values)}; e.g. 0.64,0.16,0.2")
    if any(not v > 0 for v in values):
        raise refuse("every fraction must be above 0 (each split needs classes); e.g. 0.64,0.16,0.2")
    if abs(sum(values) - 1.0) > 1e-6:
        raise refuse(f"the fractions sum to {sum(values):g}, not 1; e.g. 0.64,0.16,0.2")
    return values  # type: ignore[return-value]


def seeded_split(classes: Sequence[str], ratios: Tuple[float, float, float], seed: int) -> Dict[str, List[str]]:
    """Shuffle sorted `classes` with `random.Random(seed)`; the first round(train * n) are train,
    the next round(val * n) val, the rest test (each list sorted).  DataError when a split
    would get fewer than 2 classes."""
    names = sorted(classes)
    n = len(names)
    random.Random(seed).shuffle(names)
    n_train = round(ratios[0] * n)
    n_val = round(ratios[1] * n)
    counts = {"train": n_train, "val": n_val, "test": n - n_train - n_val}
    if min(counts.values()) < 2:
        raise DataError(f"{n} classes cannot be split by --split-ratios {','.join(f'{r:g}' for r in ratios)} into "
                        f"train/val/test with at least 2 classes each (got {counts['train']}/{counts['val']}/"
                        f"{counts['test']}); add classes, change --split-ratios or pass --split-file")
    out = {"train": names[:n_train], "val": names[n_train:n_train + n_val], "test": names[n_train + n_val:]}
    return {s: sorted(v) for s, v in out.items()}
