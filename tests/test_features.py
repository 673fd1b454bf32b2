"""`--dataset features` (few-shot on feature vectors) and `--backbone mlp`.

* every file layout (.npz, .npy + labels.npy / labels.txt, .csv) gives the same float32 tensors and
  classes as a reference built from the generated arrays, with integer and text labels;
* class-level splits: --split-file (JSON and text) as listed, the seeded split equal to
  `class_split.seeded_split`, reproducible and disjoint; the cache serves exactly what a build gives;
* bad data is a one-line DataError naming what is wrong (and where);
* mlp: shapes, feature size, --mlp-hidden validation, float64 meta-gradient parity of the loop and
  batched engines of every algorithm that has both;
* the pipeline end to end on the command line: ProtoNet and MAML (loop and batched) train and
  evaluate; ProtoNet is clearly above chance; preprocessing.json holds the train split's statistics.
"""
from __future__ import annotations

import copy
import csv
import json
import os
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from l2l_app.backbones import Classifier, assert_no_aliased_submodules, build_backbone
from l2l_app.backbones.mlp import MAX_LAYERS, MAX_WIDTH, MLP, parse_hidden_sizes
from l2l_app.cli import cli
from l2l_app.config import DataConfig, ExperimentConfig, validate, with_overrides
from l2l_app.data import list_classes, load_split, load_splits
from l2l_app.data.class_split import seeded_split, split_ratios
from l2l_app.data.features import FEATURES
from l2l_app.data.types import VECTORS, EpisodeBatch
from l2l_app.errors import ConfigError, DataError
from l2l_app.registry import ALGORITHMS
from enrol import BATCHED_ALGOS, make_learner, small_settings

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES, ROWS, DIM = 12, 10, 8
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- synthetic data
def clusters(classes: int = CLASSES, rows: int = ROWS, dim: int = DIM, seed: int = 0, spread: float = 4.0):
    """(x float32 [classes*rows, dim], y int64 [classes*rows]): class c is its mean (N(0, spread^2)
    per feature) plus N(0, 1) noise; rows shuffled, so the file is not grouped by class."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, spread, (classes, dim))
    y = np.repeat(np.arange(classes), rows)
    x = (means[y] + rng.normal(0.0, 1.0, (len(y), dim))).astype(np.float32)
    order = rng.permutation(len(y))
    return x[order], y[order]


def names_of(y: np.ndarray, text: bool) -> np.ndarray:
    """Integer labels, or text labels 'class07' (a unicode array: saved without pickle)."""
    return np.array([f"class{v:02d}" for v in y]) if text else y


def write_npz(path: Path, x, labels, vectors: str = "features", label: str = "label") -> Path:
    np.savez(path, **{vectors: x, label: labels})
    return path


def write_npy(folder: Path, x, labels, labels_txt: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "features.npy", x)
    if labels_txt:
        (folder / "labels.txt").write_text("".join(f"{v}\n" for v in labels.tolist()))
    else:
        np.save(folder / "labels.npy", labels)
    return folder


def write_csv(path: Path, x, labels, label: str = "label", cells: Dict = None) -> Path:
    """Header f0..f{D-1} with the label column in the middle; floats written with repr, which
    float32 -> float64 -> text -> float64 -> float32 round-trips exactly.  `cells`: {(row, column): text}."""
    columns = [f"f{j}" for j in range(x.shape[1])]
    header = columns[:3] + [label] + columns[3:]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, (row, lab) in enumerate(zip(x.tolist(), labels.tolist())):
            values = {c: repr(v) for c, v in zip(columns, row)}
            values[label] = str(lab)
            values.update({c: t for (r, c), t in (cells or {}).items() if r == i})
            w.writerow([values[h] for h in header])
    return path


def reference(x: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> torch.Tensor:
    """The expected SplitData.images: for each class in the given order, its rows in file order."""
    names = np.array([str(v) for v in labels.tolist()])
    return torch.from_numpy(np.concatenate([x[names == c] for c in classes]))


def assert_matches(splits, x, labels) -> None:
    """Every split holds exactly its classes' rows, grouped, classes sorted, labels 0..n-1."""
    for s, data in splits.items():
        assert data.class_names == sorted(data.class_names), s
        assert data.images.dtype == torch.float32 and data.images.shape[1:] == (x.shape[1],)
        assert torch.equal(data.images, reference(x, labels, data.class_names)), s
        counts = [int((np.array([str(v) for v in labels.tolist()]) == c).sum()) for c in data.class_names]
        assert data.labels.tolist() == [c for c, n in enumerate(counts) for _ in range(n)], s


def configured(**data):
    return FEATURES.configured(DataConfig(dataset="features", **data))


# ----------------------------------------------------------------------------- layouts and labels
@pytest.mark.parametrize("text", [False, True], ids=["int labels", "text labels"])
def test_every_layout_loads_the_same_tensors(tmp_path, text):
    x, y = clusters()
    labels = names_of(y, text)
    roots = {
        "npz": write_npz(tmp_path / "d.npz", x, labels),
        "npz (x, y)": write_npz(tmp_path / "xy.npz", x, labels, vectors="X", label="y"),
        "npy folder": write_npy(tmp_path / "npy", x, labels),
        "npy file + labels.txt": write_npy(tmp_path / "txt", x, labels, labels_txt=True) / "features.npy",
        "csv": write_csv(tmp_path / "d.csv", x, labels),
    }
    loaded = {}
    for name, root in roots.items():
        dataset = configured(label_column="y") if name == "npz (x, y)" else FEATURES
        loaded[name] = load_splits(dataset, data_root=root, cache=False, progress=False)
    first = loaded["npz"]
    assert_matches(first, x, labels)
    all_classes = sorted(str(v) for v in set(labels.tolist()))
    assert sorted(c for d in first.values() for c in d.class_names) == all_classes
    for name, splits in loaded.items():
        for s in SPLITS:
            assert splits[s].class_names == first[s].class_names, (name, s)
            assert torch.equal(splits[s].images, first[s].images), (name, s)
            assert torch.equal(splits[s].labels, first[s].labels), (name, s)


def test_the_only_float_matrix_of_an_npz_holds_the_vectors(tmp_path):
    x, y = clusters()
    path = tmp_path / "d.npz"
    np.savez(path, embeddings=x, label=y, ids=np.arange(len(y)))  # ids: 1-D integers, not a candidate
    assert_matches(load_splits(FEATURES, data_root=path, cache=False, progress=False), x, y)


def test_whole_number_float_labels_are_integers(tmp_path):
    x, y = clusters()
    a = load_split(FEATURES, "train", write_npz(tmp_path / "f.npz", x, y.astype(np.float64)), cache=False)
    b = load_split(FEATURES, "train", write_npz(tmp_path / "i.npz", x, y), cache=False)
    assert a.class_names == b.class_names and torch.equal(a.images, b.images)


# ----------------------------------------------------------------------------- splits
def test_seeded_split_is_class_splits_and_reproducible(tmp_path):
    x, y = clusters()
    root = write_npz(tmp_path / "d.npz", x, y)
    classes = sorted(str(c) for c in range(CLASSES))
    for seed, ratios in ((0, "0.64,0.16,0.2"), (5, "0.5,0.25,0.25")):
        dataset = configured(split_seed=seed, split_ratios=ratios)
        expected = seeded_split(classes, split_ratios(ratios), seed)
        a = load_splits(dataset, data_root=root, cache=False, progress=False)
        b = load_splits(dataset, data_root=root, cache=False, progress=False)
        assert {s: a[s].class_names for s in SPLITS} == expected
        assert {s: b[s].class_names for s in SPLITS} == expected
        assert all(torch.equal(a[s].images, b[s].images) for s in SPLITS)
        assert list_classes(dataset, root) == expected  # what the trainer writes into splits.json
        names = [c for s in SPLITS for c in expected[s]]
        assert sorted(names) == classes  # disjoint and complete
        assert_matches(a, x, y)


@pytest.mark.parametrize("kind", ["json", "txt"])
def test_split_file_is_followed(tmp_path, kind):
    x, y = clusters()
    root = write_npz(tmp_path / "d.npz", x, y)
    listed = {"train": ["11", "0", "3", "7", "5"], "val": ["2", "9"], "test": ["10", "4", "1"]}  # 6 and 8 unused
    path = tmp_path / f"split.{kind}"
    if kind == "json":
        path.write_text(json.dumps(listed))
    else:
        path.write_text("".join(f"[{s}]\n" + "".join(f"{c}\n" for c in names) for s, names in listed.items()))
    splits = load_splits(configured(split_file=str(path)), data_root=root, cache=False, progress=False)
    assert {s: splits[s].class_names for s in SPLITS} == {s: sorted(v) for s, v in listed.items()}
    assert_matches(splits, x, y)


def test_split_file_naming_an_unknown_class_is_refused(tmp_path):
    x, y = clusters()
    root = write_npz(tmp_path / "d.npz", x, y)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["0", "1"], "val": ["2", "3"], "test": ["4", "12"]}))
    with pytest.raises(DataError) as err:
        load_splits(configured(split_file=str(path)), data_root=root, cache=False, progress=False)
    assert "'12'" in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_cache_serves_what_a_build_gives_and_misses_when_the_data_changes(tmp_path, layout):
    x, y = clusters()
    root = write_npz(tmp_path / "d.npz", x, y) if layout == "file" else write_npy(tmp_path / "npy", x, y)
    built = load_splits(FEATURES, data_root=root, cache=False, progress=False)
    first = load_splits(FEATURES, data_root=root, progress=False)  # builds and writes the cache
    again = load_splits(FEATURES, data_root=root, progress=False)  # served from it
    for s in SPLITS:
        assert torch.equal(first[s].images, built[s].images) and torch.equal(again[s].images, built[s].images)
        assert again[s].class_names == built[s].class_names
    # the same shape and size, new values and mtime: the cache key changes
    x2 = x + np.float32(1.0)
    data = root if layout == "file" else root / "features.npy"
    write_npz(data, x2, y) if layout == "file" else np.save(data, x2)
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = load_splits(FEATURES, data_root=root, progress=False)
    assert_matches(changed, x2, y)


# ----------------------------------------------------------------------------- bad data: one line each
def _bad_data(tmp_path: Path, case: str):
    """(data root, fragments the message must hold) of one kind of bad data."""
    x, y = clusters()
    if case == "missing npz label array":
        return write_npz(tmp_path / "d.npz", x, y, label="target"), ["'label'", "features", "target",
                                                                      "--label-column"]
    if case == "missing csv label column":
        return write_csv(tmp_path / "d.csv", x, y, label="class"), ["'label'", "f0", "class", "--label-column"]
    if case == "non-numeric csv cell":
        path = write_csv(tmp_path / "d.csv", x, y, cells={(4, "f5"): "abc"})
        return path, ["row 5", "line 6", "'f5'", "'abc'", "not a number"]
    if case == "nan in csv":
        return write_csv(tmp_path / "d.csv", x, y, cells={(2, "f1"): "nan"}), ["row 3", "'f1'", "nan", "finite"]
    if case == "nan in npz":
        x = x.copy()
        x[7, 2] = np.nan
        return write_npz(tmp_path / "d.npz", x, y), ["row 7", "feature 2", "nan", "finite"]
    if case == "beyond float32 in npz":
        x64 = x.astype(np.float64)
        x64[3, 0] = 1e300
        return write_npz(tmp_path / "d.npz", x64, y), ["row 3", "feature 0", "float32"]
    if case == "file missing":
        return tmp_path / "nowhere.npz", ["nowhere.npz", "does not exist", "--data-root"]
    if case == "unknown suffix":
        (tmp_path / "d.json").write_text("{}")
        return tmp_path / "d.json", [".json", ".npz, .npy or .csv"]
    if case == "no vectors array":
        np.savez(tmp_path / "d.npz", a=x, b=x, label=y)
        return tmp_path / "d.npz", ["features", "a, b, label", "np.savez"]
    if case == "labels count":
        return write_npz(tmp_path / "d.npz", x, y[:-1]), [f"{len(y)} rows", f"{len(y) - 1} labels"]
    if case == "pickled labels":
        np.savez(tmp_path / "d.npz", features=x, label=np.array([str(v) for v in y], dtype=object))
        return tmp_path / "d.npz", ["cannot read", "pickle"]
    if case == "folder without vectors":
        (tmp_path / "empty").mkdir()
        write_csv(tmp_path / "empty" / "d.csv", x, y)
        return tmp_path / "empty", ["features.npy", "d.csv"]
    if case == "npy without labels":
        (tmp_path / "npy").mkdir()
        np.save(tmp_path / "npy" / "features.npy", x)
        return tmp_path / "npy", ["labels.npy", "labels.txt"]
    if case == "one row in a class":
        keep = np.concatenate([np.flatnonzero(y != 0), np.flatnonzero(y == 0)[:1]])
        return write_npz(tmp_path / "d.npz", x[keep], y[keep]), ["class 0", "at least 2"]
    raise AssertionError(case)


BAD_DATA = ["missing npz label array", "missing csv label column", "non-numeric csv cell", "nan in csv", "nan in npz",
            "beyond float32 in npz", "file missing", "unknown suffix", "no vectors array", "labels count",
            "pickled labels", "folder without vectors", "npy without labels", "one row in a class"]


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_line(tmp_path, case):
    root, fragments = _bad_data(tmp_path, case)
    with pytest.raises(DataError) as err:
        load_splits(FEATURES, data_root=root, cache=False, progress=False)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# ----------------------------------------------------------------------------- mlp
def test_features_is_a_vector_dataset():
    assert FEATURES.kind == VECTORS and FEATURES.in_channels == 0 and FEATURES.image_size == 0
    assert FEATURES.default_root is None and FEATURES.normalize


def test_mlp_shapes_and_feature_size():
    net = build_backbone("mlp", (DIM,), 64, mlp_hidden="32,16")
    assert net.feature_size == 16
    assert net(torch.randn(5, DIM)).shape == (5, 16)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(DIM, 32), (32, 16)]
    assert sum(p.numel() for p in net.parameters()) == DIM * 32 + 32 + 32 * 16 + 16
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert_no_aliased_submodules(Classifier(net, 5))
    images = build_backbone("mlp", (1, 4, 4), 64, mlp_hidden="7")  # it flattens images too
    assert images(torch.rand(3, 1, 4, 4)).shape == (3, 7) and images.in_features == 16
    assert build_backbone("mlp", (DIM,), 64).feature_size == 256  # the default 256,256


def test_mlp_hidden_parsing():
    assert parse_hidden_sizes(" 64, 32 ") == (64, 32)
    assert parse_hidden_sizes(",".join(["1"] * MAX_LAYERS)) == (1,) * MAX_LAYERS
    assert parse_hidden_sizes(str(MAX_WIDTH)) == (MAX_WIDTH,)


@pytest.mark.parametrize("text", ["0,5", "", "a,3", "2.5", "-3", "64,,32", ",".join(["4"] * (MAX_LAYERS + 1)),
                                  str(MAX_WIDTH + 1)])
def test_bad_mlp_hidden_is_refused_naming_the_flag(text):
    with pytest.raises(ConfigError) as err:
        validate(with_overrides(ExperimentConfig(), {"backbone": "mlp", "mlp_hidden": text}))
    assert "--mlp-hidden" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        build_backbone("mlp", (DIM,), 64, mlp_hidden=text)


def vector_episodes(ways: int, shots: int, queries: int, tasks: int, dim: int, seed: int = 0) -> EpisodeBatch:
    """float64 N(0, 1) vectors [tasks, ways*shots, dim] with a shuffled class order per task."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, ways * shots, dim, generator=g, dtype=torch.float64)
    qx = torch.randn(tasks, ways * queries, dim, generator=g, dtype=torch.float64)
    sy = torch.stack([torch.randperm(ways, generator=g).repeat_interleave(shots) for _ in range(tasks)])
    qy = torch.stack([torch.randperm(ways, generator=g).repeat_interleave(queries) for _ in range(tasks)])
    return EpisodeBatch(sx, sy, qx, qy, ways, shots, queries)


@pytest.mark.parametrize("algo", BATCHED_ALGOS)
def test_mlp_loop_and_batched_meta_gradients_agree_in_float64(algo):
    """Relative L2 difference < 1e-10, as for Conv4 in test_every_algorithm: float64 rounding is
    1.1e-16 and the engines only sum in different orders.  An MLP has no batch norm, so every
    parameter is compared (none has an exactly-zero gradient made of rounding noise)."""
    torch.manual_seed(0)
    backbone = MLP(DIM, (16, 12))
    net = (Classifier(backbone, 3) if ALGORITHMS[algo].head else backbone).double()
    settings = small_settings(algo)
    loop = make_learner(algo, "loop", copy.deepcopy(net), settings)
    batched = make_learner(algo, "batched", copy.deepcopy(net), settings)
    batch = vector_episodes(3, 2, 2, 3, DIM)
    m_loop, m_batched = loop.meta_step(batch), batched.meta_step(batch)
    g_loop, g_batched = dict(loop.named_meta_parameters()), dict(batched.named_meta_parameters())
    assert g_loop.keys() == g_batched.keys()
    a = torch.cat([g_batched[n].grad.reshape(-1) for n in g_loop])
    b = torch.cat([g_loop[n].grad.reshape(-1) for n in g_loop])
    assert b.norm() > 0
    assert ((a - b).norm() / b.norm()).item() < 1e-10
    assert m_batched["loss"] == pytest.approx(m_loop["loss"], rel=1e-10)


# ----------------------------------------------------------------------------- the command line
def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


TRAIN = ["--dataset", "features", "--backbone", "mlp", "--mlp-hidden", "32,16", "--ways", "5", "--shots", "1",
         "--queries", "3", "--val-every", "10", "--val-episodes", "20", "--quiet"]


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def clustered_root(tmp_path) -> Path:
    """30 classes (19 train, 5 val, 6 test with the default ratios) x 10 rows of 8 features."""
    x, y = clusters(classes=30, seed=1)
    return write_npz(tmp_path / "clusters.npz", x, y)


def _eval(run_dir: Path, episodes: int) -> dict:
    result = run("eval", run_dir, "--episodes", episodes, "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads((run_dir / f"eval-test-best-5w1s3q-{episodes}ep-seed1234.json").read_text())


def test_protonet_learns_and_preprocessing_holds_the_train_statistics(tmp_path, clustered_root):
    """5-way 1-shot on unseen classes: the lower end of twice the 95% CI (about 4 standard errors)
    lies above chance (20%).  preprocessing.json's per-feature mean and population std equal the
    train split's, computed here in float64 (they are written with 12 significant digits)."""
    out = tmp_path / "run"
    result = run("train", "--data-root", clustered_root, "--out", out, "--iterations", "20", *TRAIN)
    assert result.exit_code == 0, result.output
    evaluation = _eval(out, 200)
    assert evaluation["mean"] - 2 * evaluation["ci95"] > 20.0, evaluation
    saved = json.loads((out / "preprocessing.json").read_text())
    train = load_split(FEATURES, "train", clustered_root, progress=False).images.double()
    assert saved["kind"] == VECTORS and saved["channels"] == DIM
    assert saved["mean"] == pytest.approx(train.mean(0).tolist(), rel=1e-9, abs=1e-12)
    assert saved["std"] == pytest.approx(train.std(0, correction=0).tolist(), rel=1e-9)
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["train"]) == load_split(FEATURES, "train", clustered_root, progress=False).class_names


@pytest.mark.parametrize("engine", ["loop", "batched"])
def test_maml_trains_and_evaluates(tmp_path, clustered_root, engine):
    out = tmp_path / "run"
    result = run("train", "--algo", "maml", "--engine", engine, "--meta-batch", "2", "--data-root", clustered_root,
                 "--out", out, "--iterations", "4", *TRAIN)
    assert result.exit_code == 0, result.output
    assert f"[{engine} engine" in result.output
    evaluation = _eval(out, 20)
    assert 0.0 <= evaluation["mean"] <= 100.0 and evaluation["protocol"]["dataset"] == "features"


def test_conv4_on_vectors_is_one_line_and_writes_nothing(tmp_path, clustered_root):
    out = tmp_path / "run"
    result = run("train", "--data-root", clustered_root, "--out", out, "--dataset", "features", "--backbone", "conv4",
                 "--quiet")
    assert_one_line_error(result, "--backbone conv4", "vectors of 8 numbers", "--backbone mlp")
    assert not out.exists()


def test_cli_refusals_are_one_line(tmp_path, clustered_root):
    assert_one_line_error(run("train", "--data-root", clustered_root, "--out", tmp_path / "a", *TRAIN[:4],
                              "--mlp-hidden", "0,5"), "--mlp-hidden")
    assert_one_line_error(run("train", "--data-root", clustered_root, "--out", tmp_path / "b", "--dataset",
                              "features", "--mlp-hidden", "32"), "--mlp-hidden", "mlp")
    bad = write_csv(tmp_path / "bad.csv", *clusters(), cells={(0, "f0"): "x"})
    assert_one_line_error(run("train", "--data-root", bad, "--out", tmp_path / "c", *TRAIN), "'f0'", "row 1")
    assert not any((tmp_path / n).exists() for n in "abc")
