"""`l2l-app data check`: will this data train?  Every split read once, checked, and reported.

`check_data(settings)` builds the data settings through the config machinery (the same
validation and messages as `train`), loads every split with `skip_bad_images` (so unreadable
images are listed, not fatal) and returns a `DataCheckReport`:

* per split: classes, images per class (min / median / max), total; skipped unreadable images
  (`SplitData.skipped`), ignored non-image files (`SplitData.ignored`); classes smaller than
  shots + queries of the split's episode shape; images repeated inside the split;
* per pair of splits: shared classes (`check_disjoint`'s rule: a trailing '/rotDDD' is ignored)
  and shared images, found by a blake2b digest of each item's decoded bytes (uint8 [C, H, W]
  pixels, or a float32 [D] feature row);
* failures: what would stop `l2l-app train` exactly as the trainer does -- the train or val split
  unreadable, train and val sharing a class, the split listing refused (`list_classes`), or a
  split that cannot give the episode shape (`validate_episode_shape`: train with the training
  shape, val with the evaluation shape); everything else is a warning (test-split problems stop
  only `l2l-app eval`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from l2l_app.config import FIELD_GROUP, ExperimentConfig, flag, from_flat, train_shape_flags, validate
from l2l_app.data import Dataset, SplitData, list_classes, load_split, load_splits
from l2l_app.data.images import decode_progress
from l2l_app.data.loading import check_disjoint, shared_classes
from l2l_app.data.samplers import validate_episode_shape
from l2l_app.errors import ConfigError, DataError
from l2l_app.experiment import configured_dataset

#: how many examples a report lists of each kind of problem
MAX_EXAMPLES = 5
#: the splits `l2l-app train` reads: a problem in one of them stops training
TRAINING_SPLITS = ("train", "val")
#: the config groups whose settings `check_data` takes
CHECK_GROUPS = ("data", "task")

Shape = Tuple[int, int, int]  # (ways, shots, queries)
Loaded = Mapping[str, Union[SplitData, DataError]]  # split -> its data, or why it could not be read


@dataclass
class Listing:
    """How many things were found, and the first MAX_EXAMPLES of them."""

    count: int = 0
    examples: List[Any] = field(default_factory=list)

    @classmethod
    def of(cls, items: Sequence[Any]) -> "Listing":
        return cls(len(items), list(items[:MAX_EXAMPLES]))

    def shown(self) -> str:
        """'a, b and 3 more' (examples as text)."""
        more = f" and {self.count - len(self.examples)} more" if self.count > len(self.examples) else ""
        return ", ".join(map(_text, self.examples)) + more


@dataclass
class ImageRef:
    """One image: its split, class and position within the class (0-based, the loading order), and
    its file where the dataset records it (`SplitData.sources`)."""

    split: str
    class_name: str
    position: int
    source: str = ""

    def __str__(self) -> str:
        return f"{self.split}:{self.source}" if self.source else f"{self.split}:{self.class_name}[{self.position}]"


@dataclass
class SplitReport:
    """One split.  `error`: why it could not be read (then only `split` and `shape` are set).
    `too_small`: classes with fewer than shots + queries images (examples {'class', 'images'});
    `duplicates`: images equal to an earlier image of the split (examples: groups of ImageRefs)."""

    split: str
    shape: Shape
    error: Optional[str] = None
    num_classes: int = 0
    total_images: int = 0
    per_class_min: int = 0
    per_class_median: float = 0
    per_class_max: int = 0
    too_small: Listing = field(default_factory=Listing)
    skipped: Listing = field(default_factory=Listing)
    ignored: Listing = field(default_factory=Listing)
    duplicates: Listing = field(default_factory=Listing)

    @property
    def needed(self) -> int:
        """Images a class needs for one episode: shots + queries."""
        return self.shape[1] + self.shape[2]


@dataclass
class OverlapReport:
    """Two splits: class names in both (rotations folded) and images in both (examples [ref a, ref b])."""

    splits: Tuple[str, str]
    shared_classes: Listing = field(default_factory=Listing)
    shared_images: Listing = field(default_factory=Listing)


@dataclass
class Finding:
    """One failed check: `check` names it (read, episode shape, disjoint classes, split listing, images,
    ignored files, duplicates), `split` the split or 'a/b' pair it concerns; `message`: what, and the fix."""

    check: str
    split: Optional[str]
    message: str

    def __str__(self) -> str:
        return f"[{self.check}{'' if self.split is None else ', ' + self.split}] {self.message}"


@dataclass
class DataCheckReport:
    """Everything `l2l-app data check` found; `ok` is False when training would fail (`failures`)."""

    dataset: str
    data_root: Optional[str]
    train_shape: Shape
    eval_shape: Shape
    splits: List[SplitReport] = field(default_factory=list)
    overlaps: List[OverlapReport] = field(default_factory=list)
    failures: List[Finding] = field(default_factory=list)
    warnings: List[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready data (`--json`), with `ok`."""
        return {"ok": self.ok, **dataclasses.asdict(self)}

    def summary(self) -> str:
        """One line: the verdict and the first failure."""
        if self.ok:
            return f"training with this shape would work ({len(self.warnings)} warning(s))"
        more = f" (and {len(self.failures) - 1} more failed check(s), listed above)" if len(self.failures) > 1 else ""
        return f"training would fail: {self.failures[0]}{more}"

    def format(self) -> str:
        """The report as a table and lists, for a terminal."""
        where = f" at {self.data_root}" if self.data_root else ""
        lines = [f"{self.dataset}{where}; train episodes: {_shape_text(self.train_shape)}; "
                 f"val/test episodes: {_shape_text(self.eval_shape)}", ""]
        head = ("split", "classes", "images", "per class min/median/max", "need", "too small", "unreadable",
                "ignored", "duplicates")
        rows = [head] + [_split_row(s) for s in self.splits if s.error is None]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        table = {r[0]: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows}
        lines += [table[head[0]]] + [table[s.split] if s.error is None else
                                     f"{s.split.ljust(widths[0])}  unreadable (see below)" for s in self.splits]
        if self.overlaps:
            lines += ["", f"{'between splits':<16}{'shared classes':>16}{'shared images':>15}"]
            lines += [f"{' / '.join(o.splits):<16}{o.shared_classes.count:>16}{o.shared_images.count:>15}"
                      for o in self.overlaps]
        details = _details(self)
        if details:
            lines += ["", "details:"] + [f"  {d}" for d in details]
        for title, found in (("warnings", self.warnings), ("failures (training would stop)", self.failures)):
            if found:
                lines += ["", f"{title}:"] + [f"  - {f}" for f in found]
        lines += ["", f"OK: {self.summary()}" if self.ok else
                  f"FAIL: training would stop: {len(self.failures)} failed check(s), listed above"]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the check


def check_config(settings: Mapping[str, Any]) -> ExperimentConfig:
    """The validated config of data and episode `settings` (flat names, None: not given); one-line
    ConfigError for a setting of another group, a bad value, or a data setting the dataset does not take."""
    given = {k: v for k, v in settings.items() if v is not None}
    foreign = [k for k in given if k in FIELD_GROUP and FIELD_GROUP[k] not in CHECK_GROUPS]
    if foreign:
        raise ConfigError(f"{', '.join(flag(k) for k in foreign)}: not a data or episode setting; "
                          "`l2l-app data check` reads only those; drop it")
    return validate(from_flat(given))


def check_data(settings: Mapping[str, Any], progress: bool = True) -> DataCheckReport:
    """Check the data `settings` describe (flat data and episode settings, as `train` takes them).

    Bad input (an unknown dataset, a setting it does not take, a missing or wrong data root)
    raises ConfigError / DataError before anything is read; problems of the data itself are in
    the report.  Decoded splits without skipped images are cached as a training run caches them.
    """
    config = check_config(settings)
    dataset = configured_dataset(config)
    root = config.data.data_root
    source = dataset.open(root)  # a wrong data root is bad input, not a finding
    loaded = load_for_check(dataset, root, progress)
    t = config.task
    report = build_report(loaded, (config.train_ways, config.train_shots, config.train_queries),
                          (t.ways, t.shots, t.queries), dataset.name, str(source.root), progress,
                          train_shape_flags(config), skip_bad_images=config.data.skip_bad_images)
    try:
        list_classes(dataset, root)
    except DataError as e:  # the trainer's check of the listed classes (once, when loading found it already)
        if not any(str(e) in f.message for f in report.failures):
            report.failures.append(Finding("split listing", None, str(e)))
    return report


def load_for_check(dataset: Dataset, data_root: Optional[str], progress: bool) -> Loaded:
    """split -> its data (unreadable images skipped) or the DataError that stopped it: all splits in
    one pass, and split by split only when that pass fails, so one bad split hides no other."""
    try:
        return dict(load_splits(dataset, None, data_root, progress=progress, check=False, skip_bad_images=True))
    except DataError:
        pass
    out: Dict[str, Union[SplitData, DataError]] = {}
    for split in dataset.splits:
        try:
            out[split] = load_split(dataset, split, data_root, progress=progress, skip_bad_images=True)
        except DataError as e:
            out[split] = e
    return out


def build_report(loaded: Loaded, train: Shape, evaluation: Shape,
                 dataset: str = "", data_root: Optional[str] = None, progress: bool = False,
                 flags: Tuple[str, str, str] = ("--train-ways", "--train-shots", "--train-queries"),
                 skip_bad_images: bool = False) -> DataCheckReport:
    """The report of loaded splits (SplitData, or the DataError that stopped a split): the 'train'
    split is checked with the `train` shape (its options named by `flags`), the others with `evaluation`.
    Unreadable images stop training (a failure in train and val) unless `skip_bad_images`, as they
    stop `train` unless --skip-bad-images; `eval` never skips them (a warning in test)."""
    report = DataCheckReport(dataset, data_root, train, evaluation)
    readable: Dict[str, SplitData] = {s: d for s, d in loaded.items() if isinstance(d, SplitData)}
    digests = _all_digests(readable, dataset, progress)
    for split, data in loaded.items():
        shape = train if split == "train" else evaluation
        found = report.failures if split in TRAINING_SPLITS else report.warnings
        if not isinstance(data, SplitData):
            report.splits.append(SplitReport(split, shape, error=str(data)))
            found.append(Finding("read", split, _consequence(split, str(data))))
            continue
        report.splits.append(split_report(data, split, shape, digests[split]))
        try:
            validate_episode_shape(data, *shape, **({"flags": flags} if split == "train" else {}))
        except ConfigError as e:
            found.append(Finding("episode shape", split, _consequence(split, str(e))))
    for s in report.splits:
        if s.skipped.count and skip_bad_images and s.split in TRAINING_SPLITS:
            report.warnings.append(Finding("images", s.split, f"{s.skipped.count} unreadable image(s) left out: "
                                           f"{s.skipped.shown()}; restore or remove them"))
        elif s.skipped.count:
            found = report.failures if s.split in TRAINING_SPLITS else report.warnings
            fix = " or pass --skip-bad-images to train without them" if s.split in TRAINING_SPLITS else ""
            found.append(Finding("images", s.split, _consequence(
                s.split, f"{s.skipped.count} unreadable image(s): {s.skipped.shown()}; restore or remove them{fix}")))
        if s.ignored.count:
            report.warnings.append(Finding("ignored files", s.split, f"{s.ignored.count} file(s) that are not "
                                           f"images were left out: {s.ignored.shown()}"))
        if s.duplicates.count:
            report.warnings.append(Finding("duplicates", s.split, f"{s.duplicates.count} image(s) repeat an "
                                           f"earlier image of the split, e.g. {s.duplicates.shown()}"))
    names = list(readable)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            report.overlaps.append(overlap_report(readable[a], readable[b], a, b, digests[a], digests[b]))
    for o in report.overlaps:
        pair, (a, b) = "/".join(o.splits), o.splits
        try:
            check_disjoint({a: readable[a], b: readable[b]})  # the trainer's check, and its message
        except DataError as e:
            if set(o.splits) <= set(TRAINING_SPLITS):
                report.failures.append(Finding("disjoint classes", pair, str(e)))
            else:
                report.warnings.append(Finding("disjoint classes", pair, f"{e} ({b} accuracy would include "
                                                                         f"classes seen in {a})"))
        if o.shared_images.count:
            report.warnings.append(Finding("duplicates", pair, f"{o.shared_images.count} image(s) are in both "
                                           f"splits, e.g. {o.shared_images.shown()}; remove them from one split"))
    return report


def split_report(data: SplitData, split: str, shape: Shape, digests: Sequence[str]) -> SplitReport:
    """Counts, too-small classes, skipped / ignored files and repeated images of one split
    (`digests[i]`: the digest of item i, see `image_digests`)."""
    counts = data.class_counts.tolist()
    needed = shape[1] + shape[2]
    too_small = [{"class": n, "images": c} for n, c in zip(data.class_names, counts) if c < needed]
    groups = [g for g in _groups(digests).values() if len(g) > 1]
    shown = [[str(r) for r in image_refs(data, split, g[:MAX_EXAMPLES])] for g in groups[:MAX_EXAMPLES]]
    return SplitReport(
        split, shape, num_classes=data.num_classes, total_images=int(data.labels.numel()),
        per_class_min=min(counts, default=0), per_class_median=statistics.median(counts) if counts else 0,
        per_class_max=max(counts, default=0), too_small=Listing.of(too_small),
        skipped=Listing.of(data.skipped), ignored=Listing.of(data.ignored),
        duplicates=Listing(sum(len(g) - 1 for g in groups), shown))


def overlap_report(a: SplitData, b: SplitData, name_a: str, name_b: str, digests_a: Sequence[str],
                   digests_b: Sequence[str]) -> OverlapReport:
    """The classes (rotations folded, as `check_disjoint`) and the images two splits share."""
    first_b = {d: i for i, d in reversed(list(enumerate(digests_b)))}
    both: Dict[str, Tuple[int, int]] = {}
    for i, d in enumerate(digests_a):
        if d in first_b and d not in both:
            both[d] = (i, first_b[d])
    shown = list(both.values())[:MAX_EXAMPLES]
    refs_a = image_refs(a, name_a, [i for i, _ in shown])
    refs_b = image_refs(b, name_b, [j for _, j in shown])
    return OverlapReport((name_a, name_b), Listing.of(shared_classes(a.class_names, b.class_names)),
                         Listing(len(both), [[str(x), str(y)] for x, y in zip(refs_a, refs_b)]))


def image_digests(items: torch.Tensor) -> List[str]:
    """One blake2b hex digest per item of `items` (uint8 [N, C, H, W] or float32 [N, D]) over its
    bytes: equal digests mean identical decoded pixels (or feature rows)."""
    rows = items.detach().cpu().contiguous().reshape(items.shape[0], -1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in rows]


def image_refs(data: SplitData, split: str, indices: Sequence[int]) -> List[ImageRef]:
    """Where the items `indices` of `data` are: class name and position within the class."""
    table, _ = data.index_table()
    out = []
    for i in indices:
        c = int(data.labels[i])
        out.append(ImageRef(split, data.class_names[c], int((table[c] == i).nonzero()[0, 0]),
                            data.sources[i] if data.sources else ""))
    return out


# ----------------------------------------------------------------------------- helpers


def _all_digests(splits: Mapping[str, SplitData], dataset: str, progress: bool) -> Dict[str, List[str]]:
    """split -> `image_digests` of its items, with progress (images hashed) on stderr."""
    total = sum(int(d.labels.numel()) for d in splits.values())
    out: Dict[str, List[str]] = {}
    with decode_progress(total, f"hashing {dataset or 'the'} images", progress and total > 0) as bar:
        for split, data in splits.items():
            out[split] = []
            for start in range(0, data.images.shape[0], 4096):
                chunk = image_digests(data.images[start:start + 4096])
                out[split] += chunk
                bar.advance(len(chunk))
    return out


def _groups(digests: Sequence[str]) -> Dict[str, List[int]]:
    """digest -> the indices that have it, in order."""
    out: Dict[str, List[int]] = {}
    for i, d in enumerate(digests):
        out.setdefault(d, []).append(i)
    return out


def _consequence(split: str, message: str) -> str:
    """`message`, saying which command it stops when that is not training (a warning's)."""
    return message if split in TRAINING_SPLITS else f"l2l-app eval --split {split} would stop: {message}"


def _shape_text(shape: Shape) -> str:
    ways, shots, queries = shape
    return f"{ways}-way {shots}-shot {queries}-query"


def _text(x: Any) -> str:
    if isinstance(x, dict) and "class" in x:
        return f"{x['class']} ({x['images']} images)"
    if isinstance(x, list):
        return " = ".join(map(str, x))
    return str(x)


def _split_row(s: SplitReport) -> Tuple[str, ...]:
    median = f"{s.per_class_median:g}"
    return (s.split, str(s.num_classes), str(s.total_images), f"{s.per_class_min} / {median} / {s.per_class_max}",
            str(s.needed), str(s.too_small.count), str(s.skipped.count), str(s.ignored.count),
            str(s.duplicates.count))


def _details(report: DataCheckReport) -> List[str]:
    """One line per split with classes too small for its episodes, naming the first few."""
    return [f"{s.split}: {s.too_small.count} class(es) under shots + queries = {s.needed} images: "
            f"{s.too_small.shown()}" for s in report.splits if s.too_small.count]
