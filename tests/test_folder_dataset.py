"""`--dataset folder`: class folders in both layouts, split files and seeded splits, messy folders,
the cache key, and a run end to end through the CLI.  Every tree is made here with PIL."""
from __future__ import annotations

import dataclasses
import json
import os
import unicodedata
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from l2l_app.cli import cli
from l2l_app.data import cache as split_cache
from l2l_app.data import class_split, images, list_classes, load_split, load_splits
from l2l_app.data.folder import ClassFolders
from l2l_app.errors import DataError
from l2l_app.registry import DATASETS

SIZE = 16
SPLITS = ("train", "val", "test")
#: layout-A classes: split -> class names (written in this order: the loader must sort them)
SPLIT_CLASSES = {"train": ["dog", "cat", "ant"], "val": ["owl", "bee"], "test": ["fox", "elk"]}


# ----------------------------------------------------------------------------- making trees


def save(path: Path, img: Image.Image, **kw) -> Path:
    """Write `img` to `path` (format from the extension), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def noise(seed: int, size: Tuple[int, int] = (20, 24), mode: str = "RGB") -> Image.Image:
    """Random pixels, `size` = (width, height)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def add_class(folder: Path, n: int = 3, seed: int = 0, size: Tuple[int, int] = (20, 24)) -> List[Path]:
    """`n` random RGB PNGs in `folder`."""
    return [save(folder / f"img{k}.png", noise(seed * 100 + k, size)) for k in range(n)]


def split_folders(root: Path, classes: Dict[str, List[str]] = SPLIT_CLASSES) -> Path:
    """Layout A: root/{train,val,test}/<class>/img*.png."""
    for i, (split, names) in enumerate(classes.items()):
        for j, name in enumerate(names):
            add_class(root / split / name, seed=10 * i + j)
    return root


def class_folders(root: Path, n_classes: int = 10, n_images: int = 3) -> Path:
    """Layout B: root/class NN/img*.png."""
    for c in range(n_classes):
        add_class(root / f"class {c:02d}", n=n_images, seed=c)
    return root


def folder(**settings) -> ClassFolders:
    """The registered folder dataset at SIZE, with `settings` (the fields `configured` sets)."""
    return dataclasses.replace(DATASETS["folder"], **{"image_size": SIZE, **settings})


def load(root: Path, split: str = "train", cache: bool = True, **settings):
    return load_split(folder(**settings), split, root, cache=cache, progress=False)


def load_all(root: Path, **settings):
    return load_splits(folder(**settings), data_root=root, progress=False)


def error(fn, *args, **kw) -> str:
    """The one-line DataError message of fn(*args, **kw)."""
    with pytest.raises(DataError) as e:
        fn(*args, **kw)
    text = str(e.value)
    assert "\n" not in text, text
    return text


def decoded(paths: Iterable[Path], mode: str = "RGB", resize: str = "crop") -> torch.Tensor:
    """The reference: each file through images.decode, stacked uint8 [n, C, SIZE, SIZE]."""
    return images.to_chw([images.decode(p.read_bytes(), str(p), mode, SIZE, resize) for p in paths], mode, SIZE)


def count_decodes(monkeypatch) -> List[str]:
    """Record every images.decode call (the file it decodes)."""
    calls: List[str] = []
    real = images.decode

    def counting(data, where, *a, **k):
        calls.append(where)
        return real(data, where, *a, **k)

    monkeypatch.setattr(images, "decode", counting)
    return calls


# ----------------------------------------------------------------------------- layout A: split folders


def test_split_folders_give_sorted_classes_and_every_image(tmp_path):
    root = split_folders(tmp_path / "d")
    out = load_all(root)
    for split, names in SPLIT_CLASSES.items():
        d = out[split]
        assert d.class_names == sorted(names)
        assert d.images.shape == (3 * len(names), 3, SIZE, SIZE) and d.images.dtype == torch.uint8
        assert d.labels.tolist() == [c for c in range(len(names)) for _ in range(3)]
        for c, name in enumerate(d.class_names):  # images of class c are that folder's files, in name order
            assert torch.equal(d.images[d.labels == c], decoded(sorted((root / split / name).glob("*.png"))))
    assert list_classes(folder(), root) == {s: sorted(v) for s, v in SPLIT_CLASSES.items()}


def test_split_folders_missing_one_names_it_and_suggests_the_other_layout(tmp_path):
    root = tmp_path / "d"
    for split in ("train", "test"):
        for name in ("a", "b"):
            add_class(root / split / name)
    text = error(load, root)
    assert "val/" in text and "--split-file" in text and "train/, test/" in text


def test_split_file_is_refused_with_split_folders(tmp_path):
    root = split_folders(tmp_path / "d")
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({s: v for s, v in SPLIT_CLASSES.items()}))
    text = error(load, root, split_file=str(split_file))
    assert "--split-file" in text and "drop --split-file" in text


def test_class_in_two_split_folders_is_refused(tmp_path):
    root = split_folders(tmp_path / "d", {"train": ["a", "b"], "val": ["b", "c"], "test": ["d", "e"]})
    text = error(load, root)
    assert "'b'" in text and "train" in text and "val" in text


def test_data_root_that_is_a_split_folder_points_at_its_parent(tmp_path):
    root = split_folders(tmp_path / "d")
    text = error(load, root / "train")
    assert f"--data-root {root}" in text


# ----------------------------------------------------------------------------- layout B: class folders


@pytest.mark.parametrize("kind", ["json", "text"])
def test_split_file_assigns_the_listed_classes(tmp_path, kind):
    root = class_folders(tmp_path / "d", n_classes=6)
    wanted = {"train": ["class 04", "class 00"], "val": ["class 01", "class 05"], "test": ["class 03", "class 02"]}
    if kind == "json":
        split_file = tmp_path / "split.json"
        split_file.write_text(json.dumps(wanted))
    else:
        split_file = tmp_path / "split.txt"
        split_file.write_text("# my split\n" + "".join(f"[{s}]\n" + "\n".join(v) + "\n\n" for s, v in wanted.items()))
    out = load_all(root, split_file=str(split_file))
    assert {s: d.class_names for s, d in out.items()} == {s: sorted(v) for s, v in wanted.items()}
    assert torch.equal(out["train"].images[:3], decoded(sorted((root / "class 00").glob("*.png"))))


def test_seeded_split_is_reproducible_disjoint_and_follows_seed_and_ratios(tmp_path):
    root = class_folders(tmp_path / "d", n_classes=12)
    names = [f"class {c:02d}" for c in range(12)]

    def classes(**settings) -> Dict[str, List[str]]:
        return {s: d.class_names for s, d in load_all(root, **settings).items()}

    first = classes()
    assert first == classes(), "the same seed gives the same split"
    assert first == class_split.seeded_split(names, (0.64, 0.16, 0.2), 0)
    assert sorted(c for v in first.values() for c in v) == names  # every class once: disjoint and complete
    assert [len(first[s]) for s in SPLITS] == [round(0.64 * 12), round(0.16 * 12), 12 - 8 - 2]
    others = [classes(split_seed=seed) for seed in (1, 2, 3)]
    assert any(o != first for o in others), "another seed gives another split"
    halves = classes(split_ratios="0.5,0.25,0.25", split_seed=7)
    assert [len(halves[s]) for s in SPLITS] == [6, 3, 3]
    assert halves == class_split.seeded_split(names, (0.5, 0.25, 0.25), 7)
    assert list_classes(folder(split_ratios="0.5,0.25,0.25", split_seed=7), root) == halves


def test_too_few_classes_for_a_seeded_split(tmp_path):
    root = class_folders(tmp_path / "d", n_classes=5)
    assert "--split-ratios" in error(load, root)


@pytest.mark.parametrize("content,words", [
    ({"train": ["class 00", "class 01"], "val": ["class 02", "clas 03"], "test": ["class 04", "class 05"]},
     ["'clas 03'", "did you mean 'class 03'"]),
    ({"train": ["class 00", "class 01"], "val": ["class 01", "class 03"], "test": ["class 04", "class 05"]},
     ["'class 01'", "both the train and the val split"]),
    ({"train": ["class 00", "class 01"], "val": ["class 02", "class 03"]}, ["no test split"]),
    ("{\"train\": [\"class 00\",", ["not valid JSON"]),
])
def test_split_file_errors_are_one_line(tmp_path, content, words):
    root = class_folders(tmp_path / "d", n_classes=6)
    split_file = tmp_path / "split.json"
    split_file.write_text(content if isinstance(content, str) else json.dumps(content))
    text = error(load, root, split_file=str(split_file))
    assert str(split_file) in text and all(w in text for w in words), text


def test_no_data_root_no_class_folders_or_no_images(tmp_path):
    assert "--data-root" in error(load, None) and "one sub-folder of images per class" in error(load, None)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no class folders" in error(load, empty)
    loose = tmp_path / "loose"
    add_class(loose)
    text = error(load, loose)
    assert "no class folders" in text and "holds 3 image(s) itself" in text
    texts = tmp_path / "texts"
    for c in range(10):
        (texts / f"c{c}").mkdir(parents=True)
        (texts / f"c{c}" / "a.txt").write_text("x")
    assert "no images" in error(load, texts) and ".png" in error(load, texts)


def test_class_with_one_image_is_refused(tmp_path):
    root = split_folders(tmp_path / "d")
    for p in sorted((root / "val" / "owl").glob("*.png"))[1:]:
        p.unlink()
    assert "too few images for class owl" in error(load, root, "val")


# ----------------------------------------------------------------------------- messy folders


def messy_class(folder: Path) -> Dict[str, Optional[int]]:
    """Images of every kind in `folder`: name -> the grey value every pixel must decode to (None: any)."""
    save(folder / "a_upper.PNG", noise(1, (SIZE, SIZE)))
    save(folder / "b_mixed.JPEG", noise(2, (30, 20)))
    save(folder / "c_lossless.webp", noise(3, (18, 26)), lossless=True)
    save(folder / "d_grey.bmp", Image.new("L", (SIZE, SIZE), 77))
    save(folder / "e_palette.gif", noise(5, (SIZE, SIZE)).convert("P"))
    save(folder / "f_16bit.TIF", Image.fromarray(np.full((SIZE, SIZE), 65535, dtype=np.uint16)))
    save(folder / "g_clear.png", Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0)))
    save(folder / "h_cmyk.jpg", noise(8, (24, 18)).convert("CMYK"))
    save(folder / "nested" / "deeper" / "i_deep.Tiff", noise(9, (21, 17)))
    return {"d_grey.bmp": 77, "f_16bit.TIF": 255, "g_clear.png": 255}  # 16-bit full scale and clear pixels: white


@pytest.mark.parametrize("channels", [1, 3])
def test_any_format_mode_and_size_decodes_to_the_run_shape(tmp_path, channels):
    root = split_folders(tmp_path / "d")
    exact = messy_class(root / "train" / "messy")
    mode = "L" if channels == 1 else "RGB"
    d = load(root, in_channels=channels)
    assert d.images.shape == (3 * 3 + 9, channels, SIZE, SIZE)
    assert d.class_names == ["ant", "cat", "dog", "messy"]
    files, _ = images.walk(root / "train" / "messy")
    paths = [root / "train" / "messy" / f for f in files]
    got = d.images[d.labels == 3]
    assert torch.equal(got, decoded(paths, mode))
    for i, p in enumerate(paths):
        if p.name in exact:
            assert (got[i] == exact[p.name]).all(), p.name


def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    """A phone stores a portrait photo's pixels sideways with EXIF orientation 6 (turn 90 degrees
    clockwise to view): it decodes as the upright image a viewer shows, for training and predict alike."""
    sideways = noise(7, size=(SIZE, SIZE))
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = save(tmp_path / "tagged.png", sideways, exif=exif)
    upright = save(tmp_path / "upright.png", sideways.transpose(Image.Transpose.ROTATE_270))
    plain = save(tmp_path / "plain.png", sideways)
    assert torch.equal(decoded([tagged]), decoded([upright]))
    assert not torch.equal(decoded([tagged]), decoded([plain]))


def test_crop_keeps_the_centre_and_stretch_squashes(tmp_path):
    root = split_folders(tmp_path / "d")
    stripes = np.zeros((SIZE, 3 * SIZE, 3), dtype=np.uint8)  # red | green | blue, each SIZE wide
    for k in range(3):
        stripes[:, k * SIZE:(k + 1) * SIZE, k] = 255
    wide = root / "train" / "wide"
    for k in range(2):
        save(wide / f"w{k}.png", Image.fromarray(stripes))
    crop, stretch = (load(root, resize=policy, cache=False) for policy in ("crop", "stretch"))
    c = crop.class_names.index("wide")
    cropped, squashed = crop.images[crop.labels == c], stretch.images[stretch.labels == c]
    green = torch.tensor([0, 255, 0], dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(cropped, green.expand_as(cropped)), "crop keeps the centre square (the green stripe)"
    assert not torch.equal(cropped, squashed)
    assert (squashed[:, 0, :, 0] > 200).all() and (squashed[:, 2, :, -1] > 200).all()  # red left, blue right


def test_unicode_and_space_class_names_match_a_composed_split_file(tmp_path):
    root = tmp_path / "d"
    decomposed = unicodedata.normalize("NFD", "café crème")  # how macOS writes names
    names = [decomposed, "日本 語", "Ölfarbe", "plain one", "naïve", "zebra"]
    for i, name in enumerate(names):
        add_class(root / name, seed=i)
    composed = sorted(unicodedata.normalize("NFC", n) for n in names)
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": composed[:2], "val": composed[2:4], "test": composed[4:]},
                                     ensure_ascii=False), encoding="utf-8")
    out = load_all(root, split_file=str(split_file))
    assert [c for s in SPLITS for c in out[s].class_names] == composed
    assert "café crème" in [c for d in out.values() for c in d.class_names]


def test_hidden_and_non_image_files_are_ignored_and_listed(tmp_path):
    root = split_folders(tmp_path / "d")
    cat = root / "train" / "cat"
    (cat / "notes.txt").write_text("not an image")
    (cat / "Thumbs.db").write_bytes(b"\0\1")
    (cat / ".DS_Store").write_bytes(b"\0")
    save(cat / ".thumbnails" / "t.png", noise(0))  # a hidden folder: listed once, its image not read
    save(cat / "sub" / ".hidden.png", noise(1))
    (root / "train" / "README").write_text("x")
    (root / "readme.md").write_text("x")
    (root / "extra").mkdir()  # a top-level folder that is not a split folder
    (root / ".DS_Store").write_bytes(b"\0")  # hidden at the top: skipped without listing
    (root / ".git").mkdir()
    d = load(root)
    assert d.images.shape[0] == 3 * 3
    assert sorted(d.ignored) == sorted(["extra/", "readme.md", "train/README", "train/cat/.DS_Store", "train/cat/.thumbnails/",
                                        "train/cat/Thumbs.db", "train/cat/notes.txt", "train/cat/sub/.hidden.png"])
    assert load(root, "val").ignored == []
    assert sorted(load(root).ignored) == sorted(d.ignored)  # the cached split keeps the listing


def test_layout_b_lists_top_level_strays_with_train_but_not_its_split_file(tmp_path):
    root = class_folders(tmp_path / "d", n_classes=6)
    split_file = root / "split.json"
    names = [f"class {c:02d}" for c in range(6)]
    split_file.write_text(json.dumps({"train": names[:2], "val": names[2:4], "test": names[4:]}))
    (root / "notes.txt").write_text("x")
    (root / "class 03" / "x.txt").write_text("x")
    out = load_all(root, split_file=str(split_file))
    assert out["train"].ignored == ["notes.txt"]
    assert out["val"].ignored == ["class 03/x.txt"] and out["test"].ignored == []


def test_corrupt_image_names_the_file_or_is_skipped(tmp_path):
    root = split_folders(tmp_path / "d")
    bad = root / "train" / "cat" / "img1.png"
    bad.write_bytes(b"\x89PNG but not really")
    text = error(load, root)
    assert str(bad) in text and "--skip-bad-images" in text
    d = load_split(folder(), "train", root, progress=False, skip_bad_images=True)
    assert len(d.skipped) == 1 and str(bad) in d.skipped[0]
    assert d.class_counts.tolist() == [3, 2, 3]
    assert not list((root / ".cache").glob("folder-train-*.pt")), "a split with holes is never cached"
    # the sources stay aligned with the images: the skipped file is not among them
    assert d.sources == [f"train/{name}/img{k}.png" for name in ("ant", "cat", "dog") for k in range(3)
                         if (name, k) != ("cat", 1)]
    for i, source in enumerate(d.sources):
        assert torch.equal(d.images[i], decoded([root / source])[0])


def test_an_empty_class_folder_is_named_before_anything_is_decoded(tmp_path):
    root = class_folders(tmp_path / "d", n_classes=10)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("not an image")
    message = error(load_all, root, split_seed=0)
    assert message.startswith(f"class folder {root / 'empty'} holds no images (files ending in .png, ")
    assert message.endswith("add images to it or remove it")


def test_a_file_that_is_no_image_is_named_without_pils_object_address(tmp_path):
    root = class_folders(tmp_path / "d", n_classes=10)
    (root / "class 03" / "notes.png").write_text("not an image")
    message = error(load_all, root, split_seed=0)
    assert message.startswith(f"cannot decode image {root / 'class 03' / 'notes.png'}: PIL cannot identify it")
    assert "BytesIO" not in message and " at 0x" not in message


def test_symlink_loop_is_refused(tmp_path):
    root = split_folders(tmp_path / "d")
    os.symlink(root / "train" / "cat", root / "train" / "cat" / "again")
    assert "symlink loop" in error(load, root)


# ----------------------------------------------------------------------------- the cache


def test_second_load_is_served_from_the_cache(tmp_path, monkeypatch):
    root = class_folders(tmp_path / "d")
    first = load_all(root)
    assert sorted(p.name.split("-")[1] for p in (root / ".cache").glob("folder-*.pt")) == sorted(SPLITS)
    calls = count_decodes(monkeypatch)
    again = load_all(root)
    assert calls == []
    for s in SPLITS:
        assert torch.equal(first[s].images, again[s].images) and torch.equal(first[s].labels, again[s].labels)
        assert first[s].class_names == again[s].class_names
        assert first[s].sources == again[s].sources and len(again[s].sources) == len(again[s].labels)
        assert all((root / source).is_file() for source in again[s].sources)


def test_changed_or_added_image_misses_the_cache(tmp_path, monkeypatch):
    root = split_folders(tmp_path / "d")
    load_all(root)
    calls = count_decodes(monkeypatch)
    changed = root / "train" / "cat" / "img0.png"
    save(changed, noise(999))
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime even on a coarse clock
    d = load(root)
    assert calls, "the changed image was decoded again"
    c = d.class_names.index("cat")
    assert torch.equal(d.images[d.labels == c][0], decoded([changed])[0])
    calls.clear()
    added = save(root / "train" / "cat" / "img9.png", noise(1000))
    d = load(root)
    assert str(added) in calls and d.class_counts[c] == 4


def test_split_settings_and_image_size_change_the_cache_key(tmp_path, monkeypatch):
    root = class_folders(tmp_path / "d", n_classes=12)
    base = folder()
    source = base.open(root)
    split_file = base.split_files(source.root, None)["train"]

    def key(dataset) -> str:
        return split_cache.cache_key(dataset, dataset.open(root), "train", split_file)

    keys = {key(base), key(folder(split_seed=1)), key(folder(split_ratios="0.5,0.25,0.25")),
            key(folder(image_size=SIZE + 4)), key(folder(resize="stretch")), key(folder(in_channels=1))}
    assert len(keys) == 6
    assert key(base) == key(folder())
    load(root)
    calls = count_decodes(monkeypatch)
    load(root, split_seed=1)
    assert calls, "another seed decodes again"


# ----------------------------------------------------------------------------- end to end


def run_cli(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_train_and_eval_through_the_cli(tmp_path):
    root = class_folders(tmp_path / "d", n_classes=10)
    run = tmp_path / "RUN"
    run_cli("train", "--dataset", "folder", "--data-root", root, "--image-size", SIZE, "--hidden", 8,
            "--iterations", 3, "--val-every", 3, "--val-episodes", 2, "--ways", 2, "--shots", 1, "--queries", 1,
            "--out", run, "--device", "cpu", "--quiet")
    names = [f"class {c:02d}" for c in range(10)]
    splits = json.loads((run / "splits.json").read_text())
    assert splits == class_split.seeded_split(names, (0.64, 0.16, 0.2), 0)
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["val"]) & set(splits["test"])
    pre = json.loads((run / "preprocessing.json").read_text())
    assert pre["resize"] == "crop" and pre["channels"] == 3 and pre["image_size"] == SIZE
    # the train split's statistics, independently: every train image decoded, in float64
    paths = [p for name in splits["train"] for p in sorted((root / name).glob("*.png"))]
    pixels = decoded(paths).numpy().astype(np.float64) / 255.0
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))
    # 12 significant digits are written; float64 sums of ~10^4 values in [0, 1] agree to ~1e-12
    assert len(pre["mean"]) == 3 and np.allclose(pre["mean"], mean, rtol=0, atol=1e-9)
    assert len(pre["std"]) == 3 and np.allclose(pre["std"], std, rtol=0, atol=1e-9)
    out = run_cli("eval", run, "--episodes", 4, "--device", "cpu")
    assert "accuracy" in out and list(run.glob("eval-test-*.json"))


def test_split_seed_is_refused_for_omniglot(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--dataset", "omniglot", "--split-seed", "3", "--out",
                                      str(tmp_path / "RUN")])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "--split-seed" in err
    assert not (tmp_path / "RUN").exists()


def test_a_relative_data_root_is_stored_absolute_and_a_moved_one_is_found_again(tmp_path, monkeypatch):
    """A run trained with `--data-root d` from its folder evaluates from any other folder; naming its
    data again (in any form) is not a cross-domain evaluation; after the data moves, `--data-root`
    says where it is now, for eval and for resume; another existing folder stays refused on resume."""
    class_folders(tmp_path / "d", n_classes=10)
    monkeypatch.chdir(tmp_path)
    run_cli("train", "--dataset", "folder", "--data-root", "d", "--image-size", SIZE, "--hidden", 8,
            "--iterations", 2, "--val-every", 2, "--val-episodes", 2, "--ways", 2, "--shots", 1, "--queries", 1,
            "--out", "RUN", "--device", "cpu", "--quiet")
    run = tmp_path / "RUN"
    assert json.loads((run / "config.json").read_text())["data"]["data_root"] == str(tmp_path / "d")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    run_cli("eval", run, "--episodes", 2, "--device", "cpu")
    run_cli("eval", run, "--episodes", 3, "--device", "cpu", "--data-root", "../d")
    assert len(list(run.glob("eval-test-*.json"))) == 2 and not list(run.glob("eval-folder-*.json"))

    (tmp_path / "d").rename(tmp_path / "moved")
    result = CliRunner().invoke(cli, ["eval", str(run), "--episodes", "2", "--device", "cpu"])
    assert result.exit_code == 2 and f"data root {tmp_path / 'd'} does not exist" in result.stderr
    run_cli("eval", run, "--episodes", 4, "--device", "cpu", "--data-root", "../moved")
    assert len(list(run.glob("eval-test-*.json"))) == 3 and not list(run.glob("eval-folder-*.json"))
    run_cli("train", "--resume", run, "--iterations", 3, "--data-root", "../moved", "--quiet")
    assert json.loads((run / "config.json").read_text())["data"]["data_root"] == str(tmp_path / "moved")
    class_folders(tmp_path / "other", n_classes=10)
    result = CliRunner().invoke(cli, ["train", "--resume", str(run), "--iterations", "4", "--data-root", "../other"])
    assert result.exit_code == 2 and "cannot change --data-root when resuming" in result.stderr
