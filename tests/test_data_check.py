"""`l2l-app data check`: the report's numbers, duplicates across and within splits, too-small classes,
shared classes, unreadable images, exit codes 0/1/2, --json, and refusals that write nothing.

The expected numbers come from how the data was built (the synthetic Omniglot of conftest.py:
4 rotations per character, SYNTH_DRAWINGS drawings each, the files the test removed or copied),
never from an earlier run of the check.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from l2l_app.cli import cli
from l2l_app.data import SplitData, check_disjoint
from l2l_app.data.loading import shared_classes as shared_class_names
from l2l_app.datacheck import MAX_EXAMPLES, DataCheckReport, SplitReport, build_report, check_data, image_digests
from l2l_app.errors import ConfigError, DataError

from conftest import SYNTH_DRAWINGS, SYNTH_SPLITS, make_tiny_split, with_own_split_files

ROTATIONS = 4
#: a synthetic drawing's file name: alphabet index * 100 + character, then the drawing (see conftest)
ALPHA, GAMMA = 0, 2


def drawing(root: Path, archive: str, alphabet: str, char: int, index: int, k: int) -> Path:
    return root / archive / alphabet / f"character{char:02d}" / f"{index * 100 + char:04d}_{k:02d}.png"


def alpha(root: Path, char: int, k: int) -> Path:
    return drawing(root, "images_background", "Alpha", char, ALPHA, k)


def gamma(root: Path, char: int, k: int) -> Path:
    return drawing(root, "images_evaluation", "Gamma", char, GAMMA, k)


@pytest.fixture
def root(synthetic_omniglot) -> Path:
    """A private synthetic Omniglot folder root with its own split files
    (train 16 classes, val 8, test 12; SYNTH_DRAWINGS images each)."""
    return with_own_split_files(synthetic_omniglot, synthetic_omniglot.folder_root)


def run(*args):
    return CliRunner().invoke(cli, ["data", "check", *map(str, args)])


def check(root: Path, **settings) -> DataCheckReport:
    return check_data({"data_root": str(root), **settings}, progress=False)


def by_split(report: DataCheckReport) -> Dict[str, SplitReport]:
    return {s.split: s for s in report.splits}


def assert_refused(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err


# ----------------------------------------------------------------------------- numbers


def test_json_numbers_equal_the_built_data(root):
    result = run("--data-root", root, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert out["ok"] is True and out["failures"] == [] and out["dataset"] == "omniglot"
    assert out["train_shape"] == [5, 1, 15] and out["eval_shape"] == [5, 1, 15]
    splits = {s["split"]: s for s in out["splits"]}
    assert list(splits) == ["train", "val", "test"]
    for split, chars in SYNTH_SPLITS.items():
        s = splits[split]
        assert s["error"] is None
        assert s["num_classes"] == ROTATIONS * len(chars)
        assert s["total_images"] == ROTATIONS * len(chars) * SYNTH_DRAWINGS
        assert s["per_class_min"] == s["per_class_median"] == s["per_class_max"] == SYNTH_DRAWINGS
        for listing in ("too_small", "skipped", "ignored", "duplicates"):
            assert s[listing] == {"count": 0, "examples": []}
    assert [tuple(o["splits"]) for o in out["overlaps"]] == [("train", "val"), ("train", "test"), ("val", "test")]
    assert all(o["shared_classes"]["count"] == o["shared_images"]["count"] == 0 for o in out["overlaps"])
    # the same numbers as the library's report (now read from the cache the first call wrote)
    assert out == json.loads(json.dumps(check(root).to_dict()))
    assert any((root / ".cache").glob("omniglot-train-*.pt"))


def test_uneven_classes_numbers_and_too_small_class(root):
    for k in range(1, 4):  # Alpha/character02: 17 drawings
        alpha(root, 2, k).unlink()
    for k in range(1, 6):  # Alpha/character03: 15 drawings, one short of 1 shot + 15 queries
        alpha(root, 3, k).unlink()
    per_char = {"Alpha/character01": 20, "Alpha/character02": 17, "Alpha/character03": 15,
                "Beta_(Two)/character01": 20}
    counts = np.repeat(list(per_char.values()), ROTATIONS)
    report = check(root)
    train = by_split(report)["train"]
    assert (train.num_classes, train.total_images) == (counts.size, counts.sum())
    assert (train.per_class_min, train.per_class_median, train.per_class_max) == (15, np.median(counts), 20)
    small = [f"Alpha/character03/rot{r:03d}" for r in (0, 90, 180, 270)]
    assert train.too_small.count == 4
    assert train.too_small.examples == [{"class": name, "images": 15} for name in small]
    assert not report.ok and [(f.check, f.split) for f in report.failures] == [("episode shape", "train")]
    assert "Alpha/character03/rot000" in report.failures[0].message
    assert "train: 4 class(es) under shots + queries = 16 images" in report.format()

    failed = run("--data-root", root, "--quiet")
    assert failed.exit_code == 1, failed.output
    assert "FAIL" in failed.stdout and "Alpha/character03/rot000 (15 images)" in failed.stdout
    err = failed.stderr.strip()
    assert err.startswith("error: training would fail: [episode shape, train]") and "\n" not in err
    fits = run("--data-root", root, "--quiet", "--queries", 14)  # 1 + 14 = 15 images suffice
    assert fits.exit_code == 0, fits.output
    assert "OK: training with this shape would work" in fits.stdout


def test_training_shape_is_checked_on_train_and_evaluation_shape_on_val(root):
    # val has 8 classes: 10-way validation episodes cannot be drawn, 10-way training ones can
    report = check(root, ways=10, train_ways=5)
    assert [(f.check, f.split) for f in report.failures] == [("episode shape", "val")]
    assert "8 classes" in report.failures[0].message and "--ways 10" in report.failures[0].message
    # training needs 12 images per class, evaluation 4: a failure names the --train-* flags
    report = check(root, shots=2, queries=2, train_shots=2, train_queries=19)
    assert by_split(report)["train"].needed == 21 and by_split(report)["val"].needed == 4
    assert [(f.check, f.split) for f in report.failures] == [("episode shape", "train")]
    assert "--train-queries 19" in report.failures[0].message
    assert check(root, ways=8, queries=10, train_ways=16).ok  # every split has 8+ classes of 20 images


def test_too_small_test_class_is_only_a_warning(root):
    for k in range(1, 11):
        gamma(root, 1, k).unlink()
    result = run("--data-root", root, "--quiet", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    test = next(s for s in out["splits"] if s["split"] == "test")
    assert test["too_small"]["count"] == 4 and test["per_class_min"] == SYNTH_DRAWINGS - 10
    shape = [w for w in out["warnings"] if w["check"] == "episode shape"]
    assert len(shape) == 1 and shape[0]["split"] == "test" and "l2l-app eval --split test" in shape[0]["message"]


# ----------------------------------------------------------------------------- duplicates and overlaps


def _bytes_of(data: SplitData) -> List[bytes]:
    return [x.numpy().tobytes() for x in data.images]


def test_duplicate_image_in_two_splits_is_found(root):
    from l2l_app.data import load_splits

    # a test drawing copied into a train character: its 4 rotations are in both splits
    shutil.copy(gamma(root, 1, 1), alpha(root, 1, 1).parent / gamma(root, 1, 1).name)
    report = check(root)
    assert report.ok  # a warning, not a failure
    overlap = {o.splits: o for o in report.overlaps}
    shared = overlap[("train", "test")].shared_images
    loaded = load_splits("omniglot", data_root=root, progress=False)
    independent = set(_bytes_of(loaded["train"])) & set(_bytes_of(loaded["test"]))
    assert shared.count == len(independent) == ROTATIONS
    # named by file: the copy in Alpha/character01 (rotation 0) and the original, Gamma's first drawing
    copy, original = (alpha(root, 1, 1).parent / gamma(root, 1, 1).name), gamma(root, 1, 1)
    assert shared.examples[0] == [f"train:{copy.relative_to(root).as_posix()}",
                                  f"test:{original.relative_to(root).as_posix()}"]
    assert f"test:{original.relative_to(root).as_posix()} rot090" in sum(shared.examples, [])
    assert overlap[("train", "val")].shared_images.count == overlap[("val", "test")].shared_images.count == 0
    assert overlap[("train", "test")].shared_classes.count == 0
    assert any(w.check == "duplicates" and w.split == "train/test" for w in report.warnings)

    result = run("--data-root", root, "--quiet")
    assert result.exit_code == 0, result.output
    assert "train / test" in result.stdout and f"test:{original.relative_to(root).as_posix()}" in result.stdout


def test_duplicate_within_a_split(root):
    copy = alpha(root, 2, 4).parent / "zz_copy.png"
    shutil.copy(alpha(root, 2, 4), copy)
    train = by_split(check(root))["train"]
    assert train.duplicates.count == ROTATIONS  # one repeated drawing in each rotation class
    assert train.duplicates.examples[0] == [f"train:{alpha(root, 2, 4).relative_to(root).as_posix()}",
                                            f"train:{copy.relative_to(root).as_posix()}"]


def test_classes_shared_by_train_and_val_fail(root):
    with open(root / "train.txt", "a") as f:
        f.write("Beta_(Two)/character02/rot090\n")  # a val character, another rotation
    report = check(root)
    overlap = {o.splits: o for o in report.overlaps}[("train", "val")]
    assert overlap.shared_classes.count == 1 and overlap.shared_classes.examples == ["Beta_(Two)/character02"]
    assert overlap.shared_images.count == SYNTH_DRAWINGS  # the rot090 images themselves
    assert [(f.check, f.split) for f in report.failures] == [("disjoint classes", "train/val")]
    assert "share 1 class(es): Beta_(Two)/character02" in report.failures[0].message
    assert run("--data-root", root, "--quiet").exit_code == 1


def test_classes_shared_with_test_are_a_warning(root):
    with open(root / "train.txt", "a") as f:
        f.write("Gamma/character01/rot090\n")
    report = check(root)
    assert report.ok
    found = [w for w in report.warnings if w.check == "disjoint classes"]
    assert len(found) == 1 and found[0].split == "train/test" and "Gamma/character01" in found[0].message


# ----------------------------------------------------------------------------- unreadable data


def test_corrupt_image_is_listed_and_fails_unless_training_would_skip_it(root):
    """`train` stops at an unreadable image unless --skip-bad-images, so the check fails on it
    unless given that flag too (then it is a warning); either way the rest of the split is counted."""
    bad = alpha(root, 2, 5)
    bad.write_bytes(b"not a png")
    for skip in (False, True):
        report = check(root, skip_bad_images=skip)
        train = by_split(report)["train"]
        assert train.skipped.count == 1 and str(bad) in train.skipped.examples[0]
        assert train.per_class_min == SYNTH_DRAWINGS - 1
        assert train.total_images == ROTATIONS * len(SYNTH_SPLITS["train"]) * SYNTH_DRAWINGS - ROTATIONS
        assert by_split(report)["val"].skipped.count == 0
        found = report.warnings if skip else report.failures
        assert report.ok == skip and [f.check for f in found if f.split == "train"] == ["images"]
        assert ("--skip-bad-images" in found[-1].message) != skip
    result = run("--data-root", root, "--quiet")
    assert result.exit_code == 1 and "[images, train]" in result.stderr
    assert run("--data-root", root, "--quiet", "--skip-bad-images").exit_code == 0


def test_unreadable_val_split_fails_and_the_others_are_still_reported(root):
    (root / "val.txt").unlink()  # the packaged Vinyals val split names characters this data lacks
    result = run("--data-root", root, "--quiet", "--json")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: training would fail: [read, val]")
    out = json.loads(result.stdout)
    splits = {s["split"]: s for s in out["splits"]}
    assert "not in the data" in splits["val"]["error"]
    assert splits["train"]["num_classes"] == ROTATIONS * len(SYNTH_SPLITS["train"])
    assert splits["test"]["num_classes"] == ROTATIONS * len(SYNTH_SPLITS["test"])
    assert [tuple(o["splits"]) for o in out["overlaps"]] == [("train", "test")]


# ----------------------------------------------------------------------------- bad input: exit 2, nothing written


@pytest.mark.parametrize("args,fragments", [
    (["--dataset", "omniglott"], ["omniglott", "did you mean 'omniglot'"]),
    (["--split-seed", 3], ["--split-seed", "--dataset omniglot"]),
    (["--ways", 1], ["--ways"]),
    (["--channels", 2], ["--channels 2"]),
])
def test_bad_settings_are_refused_before_reading(root, args, fragments):
    assert_refused(run("--data-root", root, *args), *fragments)
    assert not (root / ".cache").exists()


def test_missing_data_root_is_refused(tmp_path):
    missing = tmp_path / "nowhere"
    assert_refused(run("--data-root", missing), str(missing), "does not exist")
    assert not missing.exists()


def test_a_folder_without_the_dataset_is_refused(tmp_path):
    assert_refused(run("--data-root", tmp_path), "no Omniglot data")
    assert list(tmp_path.iterdir()) == []


def test_library_takes_only_data_and_episode_settings(root):
    with pytest.raises(ConfigError, match="--meta-lr"):
        check_data({"data_root": str(root), "meta_lr": 0.1}, progress=False)
    assert not (root / ".cache").exists()


def test_progress_goes_to_stderr_unless_quiet(synthetic_omniglot):
    loud = run("--data-root", with_own_split_files(synthetic_omniglot, synthetic_omniglot.folder_root))
    assert loud.exit_code == 0 and "decoding omniglot" in loud.stderr and "decoding" not in loud.stdout
    quiet = run("--data-root", with_own_split_files(synthetic_omniglot, synthetic_omniglot.zip_root), "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""


# ----------------------------------------------------------------------------- the report functions


def _split(name: str, classes: List[str], counts: List[int], seed: int, **kw) -> SplitData:
    tiny = make_tiny_split(counts=counts, size=4, seed=seed)
    return SplitData(tiny.images, tiny.labels, classes, "hand", name, **kw)


def test_build_report_on_hand_built_splits():
    skipped = [f"cannot decode image x{i}.png: broken" for i in range(MAX_EXAMPLES + 2)]
    train = _split("train", ["a/rot000", "b", "c"], [3, 16, 20], seed=0, skipped=skipped, ignored=["notes.txt"])
    val = _split("val", ["a/rot090", "d"], [16, 16], seed=1)
    val.images[5] = train.images[20]  # c[1] of train is also a/rot090[5] of val
    report = build_report({"train": train, "val": val, "test": DataError("no test split file")},
                          train=(2, 1, 15), evaluation=(3, 1, 15), dataset="hand")
    s = by_split(report)
    assert (s["train"].num_classes, s["train"].total_images) == (3, 39)
    assert (s["train"].per_class_min, s["train"].per_class_median, s["train"].per_class_max) == (3, 16, 20)
    assert s["train"].too_small.examples == [{"class": "a/rot000", "images": 3}]
    assert s["train"].skipped.count == MAX_EXAMPLES + 2 and s["train"].skipped.examples == skipped[:MAX_EXAMPLES]
    assert s["train"].ignored.count == 1 and s["test"].error == "no test split file"
    overlap = report.overlaps[0]
    assert overlap.splits == ("train", "val") and len(report.overlaps) == 1
    assert overlap.shared_classes.examples == ["a"]  # rotations of one class are one class
    assert overlap.shared_images.count == 1
    assert overlap.shared_images.examples == [["train:c[1]", "val:a/rot090[5]"]]
    checks = sorted((f.check, f.split) for f in report.failures)
    # train: 2 classes of 16+ images suffice for 2 ways, but every class needs shots + queries (as the
    # trainer's samplers do); val: 3 ways exceed its 2 classes; train and val share class a
    # and train has unreadable images (training stops at them without --skip-bad-images)
    assert checks == [("disjoint classes", "train/val"), ("episode shape", "train"), ("episode shape", "val"),
                      ("images", "train")]
    assert [(w.check, w.split) for w in report.warnings][:1] == [("read", "test")]
    assert "l2l-app eval --split test would stop: no test split file" in report.warnings[0].message


def test_feature_rows_are_hashed_as_float32():
    rows = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    train = SplitData(rows.clone(), torch.tensor([0, 0, 0, 1, 1, 1]), ["x", "y"], "f", "train")
    test_rows = rows.clone() + 100
    test_rows[4] = rows[1]
    test_rows[5] = rows[1]
    test = SplitData(test_rows, torch.tensor([0, 0, 0, 1, 1, 1]), ["u", "v"], "f", "test")
    report = build_report({"train": train, "test": test}, (2, 1, 1), (2, 1, 1))
    assert report.ok
    assert report.overlaps[0].shared_images.count == 1
    assert report.overlaps[0].shared_images.examples == [["train:x[1]", "test:v[1]"]]
    assert by_split(report)["test"].duplicates.count == 1


def test_image_digests_equal_exactly_when_bytes_are_equal():
    x = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x[3] = x[1]
    y = x.clone()
    y[4, 0, 5, 5] ^= 1  # one bit of one pixel
    dx, dy = image_digests(x), image_digests(y)
    assert dx[3] == dx[1] and len(set(dx)) == 4
    assert dx[:4] == dy[:4] and dx[4] != dy[4]


@pytest.mark.parametrize("a,b", [
    (["A/c1/rot000", "A/c2/rot000"], ["A/c1/rot180"]),
    (["A/c1/rot000"], ["A/c2/rot000", "B/c1/rot000"]),
    (["cat", "dog"], ["dog", "cow"]),
    (["cat/rot0"], ["cat"]),  # not a /rotDDD suffix: different classes
])
def test_shared_class_names_follow_check_disjoint(a, b):
    shared = shared_class_names(a, b)
    try:
        check_disjoint({"a": a, "b": b})
        disjoint = True
    except DataError as e:
        disjoint = False
        assert f"share {len(shared)} class(es): {', '.join(shared[:3])}" in str(e)
    assert disjoint == (shared == [])


def test_duplicates_in_a_folder_dataset_are_named_by_file(tmp_path):
    root = tmp_path / "photos"
    for c in range(10):  # the default 64/16/20% split gives every split at least 2 classes
        for k in range(3):
            folder_image(root / f"class{c}" / f"img{k}.png", seed=10 * c + k)
    shutil.copy(root / "class1" / "img0.png", root / "class1" / "img9.png")
    result = CliRunner().invoke(cli, ["data", "check", "--dataset", "folder", "--data-root", str(root),
                                      "--split-seed", "0", "--ways", "2", "--shots", "1", "--queries", "1",
                                      "--json"])
    report = json.loads(result.stdout)
    found = [w for w in report["warnings"] if w["check"] == "duplicates"]
    assert len(found) == 1 and "class1/img0.png" in found[0]["message"] and "class1/img9.png" in found[0]["message"]


def folder_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
