"""mini-ImageNet: the JPEG layout decoded in parallel threads (bit-identical to one thread, in order),
and learn2learn's pickle layout (exact pixels, split mapping, cache, one-line errors, no code run)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from l2l_app.cli import cli
from l2l_app.data import images, load_split, load_splits, safe_pickle
from l2l_app.data.miniimagenet import MINIIMAGENET, PICKLE_FILES, PickleSource
from l2l_app.errors import DataError

LANCZOS = Image.Resampling.LANCZOS


def _smooth_rgb(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random RGB image (a coarse random grid upsampled), like a photo rather than noise."""
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kwargs)
    text = str(e.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------- Ravi & Larochelle's JPEG layout

#: split -> labels in the order their rows appear in the CSV (not sorted: the class order is this order)
JPEG_SPLITS = {"train": ["n03000000", "n01000000", "n02000000"], "val": ["n05000000", "n04000000"],
               "test": ["n06000000", "n07000000"]}
PER_CLASS = 4


@pytest.fixture
def jpeg_root(tmp_path) -> Path:
    """images/*.jpg and {train,val,test}.csv: mostly 84x84 RGB, some larger (resized) and one grey JPEG."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    for split, labels in JPEG_SPLITS.items():
        lines = ["filename,label"]
        for label in labels:
            for i in range(PER_CLASS):
                name = f"{label}{i:08d}.jpg"
                img = _smooth_rgb(rng, *((84, 84) if i % 2 == 0 else (100, 90)))
                if label == "n01000000" and i == 1:
                    img = img.convert("L")
                img.save(root / "images" / name, quality=90)
                lines.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def _csv_paths(root: Path, split: str) -> List[Path]:
    rows = (root / f"{split}.csv").read_text().split()[1:]
    return [root / "images" / row.split(",")[0] for row in rows]


def test_parallel_decoding_is_bit_identical_and_in_order(jpeg_root, monkeypatch):
    loaded = {}
    for workers in ("1", "3"):
        monkeypatch.setenv("L2L_APP_DECODE_WORKERS", workers)
        loaded[workers] = load_splits("miniimagenet", data_root=jpeg_root, cache=False, progress=False)
    for split, labels in JPEG_SPLITS.items():
        one, several = loaded["1"][split], loaded["3"][split]
        assert torch.equal(one.images, several.images) and torch.equal(one.labels, several.labels)
        assert one.class_names == several.class_names == labels  # order of first appearance in the CSV
        assert one.images.shape == (len(labels) * PER_CLASS, 3, 84, 84) and one.images.dtype == torch.uint8
        assert torch.equal(one.labels, torch.arange(len(labels)).repeat_interleave(PER_CLASS))
        assert one.sources == [p.relative_to(jpeg_root).as_posix() for p in _csv_paths(jpeg_root, split)]
        # The PIL reference, file by file in CSV order: RGB, LANCZOS only when not already 84x84.
        for k, path in enumerate(_csv_paths(jpeg_root, split)):
            with Image.open(path) as img:
                ref = img.convert("RGB")
                ref = ref if ref.size == (84, 84) else ref.resize((84, 84), LANCZOS)
                assert torch.equal(one.images[k], torch.from_numpy(np.array(ref)).permute(2, 0, 1))


def test_jpeg_layout_follows_the_configured_mode_size_and_resize(jpeg_root):
    spec = MINIIMAGENET.configured(SimpleNamespace(image_size=32, channels=1, resize="crop", normalize=None))
    d = load_split(spec, "train", jpeg_root, cache=False, progress=False)
    assert d.images.shape == (3 * PER_CLASS, 1, 32, 32)
    for k, path in enumerate(_csv_paths(jpeg_root, "train")):
        ref = images.decode(path.read_bytes(), str(path), "L", 32, "crop")
        assert torch.equal(d.images[k, 0], torch.tensor(ref))


@pytest.mark.parametrize("skip", [False, True])
def test_missing_jpeg_names_the_class_split_file_and_path(jpeg_root, skip):
    gone = _csv_paths(jpeg_root, "val")[5]
    gone.unlink()
    text = _one_line_error(load_split, "miniimagenet", "val", jpeg_root, cache=False, progress=False,
                           skip_bad_images=skip)
    assert "class n04000000" in text and str(jpeg_root / "val.csv") in text and str(gone) in text
    assert "not found" in text


def test_corrupt_jpeg_is_named_or_skipped_in_its_own_split(jpeg_root):
    broken = _csv_paths(jpeg_root, "val")[2]
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    text = _one_line_error(load_split, "miniimagenet", "val", jpeg_root, cache=False, progress=False)
    assert text.startswith(f"cannot decode image {broken}") and "--skip-bad-images" in text
    splits = load_splits("miniimagenet", data_root=jpeg_root, cache=False, progress=False, skip_bad_images=True)
    assert len(splits["val"].skipped) == 1 and str(broken) in splits["val"].skipped[0]
    assert splits["train"].skipped == [] and splits["test"].skipped == []
    assert splits["val"].class_counts.tolist() == [PER_CLASS - 1, PER_CLASS]
    assert broken.relative_to(jpeg_root).as_posix() not in splits["val"].sources
    assert len(splits["val"].sources) == 2 * PER_CLASS - 1


def test_root_without_either_layout_names_both(tmp_path):
    text = _one_line_error(load_split, "miniimagenet", "train", tmp_path, progress=False)
    assert text.startswith(f"no mini-ImageNet images under {tmp_path}")
    assert "images/" in text and all(name in text for name in PICKLE_FILES.values())


# ----------------------------------------------------------------------------- learn2learn's pickle layout

#: split -> class names in the pickle's (unsorted) insertion order; 3 images each
PICKLE_CLASSES = {"train": ["n0300", "n0100", "n0200"], "val": ["n0500", "n0400"], "test": ["n0600", "n0700"]}
SIDE = 84


def _split_pickle(rng: np.random.Generator, names: List[str]) -> Dict[str, object]:
    """learn2learn's dict: 3 images per class at shuffled rows, plus one row no class lists."""
    n = 3 * len(names) + 1
    pixels = rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)
    order = rng.permutation(n)
    class_dict = {name: [int(r) for r in order[3 * c:3 * c + 3]] for c, name in enumerate(names)}
    return {"image_data": pixels, "class_dict": class_dict}


def _write(path: Path, obj: object) -> None:
    """Pickle `obj` to `path` with protocol 4 (learn2learn's files predate protocol 5, whose NumPy
    arrays need a global `safe_pickle` does not allow)."""
    path.write_bytes(pickle.dumps(obj, protocol=4))


@pytest.fixture
def pickle_root(tmp_path) -> Tuple[Path, Dict[str, Dict[str, object]]]:
    """(folder with the three pickles, split -> the dict pickled in it)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "l2l"
    root.mkdir()
    contents = {}
    for split, names in PICKLE_CLASSES.items():
        contents[split] = _split_pickle(rng, names)
        _write(root / PICKLE_FILES[split], contents[split])
    return root, contents


def _expected(content: Dict[str, object], name: str) -> torch.Tensor:
    """The class's images as put in: uint8 [3, 3, SIDE, SIDE] in the listed row order."""
    rows = content["class_dict"][name]
    return torch.from_numpy(content["image_data"][rows]).permute(0, 3, 1, 2)


def test_pickles_give_exactly_the_arrays_put_in(pickle_root):
    root, contents = pickle_root
    splits = load_splits("miniimagenet", data_root=root, cache=False, progress=False)
    assert PICKLE_FILES["val"] == "mini-imagenet-cache-validation.pkl"
    for split, names in PICKLE_CLASSES.items():
        d = splits[split]
        assert d.class_names == sorted(names)  # the val split holds the validation pickle's classes
        assert d.images.shape == (3 * len(names), 3, SIDE, SIDE) and d.images.dtype == torch.uint8
        assert torch.equal(d.labels, torch.arange(len(names)).repeat_interleave(3))
        for c, name in enumerate(d.class_names):
            assert torch.equal(d.images[d.class_indices(c)], _expected(contents[split], name))


def test_pickle_layout_resizes_and_converts(pickle_root):
    root, contents = pickle_root
    spec = MINIIMAGENET.configured(SimpleNamespace(image_size=32, channels=1, resize=None, normalize=None))
    d = load_split(spec, "test", root, cache=False, progress=False)
    assert d.images.shape == (6, 1, 32, 32)
    for c, name in enumerate(d.class_names):
        for k, row in enumerate(contents["test"]["class_dict"][name]):
            ref = Image.fromarray(contents["test"]["image_data"][row], "RGB").convert("L").resize((32, 32), LANCZOS)
            assert torch.equal(d.images[d.class_indices(c)[k], 0], torch.from_numpy(np.array(ref)))


def test_pickle_cache_hit_and_miss_on_change(pickle_root, monkeypatch):
    root, contents = pickle_root
    reads: List[str] = []
    real_load = safe_pickle.load
    monkeypatch.setattr(safe_pickle, "load", lambda source, where, **kw: reads.append(Path(where).name)
                        or real_load(source, where, **kw))
    first = load_splits("miniimagenet", data_root=root, progress=False)
    assert sorted(reads) == sorted(PICKLE_FILES.values())
    assert len(list((root / ".cache").glob("miniimagenet-*.pt"))) == 3

    reads.clear()
    again = load_splits("miniimagenet", data_root=root, progress=False)
    assert reads == [] and all(torch.equal(first[s].images, again[s].images) for s in first)

    # Same shapes (same file size), new pixels and a new mtime: the val cache misses, the others still hit.
    path = root / PICKLE_FILES["val"]
    before = PickleSource(root).fingerprint(path)
    stat = path.stat()
    changed = dict(contents["val"], image_data=255 - contents["val"]["image_data"])
    _write(path, changed)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert path.stat().st_size == stat.st_size and PickleSource(root).fingerprint(path) != before
    reads.clear()
    after = load_splits("miniimagenet", data_root=root, progress=False)
    assert reads == [PICKLE_FILES["val"]]
    assert torch.equal(after["val"].images[:3], _expected(changed, "n0400"))
    assert torch.equal(after["val"].images, 255 - first["val"].images)


def _drop_key(content):
    return {"image_data": content["image_data"]}


def _float_pixels(content):
    return dict(content, image_data=content["image_data"].astype(np.float32))


def _row_out_of_range(content):
    n = content["image_data"].shape[0]
    return dict(content, class_dict=dict(content["class_dict"], n0100=[0, 1, n]))


@pytest.mark.parametrize("break_it, words", [
    (lambda content: [content], ["expected learn2learn's mini-ImageNet pickle", "'image_data' and 'class_dict'",
                                 "got list"]),
    (_drop_key, ["'image_data' and 'class_dict'", "keys ['image_data']"]),
    (_float_pixels, ["'image_data' must be a uint8 array [N, H, W, 3]", "float32 [10, 84, 84, 3]"]),
    (_row_out_of_range, ["class n0100 lists row 10", "has 10 images (rows 0..9)"]),
], ids=["not-a-dict", "missing-key", "float-pixels", "row-out-of-range"])
def test_malformed_pickle_is_one_line_naming_the_file(pickle_root, break_it, words):
    root, contents = pickle_root
    path = root / PICKLE_FILES["train"]
    _write(path, break_it(contents["train"]))
    text = _one_line_error(load_split, "miniimagenet", "train", root, progress=False)
    assert text.startswith(f"{path}: ") and all(w in text for w in words), text
    assert not (root / ".cache").exists()  # nothing cached for a refused load


def test_a_web_page_saved_as_pickle_is_refused(pickle_root):
    root, _ = pickle_root
    path = root / PICKLE_FILES["test"]
    path.write_bytes(b"<!DOCTYPE html><html>download quota exceeded</html>")
    text = _one_line_error(load_split, "miniimagenet", "test", root, progress=False)
    assert text.startswith(f"cannot read {path}") and "not the expected dataset pickle" in text


class _MakesAFolder:
    """A pickle payload that would call os.mkdir(target) when unpickled with plain pickle."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


@pytest.mark.parametrize("where", ["top", "image_data", "class_rows"])
def test_malicious_pickle_does_not_execute(pickle_root, where):
    root, contents = pickle_root
    marker = root.parent / "pwned"
    evil = _MakesAFolder(marker)
    payload = {"top": evil, "image_data": dict(contents["train"], image_data=evil),
               "class_rows": dict(contents["train"], class_dict={"n0100": evil})}[where]
    path = root / PICKLE_FILES["train"]
    _write(path, payload)
    text = _one_line_error(load_split, "miniimagenet", "train", root, progress=False)
    assert text.startswith(f"cannot read {path}") and "refused to load" in text and "mkdir" in text
    assert not marker.exists()


def test_missing_pickle_names_the_three_files_and_both_layouts(pickle_root):
    root, _ = pickle_root
    (root / PICKLE_FILES["test"]).unlink()
    text = _one_line_error(load_split, "miniimagenet", "train", root, progress=False)
    assert f"{PICKLE_FILES['test']} not found" in text
    assert all(name in text for name in PICKLE_FILES.values()) and "images/" in text and "train.csv" in text


def test_images_folder_takes_precedence_over_pickles(jpeg_root, pickle_root):
    root, _ = pickle_root
    for name in PICKLE_FILES.values():
        (jpeg_root / name).write_bytes((root / name).read_bytes())
    d = load_split("miniimagenet", "val", jpeg_root, cache=False, progress=False)
    assert d.class_names == JPEG_SPLITS["val"]


def test_cli_refuses_incomplete_pickles_and_writes_nothing(pickle_root, tmp_path):
    root, _ = pickle_root
    (root / PICKLE_FILES["val"]).unlink()
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--dataset", "miniimagenet", "--data-root", str(root),
                                      "--out", str(out), "--algo", "protonet", "--hidden", "8", "--ways", "2",
                                      "--shots", "1", "--queries", "1", "--iterations", "1", "--device", "cpu",
                                      "--quiet"])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and PICKLE_FILES["val"] in err
    assert not out.exists() and not (root / ".cache").exists()
