"""Dataset loading: layouts, preprocessing, rotations, cache, errors, the real splits."""
from __future__ import annotations

import dataclasses
import re
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from l2l_app.data import SplitData, build_metadataset, check_disjoint, load_split, load_splits
from l2l_app.data import cache as split_cache
from l2l_app.data import images, miniimagenet, omniglot
from l2l_app.data.types import SPLITS_DIR
from l2l_app.errors import DataError
from l2l_app.registry import DATASETS

from conftest import corrupt_zip_member


def _load(root, split="train", split_dir=None, **kw):
    kw.setdefault("progress", False)
    return load_split("omniglot", split, root, split_dir=split_dir, **kw)


# ----------------------------------------------------------------------------- synthetic Omniglot


def test_zip_and_folder_layouts_give_identical_tensors(synthetic_omniglot):
    s = synthetic_omniglot
    for split in ("train", "val", "test"):
        a = _load(s.zip_root, split, s.split_dir)
        b = _load(s.folder_root, split, s.split_dir)
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.labels, b.labels)
        assert a.class_names == b.class_names == s.splits[split]
        # each item named by its member: in the zip (`archive.zip:member`) or relative to the root
        assert [name.split(":", 1)[1] for name in a.sources] == b.sources and len(b.sources) == len(b.labels)


def test_shapes_range_and_grouped_labels(synthetic_omniglot):
    s = synthetic_omniglot
    d = _load(s.zip_root, "train", s.split_dir)
    n = len(s.splits["train"])
    assert d.images.dtype == torch.uint8 and d.images.shape == (n * 20, 1, 28, 28)
    assert d.labels.dtype == torch.int64 and d.num_classes == n and d.images_per_class == 20
    assert torch.equal(d.labels, torch.arange(n).repeat_interleave(20))
    assert torch.equal(d.class_indices(2), torch.arange(40, 60))
    # Inverted polarity: mostly dark background (0) with bright strokes (255).
    assert d.images.float().mean() < 128 and d.images.max() == 255 and d.images.min() == 0
    assert DATASETS["omniglot"].in_channels == 1 and DATASETS["omniglot"].image_size == 28


def test_preprocessing_matches_pil_reference(synthetic_omniglot):
    from PIL import Image

    s = synthetic_omniglot
    d = _load(s.zip_root, "train", s.split_dir)
    with zipfile.ZipFile(s.zip_root / "images_background.zip") as zf:
        first = sorted(m for m in zf.namelist() if "/Alpha/character01/" in m)[0]
        img = Image.open(io.BytesIO(zf.read(first))).convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    expected = 255 - torch.from_numpy(np.array(img, dtype=np.uint8))
    assert torch.equal(d.images[0, 0], expected)
    assert d.sources[0] == f"images_background.zip:{first}"
    assert d.sources[d.images_per_class] == f"images_background.zip:{first} rot090"  # class 1: rotated 90


def test_rotations_are_counterclockwise_rotations(synthetic_omniglot):
    s = synthetic_omniglot
    d = _load(s.zip_root, "train", s.split_dir)
    # Classes 0..3 are Alpha/character01 at 0, 90, 180, 270 degrees.
    assert d.class_names[:4] == [f"Alpha/character01/rot{r:03d}" for r in (0, 90, 180, 270)]
    base = d.images[d.labels == 0]
    for k in range(1, 4):
        assert torch.equal(d.images[d.labels == k], torch.rot90(base, k, dims=(-2, -1)))
    # Counterclockwise: the top row of a 90-degree rotation is the original's last column.
    assert torch.equal(d.images[d.labels == 1][:, 0, 0, :], base[:, 0, :, -1])


def test_cache_hit_returns_identical_tensors_without_decoding(synthetic_omniglot, monkeypatch):
    s = synthetic_omniglot
    first = _load(s.zip_root, "train", s.split_dir)
    cached = sorted((s.zip_root / ".cache").glob("omniglot-*.pt"))
    # One pass built and cached all three splits.
    assert {p.name.split("-")[1] for p in cached} == {"train", "val", "test"}

    def boom(*a, **k):
        raise AssertionError("decoded although the cache should have been used")

    monkeypatch.setattr(images, "decode", boom)
    again = _load(s.zip_root, "train", s.split_dir)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert first.class_names == again.class_names
    _load(s.zip_root, "test", s.split_dir)  # also served from the cache built in the first pass
    with pytest.raises(AssertionError, match="decoded"):
        _load(s.zip_root, "train", s.split_dir, cache=False)


def test_cache_key_changes_with_preprocessing_and_inputs(synthetic_omniglot, monkeypatch):
    s = synthetic_omniglot
    spec = DATASETS["omniglot"]
    source = spec.open(s.zip_root)
    split_file = s.split_dir / "train.txt"
    key = split_cache.cache_key(spec, source, "train", split_file)
    assert key == split_cache.cache_key(spec, spec.open(s.zip_root), "train", split_file)
    assert key != split_cache.cache_key(spec, source, "val", s.split_dir / "val.txt")
    monkeypatch.setattr(images, "RESIZE_FILTER", "BILINEAR")
    assert split_cache.cache_key(spec, source, "train", split_file) != key
    monkeypatch.setattr(images, "RESIZE_FILTER", "LANCZOS")
    monkeypatch.setattr(split_cache, "CACHE_VERSION", split_cache.CACHE_VERSION + 1)
    assert split_cache.cache_key(spec, source, "train", split_file) != key
    monkeypatch.undo()
    other = dataclasses.replace(spec, image_size=32)
    assert split_cache.cache_key(other, source, "train", split_file) != key
    for changed in (dataclasses.replace(spec, in_channels=3), dataclasses.replace(spec, resize="crop")):
        assert split_cache.cache_key(changed, source, "train", split_file) != key
    # Content of the data: a changed zip changes the key.
    with zipfile.ZipFile(s.zip_root / "images_background.zip", "a") as zf:
        zf.writestr("images_background/Alpha/character01/extra.txt", b"x")
    assert split_cache.cache_key(spec, spec.open(s.zip_root), "train", split_file) != key
    # Folder layout: touching a file changes the key.
    fsrc = spec.open(s.folder_root)
    fkey = split_cache.cache_key(spec, fsrc, "train", split_file)
    png = next((s.folder_root / "images_background" / "Alpha" / "character01").glob("*.png"))
    st = png.stat()
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert split_cache.cache_key(spec, spec.open(s.folder_root), "train", split_file) != fkey


def test_read_only_root_falls_back_to_cache_dir(synthetic_omniglot, tmp_path, monkeypatch):
    s = synthetic_omniglot
    fallback = tmp_path / "fallback"
    monkeypatch.setenv("L2L_APP_CACHE_DIR", str(fallback))
    os.chmod(s.zip_root, 0o555)
    try:
        a = _load(s.zip_root, "val", s.split_dir)
        assert not (s.zip_root / ".cache").exists()
        assert len(list(fallback.glob("omniglot-val-*.pt"))) == 1
        monkeypatch.setattr(images, "decode", lambda *a, **k: pytest.fail("cache not used"))
        assert torch.equal(_load(s.zip_root, "val", s.split_dir).images, a.images)
    finally:
        os.chmod(s.zip_root, 0o755)


def test_corrupt_cache_is_rebuilt(synthetic_omniglot):
    s = synthetic_omniglot
    a = _load(s.zip_root, "val", s.split_dir)
    for p in (s.zip_root / ".cache").glob("omniglot-val-*.pt"):
        p.write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match="ignoring unreadable cache"):
        b = _load(s.zip_root, "val", s.split_dir)
    assert torch.equal(a.images, b.images)


def test_build_metadataset(synthetic_omniglot):
    import learn2learn as l2l

    s = synthetic_omniglot
    d = _load(s.zip_root, "val", s.split_dir)
    md = build_metadataset(d)
    assert isinstance(md, l2l.data.MetaDataset) and len(md) == len(d.labels)
    assert sorted(md.labels) == list(range(d.num_classes))
    x, y = md[25]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and y == 1
    assert torch.equal(x, d.images[25].float() / 255)
    assert md.labels_to_indices[1] == list(range(20, 40))


def test_check_disjoint(tiny_split_factory):
    a, b = tiny_split_factory(4, 2), tiny_split_factory(4, 2)
    check_disjoint({"train": a})
    with pytest.raises(DataError, match=r"splits train and test share 4 class\(es\): class000"):
        check_disjoint({"train": a, "test": b})
    # Another rotation of the same character is still the same character.
    x = SplitData(a.images, a.labels, [f"A/character01/rot{r:03d}" for r in (0, 90, 180, 270)])
    y = SplitData(a.images, a.labels, [f"A/character01/rot{r:03d}" for r in (0, 90, 180, 270)][::-1])
    y.class_names = ["B/c/rot000", "B/c/rot090", "B/d/rot000", "A/character01/rot090"]
    with pytest.raises(DataError, match="A/character01"):
        check_disjoint({"train": x, "val": y})


def test_load_splits_checks_disjointness(synthetic_omniglot):
    s = synthetic_omniglot
    (s.split_dir / "val.txt").write_text("Alpha/character01/rot090\nBeta_(Two)/character02/rot000\n")
    with pytest.raises(DataError, match=r"splits train and val share 1 class\(es\): Alpha/character01;"):
        load_splits("omniglot", None, s.zip_root, progress=False, split_dir=s.split_dir)


# ----------------------------------------------------------------------------- errors


def test_unknown_dataset_and_split():
    valid = ", ".join(DATASETS.names())
    with pytest.raises(DataError, match=r"unknown dataset 'omniglott' \(did you mean 'omniglot'\?\); "
                                        r"valid: " + re.escape(valid)):
        load_split("omniglott", "train")
    with pytest.raises(DataError, match=r"unknown split 'tran' \(did you mean 'train'\?\); valid: train, val, test"):
        load_split("omniglot", "tran")


def test_missing_root_file_root_and_unreadable(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"data root .*nope does not exist; pass --data-root"):
        _load(tmp_path / "nope")
    f = tmp_path / "images_background.zip"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match=r"is a file, not a folder; pass --data-root .*\(pass its folder"):
        _load(f)
    monkeypatch.setattr(images, "_readable", lambda p: False)
    with pytest.raises(DataError, match=r"data root .* is not readable \(permission denied\)"):
        _load(tmp_path)


def test_neither_zips_nor_folders(tmp_path):
    with pytest.raises(DataError, match=r"no Omniglot data under .*: expected images_background.zip and "
                                        r"images_evaluation.zip, or the extracted folders"):
        _load(tmp_path)


def test_no_default_root_for_miniimagenet():
    with pytest.raises(DataError, match="miniimagenet has no bundled copy: pass --data-root"):
        load_split("miniimagenet", "train")
    with pytest.raises(DataError, match="no mini-ImageNet images under"):
        load_split("miniimagenet", "train", Path(__file__).parent)


def test_class_missing_from_data(synthetic_omniglot):
    s = synthetic_omniglot
    (s.split_dir / "train.txt").write_text("Alpha/character01/rot000\nAlpha/character09/rot000\n")
    with pytest.raises(DataError, match=r"class Alpha/character09/rot000 of the omniglot train split .* "
                                        r"alphabet Alpha has no character09"):
        _load(s.zip_root, "train", s.split_dir)
    (s.split_dir / "train.txt").write_text("Alpha/character01/rot000\nZeta/character01/rot000\n")
    with pytest.raises(DataError, match=r"class Zeta/character01/rot000 .* alphabet 'Zeta' is not in "
                                        r"images_background or images_evaluation;"):
        _load(s.folder_root, "train", s.split_dir)


def test_only_one_archive_present(synthetic_omniglot):
    s = synthetic_omniglot
    (s.zip_root / "images_evaluation.zip").unlink()
    assert _load(s.zip_root, "train", s.split_dir).num_classes == 16  # background alphabets only
    with pytest.raises(DataError, match=r"class Gamma/character01/rot000 .*is not in images_background "
                                         r"\(images_evaluation.zip or images_evaluation/ not found\)"):
        _load(s.zip_root, "test", s.split_dir, cache=False)


def test_malformed_split_line_and_missing_split_file(synthetic_omniglot):
    s = synthetic_omniglot
    (s.split_dir / "val.txt").write_text("Alpha/character01\n")
    with pytest.raises(DataError, match=r"val.txt line 1: expected 'Alphabet/characterNN/rotDDD'"):
        _load(s.zip_root, "val", s.split_dir)
    (s.split_dir / "val.txt").unlink()
    with pytest.raises(DataError, match=r"split file for the omniglot val split not found: expected .*val.txt"):
        _load(s.zip_root, "val", s.split_dir)


def test_corrupt_image_names_the_file(synthetic_omniglot):
    s = synthetic_omniglot
    png = sorted((s.folder_root / "images_background" / "Alpha" / "character02").glob("*.png"))[3]
    png.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=rf"cannot decode image .*{png.name}: .*the file is corrupt"):
        _load(s.folder_root, "train", s.split_dir)
    # Same in a zip.
    bad = corrupt_zip_member(s.zip_root / "images_background.zip", "/Alpha/character02/", 3)
    with pytest.raises(DataError, match=rf"cannot decode image .*images_background.zip:{bad}"):
        _load(s.zip_root, "train", s.split_dir)


def test_too_few_images_and_classes(synthetic_omniglot):
    s = synthetic_omniglot
    char = s.folder_root / "images_background" / "Alpha" / "character03"
    for p in sorted(char.glob("*.png"))[1:]:
        p.unlink()
    with pytest.raises(DataError, match=r"too few images for class Alpha/character03 .*found 1, need at least 2"):
        _load(s.folder_root, "train", s.split_dir)
    (s.split_dir / "val.txt").write_text("Beta_(Two)/character02/rot000\n")
    with pytest.raises(DataError, match=r"too few classes in the omniglot val split .*found 1"):
        _load(s.zip_root, "val", s.split_dir)


def test_error_messages_are_one_line(tmp_path):
    for call in (lambda: load_split("nope", "train"), lambda: _load(tmp_path / "x"), lambda: _load(tmp_path)):
        with pytest.raises(DataError) as e:
            call()
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- real data


def _split_characters(split: str) -> list:
    lines = omniglot.read_omniglot_split(SPLITS_DIR / "omniglot-vinyals" / f"{split}.txt")
    return lines


def test_packaged_vinyals_split_files():
    chars = {}
    for split, n in (("train", 1028), ("val", 172), ("test", 423)):
        lines = _split_characters(split)
        assert len(lines) == 4 * n
        chars[split] = {(a, c) for a, c, _ in lines}
        assert len(chars[split]) == n
        assert {d for _, _, d in lines} == {0, 90, 180, 270}
    assert not (chars["train"] & chars["val"]) and not (chars["train"] & chars["test"])
    assert not (chars["val"] & chars["test"])


def test_packaged_ravi_split_files():
    counts = {}
    for split, n in (("train", 64), ("val", 16), ("test", 20)):
        rows = miniimagenet.read_csv(SPLITS_DIR / "miniimagenet-ravi" / f"{split}.csv")
        labels = {lab for _, lab in rows}
        assert len(labels) == n and len(rows) == 600 * n
        counts[split] = labels
    assert not (counts["train"] & counts["val"]) and not (counts["val"] & counts["test"])


def test_bundled_omniglot_vinyals(omniglot_root):
    """Cold: ~6 s to decode the 32,460 PNGs on one core (all three splits in one pass); warm: < 0.1 s."""
    splits = load_splits("omniglot", None, omniglot_root, progress=False)
    for split, n in (("train", 4112), ("val", 688), ("test", 1692)):
        d = splits[split]
        assert d.num_classes == n and d.images_per_class == 20
        assert d.images.shape == (20 * n, 1, 28, 28) and d.images.dtype == torch.uint8
        assert int(d.class_counts.max()) == 20
    check_disjoint(splits)


def test_miniimagenet_sample_loads(miniimagenet_sample):
    d = load_split("miniimagenet", "val", miniimagenet_sample, progress=False)
    assert d.num_classes == 16 and d.images_per_class == 20
    assert d.images.shape == (16 * 20, 3, 84, 84) and d.images.dtype == torch.uint8
    assert torch.equal(d.labels, torch.arange(16).repeat_interleave(20))
    assert d.class_names[0].startswith("n") and len(set(d.class_names)) == 16
    # Loaded again from the fallback cache (the shared folder is read-only).
    again = load_split("miniimagenet", "val", miniimagenet_sample, progress=False)
    assert torch.equal(d.images, again.images)
    assert not (miniimagenet_sample / ".cache").exists()


# ----------------------------------------------------------------------------- the package: registry, interface, imports

DATA_DIR = Path(__file__).resolve().parent.parent / "l2l_app" / "data"
DATA_MODULES = sorted(f"l2l_app.data.{p.stem}" for p in DATA_DIR.glob("*.py") if not p.stem.startswith("_"))


def test_import_submodules_registered_every_dataset_module():
    # Each dataset module registered itself when `l2l_app.data` imported the package's modules.
    assert {"omniglot", "miniimagenet"} <= set(DATASETS)
    assert type(DATASETS["omniglot"]).__module__ == "l2l_app.data.omniglot"
    assert type(DATASETS["miniimagenet"]).__module__ == "l2l_app.data.miniimagenet"
    assert DATASETS.names()[0] == "omniglot"  # the default first: listings and messages start with it


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_registered_dataset_implements_the_interface(name):
    from l2l_app.data import dataset_spec
    from l2l_app.data.types import DATA_OPTIONS, IMAGES, RESIZE_POLICIES, VECTORS, Dataset

    spec = DATASETS[name]
    assert isinstance(spec, Dataset) and not type(spec).__abstractmethods__
    assert spec.name == name and dataset_spec(name) is spec
    assert spec.kind in (IMAGES, VECTORS) and spec.splits
    if spec.kind == IMAGES:
        assert spec.in_channels in (1, 3) and spec.image_size > 0 and spec.resize in RESIZE_POLICIES
    assert spec.default_root is None or isinstance(spec.default_root, Path)
    assert set(spec.options) <= set(DATA_OPTIONS)
    # Every dataset gives the cache key at least the base parameter names (values differ).
    assert set(spec.cache_params()) >= set(DATASETS["omniglot"].cache_params())
    # Packaged split files, when the dataset has them, exist for every split.
    if spec.packaged_splits is not None:
        assert spec.split_files(Path("/nonexistent"), None) == {
            s: spec.packaged_splits / f"{s}.{spec.split_suffix}" for s in spec.splits}
    for method in ("open", "build", "cache_params", "split_files", "expected_split_file"):
        assert callable(getattr(spec, method))


def _module_imports(path: Path):
    """Names of the modules `path` imports at module level (not in functions or TYPE_CHECKING blocks)."""
    import ast

    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: within l2l_app.data
                base = "l2l_app.data" + (f".{base}" if base else "")
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in DATA_MODULES}
    return out


def test_types_is_a_leaf_and_the_modules_form_no_cycle():
    import sys

    leaf = _module_imports(DATA_DIR / "types.py")
    allowed = set(sys.stdlib_module_names) | {"torch", "__future__", "l2l_app.errors"}
    assert {m for m in leaf if m.split(".")[0] not in allowed and m not in allowed} == set()
    graph = {m: {i for i in _module_imports(DATA_DIR / f"{m.rsplit('.', 1)[1]}.py") if i in DATA_MODULES}
             for m in DATA_MODULES}
    done: set = set()

    def visit(m, path):
        assert m not in path, f"import cycle: {' -> '.join(path + [m])}"
        if m not in done:
            for n in graph[m]:
                visit(n, path + [m])
            done.add(m)

    for m in DATA_MODULES:
        visit(m, [])


def test_only_a_dataset_module_names_its_dataset():
    import ast

    for p in DATA_DIR.glob("*.py"):
        literals = {n.value for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Constant)}
        for name in DATASETS:
            if type(DATASETS[name]).__module__ != f"l2l_app.data.{p.stem}":
                assert name not in literals, f"{p.name} names the dataset {name!r}; ask its Dataset object instead"
