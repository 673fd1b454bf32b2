"""`l2l-app predict` / `predict_folder`: new images classified exactly as evaluation classifies them.

The key test lays evaluation episodes out as image folders (support: one folder per class;
queries: files) and checks that predict gives the classes `learner.predict` gives on the tensor
episode, and the per-episode accuracy `l2l-app eval` reports.  The PNG files round-trip the stored
pixels exactly (checked), so the model sees bit-identical inputs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from l2l_app.cli import cli
from l2l_app.config import compose
from l2l_app.data import Preprocessing
from l2l_app.data.types import VECTORS
from l2l_app.errors import DataError
from l2l_app.experiment import Experiment
from l2l_app.predict import CSV_COLUMNS, predict_folder, query_files, support_classes
from l2l_app.trainer import Trainer
from l2l_app.evaluation import evaluate_run

pytestmark = pytest.mark.usefixtures("one_thread")

#: |sum of a float64 softmax row - 1|: a few units of float64 rounding per class (ways <= 5 here)
SOFTMAX_SUM_TOLERANCE = 1e-12
#: eval's accuracy is a float32 mean of 0/1 values (relative rounding <= 2**-24), times 100
EVAL_ACCURACY_TOLERANCE = 100 * 2.0 ** -23


def train_run(out: Path, data_root: Path, **settings) -> Path:
    base = dict(data_root=str(data_root), hidden=8, iterations=2, val_every=2, val_episodes=2, device="cpu")
    Trainer(compose({**base, **settings}), out, progress=False).fit()
    return out


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory, synthetic_data_root) -> Path:
    """A tiny ProtoNet, normalised inputs, 5-way 2-shot 3-query evaluation episodes."""
    return train_run(tmp_path_factory.mktemp("predict") / "proto", synthetic_data_root, algo="protonet",
                     ways=5, shots=2, queries=3, train_queries=2, normalize=True)


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory, synthetic_data_root) -> Path:
    """A tiny 3-way MAML on the loop engine."""
    return train_run(tmp_path_factory.mktemp("predict") / "maml", synthetic_data_root, algo="maml", engine="loop",
                     ways=3, shots=1, queries=1, inner_steps=1, hidden=4)


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def write_stored(path: Path, pixels: torch.Tensor, pre: Preprocessing) -> None:
    """Write stored pixels uint8 [C, S, S] as a PNG that decodes back to them (Omniglot: un-invert)."""
    raw = 255 - pixels if pre.invert else pixels
    array = raw[0].numpy() if raw.shape[0] == 1 else raw.permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def random_png(path: Path, seed: int, size: int = 28) -> Path:
    g = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(torch.randint(0, 256, (size, size), generator=g, dtype=torch.uint8).numpy()).save(path)
    return path


def support_folder(root: Path, counts: Sequence[int], seed: int = 0) -> Path:
    """`root/class{i}/{j}.png` with counts[i] random images in class i."""
    for i, n in enumerate(counts):
        for j in range(n):
            random_png(root / f"class{i}" / f"{j}.png", seed=seed + 100 * i + j)
    return root


# ----------------------------------------------------------------------------- parity with eval
def test_predict_on_episode_folders_agrees_with_eval(protonet_run, tmp_path):
    episodes = 4
    x, _ = Experiment.from_run(protonet_run, device="cpu")
    assert x.preprocessing.normalised and x.preprocessing.invert
    seed = x.config.eval.eval_seed
    data = x.load_split("test", progress=False)
    # the episodes `l2l-app eval` draws: the same task source, seed and order
    batch, support_idx, query_idx = x.task_source(data, x.eval_shape, seed).sample_with_indices(episodes)
    evaluated = evaluate_run(protonet_run, episodes=episodes, seed=seed, device="cpu", progress=False)
    ways, shots, _ = x.eval_shape

    for e in range(episodes):
        folder = tmp_path / f"episode{e}"
        files: Dict[Path, int] = {}
        class_folders = []
        for c, idx in enumerate(support_idx[e].reshape(ways, shots)):
            name = f"{c:02d}-" + data.class_names[int(data.labels[idx[0]])].replace("/", "-")
            class_folders.append(name)
            for j, i in enumerate(idx.tolist()):
                files[folder / "support" / name / f"{j:02d}.png"] = i
        for q, i in enumerate(query_idx[e].tolist()):
            files[folder / "queries" / f"{q:03d}.png"] = i
        for path, i in files.items():
            write_stored(path, data.images[i], x.preprocessing)
            assert torch.equal(x.preprocessing.image_pixels(path), data.images[i]), f"{path} does not round-trip"

        result = predict_folder(protonet_run, folder / "support", [folder / "queries"], device="cpu")
        assert result.classes == class_folders
        assert result.images == [str(folder / "queries" / f"{q:03d}.png") for q in range(len(query_idx[e]))]
        reference = x.learner.predict(*batch.task(e)[:3], ways)
        predicted = result.ranking[:, 0]
        assert torch.equal(predicted, reference.argmax(dim=1))
        assert torch.equal(result.probabilities, torch.softmax(reference.double(), dim=1))
        correct = int((predicted == batch.query_y[e]).sum())
        assert evaluated.accuracies[e] == pytest.approx(100.0 * correct / len(predicted),
                                                        abs=EVAL_ACCURACY_TOLERANCE)
        if e == 0:  # the command line gives the same predictions
            out = run_cli("predict", protonet_run, "--support", folder / "support", "--query", folder / "queries",
                          "--json", "--device", "cpu")
            assert out.exit_code == 0, out.output
            rows = json.loads(out.stdout)["predictions"]
            assert [r["predicted_class"] for r in rows] == result.predicted
            assert [r["probability"] for r in rows] == result.probability


def test_unequal_shots_match_the_learner_on_the_same_tensors(protonet_run, tmp_path):
    support = support_folder(tmp_path / "support", [1, 2, 3])
    queries = [random_png(tmp_path / "q" / f"{i}.png", seed=1000 + i) for i in range(4)]
    result = predict_folder(protonet_run, support, queries, device="cpu")
    x, _ = Experiment.from_run(protonet_run, device="cpu")
    pre = x.preprocessing
    files = [p for _, paths in support_classes(support) for p in paths]
    sx = pre.to_input(torch.stack([pre.image_pixels(p) for p in files]))
    qx = pre.to_input(torch.stack([pre.image_pixels(p) for p in queries]))
    reference = x.learner.predict(sx, torch.tensor([0, 1, 1, 2, 2, 2]), qx, 3)
    assert result.classes == ["class0", "class1", "class2"]
    assert torch.equal(result.probabilities, torch.softmax(reference.double(), dim=1))


# ----------------------------------------------------------------------------- output formats
def test_csv_json_and_table(protonet_run, tmp_path):
    support = support_folder(tmp_path / "support", [2, 2, 2, 2])
    queries = [random_png(tmp_path / "q" / f"{i}.png", seed=50 + i) for i in range(3)]
    out = tmp_path / "predictions.csv"
    res = run_cli("predict", protonet_run, "--support", support, "--query", queries[0], "--query", queries[1],
                  "--query", queries[2], "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS) and len(lines) == 4
    assert [line.split(",")[0] for line in lines[1:]] == [str(q) for q in queries]
    assert "predicted class" in res.stdout and str(queries[2]) in res.stdout

    result = predict_folder(protonet_run, support, queries, device="cpu")
    doc = json.loads(result.to_json())
    assert doc["classes"] == ["class0", "class1", "class2", "class3"] and doc["checkpoint"] == "best"
    assert {"run", "step", "input", "predictions"} <= set(doc)
    for row in doc["predictions"]:
        assert set(CSV_COLUMNS) | {"probabilities"} == set(row)
        assert row["probability"] >= row["next_probability"] >= 0
        assert row["predicted_class"] != row["next_class"]
        assert abs(sum(row["probabilities"]) - 1.0) < SOFTMAX_SUM_TOLERANCE
    assert torch.allclose(result.probabilities.sum(dim=1), torch.ones(3, dtype=torch.float64), rtol=0,
                          atol=SOFTMAX_SUM_TOLERANCE)
    csv_probabilities = [float(line.split(",")[2]) for line in lines[1:]]
    assert csv_probabilities == pytest.approx(result.probability, abs=5e-7)  # written with 6 decimals


# ----------------------------------------------------------------------------- folders
def test_query_folders_expand_recursively_skipping_hidden_and_non_images(tmp_path):
    q = tmp_path / "queries"
    for rel in ("b.png", "a/c.PNG", "a/.hidden.png", "a/.cache/d.png", "z/deeper/e.jpg", ".top.png"):
        random_png(q / rel, seed=len(rel))
    (q / "notes.txt").write_text("not an image")
    (q / "a" / "thumbs.db").write_bytes(b"\0")
    single = random_png(tmp_path / "one.png", seed=1)
    assert query_files([q, single]) == [q / "a/c.PNG", q / "b.png", q / "z/deeper/e.jpg", single]
    # an image named twice (inside a folder given too, a path repeated, another spelling) counts once
    again = tmp_path / "queries" / ".." / "one.png"
    assert query_files([single, q, q / "b.png", again]) == [single, q / "a/c.PNG", q / "b.png", q / "z/deeper/e.jpg"]


def test_support_classes_are_sorted_folders_and_ignore_hidden_entries(tmp_path):
    s = support_folder(tmp_path / "support", [2, 1])
    random_png(s / "class1" / "nested" / "x.png", seed=7)
    random_png(s / "class1" / ".ipynb_checkpoints" / "y.png", seed=8)
    (s / "class0" / "README.md").write_text("about class 0")
    random_png(s / ".git" / "z.png", seed=9)
    random_png(s / "loose.png", seed=10)
    classes = support_classes(s)
    assert [name for name, _ in classes] == ["class0", "class1"]
    assert [len(paths) for _, paths in classes] == [2, 2]


def test_empty_class_folder_is_named(protonet_run, tmp_path):
    s = support_folder(tmp_path / "support", [2, 2])
    (s / "empty class").mkdir()
    (s / "empty class" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="support class 'empty class' has no images"):
        support_classes(s)
    assert_one_line_error(run_cli("predict", protonet_run, "--support", s, "--query", s / "class0"),
                          "'empty class'")


def test_fewer_than_two_classes_refused(protonet_run, tmp_path):
    s = support_folder(tmp_path / "support", [3])
    random_png(s / "stray.png", seed=3)
    assert_one_line_error(run_cli("predict", protonet_run, "--support", s, "--query", s / "class0"),
                          "1 class folder", "at least 2", "directly in it are not used")


# ----------------------------------------------------------------------------- output layers
def test_a_model_with_an_output_layer_needs_exactly_its_ways(maml_run, tmp_path):
    queries = [random_png(tmp_path / "q" / f"{i}.png", seed=300 + i) for i in range(2)]
    three = support_folder(tmp_path / "three", [1, 2, 3])  # unequal shots: adapts on all of them
    with torch.no_grad():  # adaptation takes its gradient steps all the same
        result = predict_folder(maml_run, three, queries, device="cpu")
    assert result.classes == ["class0", "class1", "class2"] and len(result) == 2
    assert torch.allclose(result.probabilities.sum(dim=1), torch.ones(2, dtype=torch.float64), rtol=0,
                          atol=SOFTMAX_SUM_TOLERANCE)

    four = support_folder(tmp_path / "four", [1, 1, 1, 1])
    with pytest.raises(DataError, match="3-way output layer; give exactly 3 class folders"):
        predict_folder(maml_run, four, queries, device="cpu")
    out = tmp_path / "p.csv"
    assert_one_line_error(run_cli("predict", maml_run, "--support", four, "--query", queries[0], "--out", out),
                          "4 class folders", "3-way output layer", "protonet")
    assert not out.exists()


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("missing", ["support", "query", "run"])
def test_missing_paths_are_refused_and_nothing_is_written(protonet_run, tmp_path, missing):
    support = support_folder(tmp_path / "support", [1, 1])
    query = random_png(tmp_path / "q.png", seed=5)
    out = tmp_path / "predictions.csv"
    args = {"run": protonet_run, "support": support, "query": query, "out": out}
    args[missing] = tmp_path / "nowhere" / "x"
    result = run_cli("predict", args["run"], "--support", args["support"], "--query", args["query"],
                     "--out", args["out"], "--device", "cpu")
    assert_one_line_error(result, str(tmp_path / "nowhere"))
    assert not out.exists() and not (tmp_path / "nowhere").exists()


def test_the_folders_of_out_are_created_as_for_every_out(protonet_run, tmp_path):
    support = support_folder(tmp_path / "support", [1, 1])
    out = tmp_path / "new" / "folder" / "predictions.csv"
    result = run_cli("predict", protonet_run, "--support", support, "--query", random_png(tmp_path / "q.png", 5),
                     "--out", out, "--device", "cpu")
    assert result.exit_code == 0 and out.read_text().startswith(",".join(CSV_COLUMNS)), result.output


@pytest.mark.parametrize("target", ["run file", "input image"])
def test_out_may_not_replace_the_runs_files_or_an_input_even_with_overwrite(protonet_run, tmp_path, target):
    support = support_folder(tmp_path / "support", [1, 1])
    query = random_png(tmp_path / "q.png", seed=5)
    out = protonet_run / "config.json" if target == "run file" else query
    before = out.read_bytes()
    result = run_cli("predict", protonet_run, "--support", support, "--query", query, "--out", out, "--overwrite",
                     "--device", "cpu")
    assert_one_line_error(result, "is inside the run directory" if target == "run file" else
                          "is one of the input images")
    assert out.read_bytes() == before


def test_an_existing_out_file_is_replaced_only_with_overwrite(protonet_run, tmp_path):
    support = support_folder(tmp_path / "support", [1, 1])
    query = random_png(tmp_path / "q.png", seed=5)
    out = tmp_path / "precious.csv"
    out.write_text("precious\n")
    args = ["predict", protonet_run, "--support", support, "--query", query, "--out", out, "--device", "cpu"]
    assert_one_line_error(run_cli(*args), f"--out {out} exists; pass --overwrite to replace it")
    assert out.read_text() == "precious\n"
    assert run_cli(*args, "--overwrite").exit_code == 0
    assert out.read_text().splitlines()[0].split(",") == list(CSV_COLUMNS)


def test_options_are_required(protonet_run, tmp_path):
    support = support_folder(tmp_path / "support", [1, 1])
    assert_one_line_error(run_cli("predict", protonet_run, "--query", tmp_path), "--support")
    assert_one_line_error(run_cli("predict", protonet_run, "--support", support), "--query")


def test_a_feature_vector_run_is_refused_before_anything_is_built(protonet_run, tmp_path):
    run = tmp_path / "features-run"
    shutil.copytree(protonet_run, run)
    pre = json.loads((run / "preprocessing.json").read_text())
    (run / "preprocessing.json").write_text(json.dumps({**pre, "kind": VECTORS, "channels": 16,
                                                        "image_size": 0}))
    support = support_folder(tmp_path / "support", [1, 1])
    assert_one_line_error(run_cli("predict", run, "--support", support, "--query", support / "class0"),
                          "feature vectors of 16 numbers", "Python API")


def listing(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_predict_leaves_the_run_directory_untouched(protonet_run, tmp_path):
    before = listing(protonet_run)
    support = support_folder(tmp_path / "support", [1, 1])
    assert run_cli("predict", protonet_run, "--support", support, "--query", support, "--device", "cpu").exit_code == 0
    assert listing(protonet_run) == before


def test_an_unreadable_query_is_named_with_the_fix_for_predict(protonet_run, tmp_path):
    support = support_folder(tmp_path / "support", [1, 1])
    bad = tmp_path / "queries" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png")
    err = assert_one_line_error(run_cli("predict", protonet_run, "--support", support, "--query", bad.parent),
                                f"cannot decode image {bad}", "replace or remove this query image")
    assert "--skip-bad-images" not in err


# ----------------------------------------------------------------------------- colour given to a grey run
def colour_png(path: Path, seed: int, grey: bool = False, size: int = 28) -> Path:
    """A random RGB image; with grey=True its three channels are equal (a grey photo saved as RGB)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 1 if grey else 3), generator=g, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.expand(size, size, 3).contiguous().numpy(), mode="RGB").save(path)
    return path


def test_has_colour_tells_colour_from_grey_saved_as_rgb(tmp_path):
    from l2l_app.data.images import has_colour
    assert has_colour(colour_png(tmp_path / "c.png", 0))
    grey_jpeg = tmp_path / "g.jpg"
    Image.open(colour_png(tmp_path / "g.png", 1, grey=True)).save(grey_jpeg, quality=75)
    assert Image.open(grey_jpeg).mode == "RGB" and not has_colour(grey_jpeg)
    assert not has_colour(random_png(tmp_path / "l.png", 2))           # mode L
    assert not has_colour(tmp_path / "missing.png")                    # unreadable: no claim


def test_colour_queries_on_a_grey_run_get_a_note(protonet_run, tmp_path):
    support = support_folder(tmp_path / "support", [2, 2])
    grey = [colour_png(tmp_path / "grey" / f"{i}.png", 10 + i, grey=True) for i in range(2)]
    assert predict_folder(protonet_run, support, grey, device="cpu").notes == []
    colour = [colour_png(tmp_path / "colour" / f"{i}.png", 20 + i) for i in range(3)]
    result = predict_folder(protonet_run, support, colour, device="cpu")
    assert len(result.notes) == 1 and "3 of 7 images are in colour" in result.notes[0]
    assert json.loads(result.to_json())["notes"] == result.notes
    res = run_cli("predict", protonet_run, "--support", support, "--query", tmp_path / "colour", "--device", "cpu")
    assert res.exit_code == 0 and "note: 3 of 7 images are in colour" in res.stderr, res.output
