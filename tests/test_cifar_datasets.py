"""CIFAR-FS and FC100 (`l2l_app.data.cifar`) from a synthetic CIFAR-100 python archive.

The archive is written as the original is: `cifar-100-python/{train,test,meta}` pickles (protocol 2,
strings as Python 2 str, so they load as bytes with encoding='bytes') holding b'data' uint8
[N, 3072], b'fine_labels', b'coarse_labels', b'filenames', and b'fine_label_names' /
b'coarse_label_names', with the real 100 fine and 20 coarse labels; 3 train + 1 test image per class.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from l2l_app.data import load_splits
from l2l_app.data.cifar import ARCHIVE, FOLDER, read_class_list
from l2l_app.errors import DataError
from l2l_app.registry import DATASETS

#: CIFAR-100's 20 superclasses (coarse labels 0..19, alphabetical) and their 5 fine classes each
SUPERCLASSES: Dict[str, List[str]] = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
COARSE = list(SUPERCLASSES)
FINE = sorted(name for names in SUPERCLASSES.values() for name in names)  # meta's order: alphabetical
#: FC100's superclasses per split (Oreshkin et al. 2018)
FC100_SUPERCLASSES = {
    "train": {"fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
              "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
              "trees", "vehicles_1", "vehicles_2"},
    "val": {"large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"},
    "test": {"aquatic_mammals", "insects", "medium_mammals", "people"},
}
SIZES = {"cifar-fs": {"train": 64, "val": 16, "test": 20}, "fc100": {"train": 60, "val": 20, "test": 20}}
PER_BATCH = {"train": 3, "test": 1}  # images of each class in each batch
#: one image with a known sparse pattern: (channel, row, column) -> value, written at row index c*1024 + r*32 + col
PATTERN_CLASS = "apple"
PATTERN = {(0, 0, 0): 255, (1, 0, 1): 200, (2, 1, 0): 100, (0, 31, 31): 77, (2, 5, 9): 9}


class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol 2 with every string written as a Python 2 str (SHORT_BINSTRING / BINSTRING), as Python 2 wrote
    the original files (Python 3's own protocol 2 would rebuild bytes through `_codecs.encode`, which the
    originals never call); NumPy's dtype strings ('u1', '|') included."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(data)
        header = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(header + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Python2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


@dataclass
class SyntheticCifar:
    """`tar_root` holds cifar-100-python.tar.gz, `folder_root` the extracted cifar-100-python/; `rows[name]`
    is uint8 [4, 3072]: the class's train rows in batch order, then its test row."""

    tar_root: Path
    folder_root: Path
    members: Dict[str, bytes]
    rows: Dict[str, np.ndarray]

    @property
    def folder(self) -> Path:
        return self.folder_root / FOLDER

    def expected(self, name: str) -> torch.Tensor:
        """uint8 [4, 3, 32, 32] from the documented layout: 1024 red, 1024 green, 1024 blue, row-major planes."""
        return torch.from_numpy(self.rows[name].reshape(-1, 3, 32, 32).copy())


def write_archive(base: Path, members: Dict[str, bytes]) -> Path:
    """`members` (name -> bytes) as base/cifar-100-python.tar.gz, with a directory entry and a stray file."""
    base.mkdir(parents=True, exist_ok=True)
    with tarfile.open(base / ARCHIVE, "w:gz") as tar:
        info = tarfile.TarInfo(FOLDER)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in [("file.txt~", b"stray")] + list(members.items()):
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return base / ARCHIVE


def write_folder(base: Path, members: Dict[str, bytes]) -> Path:
    (base / FOLDER).mkdir(parents=True, exist_ok=True)
    for name, data in members.items():
        (base / FOLDER / name).write_bytes(data)
    return base / FOLDER


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> SyntheticCifar:
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("cifar100")
    per_class: Dict[str, List[np.ndarray]] = {name: [] for name in FINE}
    members: Dict[str, bytes] = {}
    for batch in ("test", "train"):  # the reader must not depend on the members' order
        order = [k for _ in range(PER_BATCH[batch]) for k in rng.permutation(len(FINE))]  # classes interleaved
        data = rng.integers(0, 256, size=(len(order), 3072), dtype=np.uint8)
        for i, k in enumerate(order):
            if batch == "train" and FINE[k] == PATTERN_CLASS and len(per_class[PATTERN_CLASS]) == PER_BATCH["test"]:
                data[i] = 0
                for (c, r, col), v in PATTERN.items():
                    data[i, c * 1024 + r * 32 + col] = v
            per_class[FINE[k]].append(data[i])
        coarse = [COARSE.index(next(s for s, names in SUPERCLASSES.items() if FINE[k] in names)) for k in order]
        members[batch] = py2_pickle({
            b"batch_label": f"{batch} batch".encode(), b"data": data, b"fine_labels": [int(k) for k in order],
            b"coarse_labels": coarse, b"filenames": [f"{FINE[k]}_s_{i:06d}.png".encode() for i, k in enumerate(order)]})
    members["meta"] = py2_pickle({b"fine_label_names": [n.encode() for n in FINE],
                                  b"coarse_label_names": [n.encode() for n in COARSE]})
    # per_class: test rows were appended first; the reader gives train rows first, then test rows
    rows = {n: np.stack(r[PER_BATCH["test"]:] + r[:PER_BATCH["test"]]) for n, r in per_class.items()}
    write_archive(base / "tar", members)
    write_folder(base / "folder", members)
    return SyntheticCifar(base / "tar", base / "folder", members, rows)


def load(name: str, root, **kw):
    return load_splits(DATASETS[name], data_root=root, cache=False, progress=False, **kw)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", ["cifar-fs", "fc100"])
def test_tar_folder_and_folder_itself_give_identical_tensors(cifar, name):
    from_tar = load(name, cifar.tar_root)
    for root in (cifar.folder_root, cifar.folder):
        other = load(name, root)
        for s in from_tar:
            assert torch.equal(from_tar[s].images, other[s].images)
            assert torch.equal(from_tar[s].labels, other[s].labels)
            assert from_tar[s].class_names == other[s].class_names


@pytest.mark.parametrize("name", ["cifar-fs", "fc100"])
def test_every_image_of_every_class_in_order_and_split_sizes(cifar, name):
    splits = load(name, cifar.tar_root)
    assert {s: d.num_classes for s, d in splits.items()} == SIZES[name]
    seen = set()
    for s, data in splits.items():
        assert data.images.shape[1:] == (3, 32, 32) and data.images.dtype == torch.uint8
        assert data.class_names == read_class_list(DATASETS[name].packaged_splits / f"{s}.txt")
        assert set(data.class_counts.tolist()) == {sum(PER_BATCH.values())}
        for k, class_name in enumerate(data.class_names):
            assert torch.equal(data.images[data.labels == k], cifar.expected(class_name)), class_name
        assert not seen & set(data.class_names)
        seen |= set(data.class_names)
    assert sorted(seen) == FINE


def test_pixel_layout_channel_row_column(cifar):
    train = load("cifar-fs", cifar.tar_root, splits=("train",))["train"]
    first = train.images[train.class_indices(train.class_names.index(PATTERN_CLASS))[0]]
    expected = torch.zeros(3, 32, 32, dtype=torch.uint8)
    for (c, r, col), v in PATTERN.items():
        expected[c, r, col] = v
    assert torch.equal(first, expected)


def test_resize_and_channels_match_pil(cifar):
    from PIL import Image

    spec = DATASETS["fc100"]
    for size, channels in ((16, 1), (32, 1), (48, 3)):
        test = load_splits(replace(spec, image_size=size, in_channels=channels), splits=("test",),
                           data_root=cifar.folder_root, cache=False, progress=False)["test"]
        assert test.images.shape[1:] == (channels, size, size)
        for k in (0, 7):
            rows = cifar.rows[test.class_names[k]]
            for i, row in enumerate(rows):
                img = Image.fromarray(row.reshape(3, 32, 32).transpose(1, 2, 0), "RGB")
                img = img.convert("L") if channels == 1 else img
                if size != 32:
                    img = img.resize((size, size), resample=Image.Resampling.LANCZOS)
                ref = torch.from_numpy(np.asarray(img).copy()).reshape(size, size, channels).permute(2, 0, 1)
                assert torch.equal(test.images[test.class_indices(k)[i]], ref)


def test_defaults_and_class_lists_without_decoding(cifar):
    from l2l_app.data import list_classes

    for name in ("cifar-fs", "fc100"):
        spec = DATASETS[name]
        assert (spec.image_size, spec.in_channels, spec.resize, spec.normalize) == (32, 3, "stretch", True)
        assert spec.options == ("image_size", "channels", "resize", "normalize")
        lists = list_classes(spec, cifar.tar_root)
        assert {s: len(v) for s, v in lists.items()} == SIZES[name]


def test_cache_hit_and_fingerprint(cifar, tmp_path, monkeypatch):
    from l2l_app.data import cifar as module

    root = tmp_path / "root"
    write_archive(root, cifar.members)
    first = load_splits("cifar-fs", data_root=root, progress=False)
    assert len(list((root / ".cache").glob("cifar-fs-*.pt"))) == 3

    def no_read(self):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(module.Cifar100, "read", no_read)
    again = load_splits("cifar-fs", data_root=root, progress=False)
    assert all(torch.equal(first[s].images, again[s].images) for s in first)
    os.utime(root / ARCHIVE, ns=(1, 1))  # a changed archive (mtime) misses the cache
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_splits("cifar-fs", data_root=root, progress=False)


# ----------------------------------------------------------------------------- the packaged split files


def test_packaged_split_files_are_the_published_splits():
    for name in ("cifar-fs", "fc100"):
        folder = DATASETS[name].packaged_splits
        lists = {s: read_class_list(folder / f"{s}.txt") for s in ("train", "val", "test")}
        assert {s: len(v) for s, v in lists.items()} == SIZES[name]
        assert sorted(sum(lists.values(), [])) == FINE  # 100 distinct valid fine labels
        assert all(line.startswith("#") for line in (folder / "train.txt").read_text().splitlines()[:2])
    fc100 = {s: read_class_list(DATASETS["fc100"].packaged_splits / f"{s}.txt") for s in ("train", "val", "test")}
    for s, classes in fc100.items():
        wanted = sorted(c for sup in FC100_SUPERCLASSES[s] for c in SUPERCLASSES[sup])
        assert sorted(classes) == wanted  # whole superclasses, the published ones
    cifar_fs_test = read_class_list(DATASETS["cifar-fs"].packaged_splits / "test.txt")
    assert set(cifar_fs_test) == {"baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck",
                                  "plain", "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone",
                                  "wardrobe", "whale", "woman", "worm"}


# ----------------------------------------------------------------------------- refusals


def test_missing_data_says_what_is_looked_for(tmp_path):
    with pytest.raises(DataError) as e:
        load("cifar-fs", tmp_path)
    msg = one_line_error(e)
    assert ARCHIVE in msg and f"{FOLDER}/" in msg and "train, test and meta" in msg and "nothing is downloaded" in msg
    with pytest.raises(DataError, match="no bundled copy"):
        load("fc100", None)
    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / "train").write_bytes(b"x")
    with pytest.raises(DataError) as e:
        load("cifar-fs", tmp_path)
    assert "lacks test and meta" in one_line_error(e)


def test_corrupt_pickle_and_archive(cifar, tmp_path):
    folder = write_folder(tmp_path / "f", {**cifar.members, "meta": b"\x80\x02not a pickle at all"})
    with pytest.raises(DataError) as e:
        load("fc100", folder)
    assert str(folder / "meta") in one_line_error(e)
    # well-formed pickles of the wrong content: each refusal names the file and what is wrong
    wrong = {"test": (py2_pickle({b"fine_labels": [0]}), "'data'"),
             "meta": (py2_pickle({b"fine_label_names": 5}), "must be a list of class names"),
             "train": (py2_pickle({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [100]}),
                       "fine label 100 is outside meta's 100 class names")}
    for member, (content, words) in wrong.items():
        folder = write_folder(tmp_path / member, {**cifar.members, member: content})
        with pytest.raises(DataError) as e:
            load("fc100", folder)
        assert words in one_line_error(e) and str(folder) in str(e.value)
    archive = write_archive(tmp_path / "t", cifar.members)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])  # truncated download
    with pytest.raises(DataError) as e:
        load("fc100", tmp_path / "t")
    assert str(archive) in one_line_error(e)
    archive.write_bytes(b"this is not a gzip file")
    with pytest.raises(DataError) as e:
        load("fc100", tmp_path / "t")
    assert "corrupt" in one_line_error(e)


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["tar", "folder"])
def test_pickle_with_a_forbidden_global_is_refused_and_not_run(cifar, tmp_path, layout):
    marker = tmp_path / "executed"
    members = {**cifar.members, "meta": pickle.dumps({b"fine_label_names": _RunsACommand(marker)}, protocol=2)}
    (write_archive if layout == "tar" else write_folder)(tmp_path / "root", members)
    with pytest.raises(DataError) as e:
        load("cifar-fs", tmp_path / "root")
    assert "refused" in one_line_error(e) and "meta" in str(e.value)
    assert not marker.exists()


def test_split_file_class_not_in_cifar(cifar, tmp_path):
    (tmp_path / "train.txt").write_text("# header\napple\n\naple_tree\n")
    with pytest.raises(DataError) as e:
        load_splits("cifar-fs", ("train",), cifar.folder_root, cache=False, progress=False, split_dir=tmp_path)
    msg = one_line_error(e)
    assert "'aple_tree'" in msg and "not a CIFAR-100 fine label" in msg and "maple_tree" in msg
    (tmp_path / "train.txt").write_text("apple\npear\napple\n")
    with pytest.raises(DataError) as e:
        load_splits("cifar-fs", ("train",), cifar.folder_root, cache=False, progress=False, split_dir=tmp_path)
    assert "line 3" in one_line_error(e) and "twice" in str(e.value)


# ----------------------------------------------------------------------------- end to end


def test_cli_train_writes_normalised_preprocessing(cifar, tmp_path):
    from click.testing import CliRunner

    from l2l_app.cli import cli

    root = tmp_path / "data"
    write_archive(root, cifar.members)
    run = tmp_path / "RUN"
    result = CliRunner().invoke(cli, ["train", "--dataset", "cifar-fs", "--data-root", str(root),
                                      "--iterations", "2", "--hidden", "8", "--ways", "2", "--shots", "1",
                                      "--queries", "1", "--val-every", "2", "--val-episodes", "2", "--out", str(run)])
    assert result.exit_code == 0, result.output
    pre = json.loads((run / "preprocessing.json").read_text())
    assert (pre["dataset"], pre["channels"], pre["image_size"], pre["resize"]) == ("cifar-fs", 3, 32, "stretch")
    # the train split's per-channel statistics, from the raw rows of its 64 classes (population std); rel 1e-9
    # bounds the 12-digit rounding of the JSON (5e-12) plus float64 sums over 65,536 values per channel (~1e-11),
    # amplified ~4x in the std by E[x^2] - mean^2
    train = read_class_list(DATASETS["cifar-fs"].packaged_splits / "train.txt")
    pixels = np.stack([cifar.rows[n] for n in train]).reshape(-1, 3, 1024).transpose(1, 0, 2).reshape(3, -1) / 255.0
    assert pre["mean"] == pytest.approx(pixels.mean(axis=1).tolist(), rel=1e-9)
    assert pre["std"] == pytest.approx(pixels.std(axis=1).tolist(), rel=1e-9)
