"""The Python API (`l2l_app.train`, `load`, `Run.evaluate`, `Run.predict`) and the README's example of it."""
from __future__ import annotations

import gc
import re
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import l2l_app
from l2l_app.config import compose
from l2l_app.errors import ConfigError, DataError
from l2l_app.evaluation import EvalResult
from l2l_app.predict import Predictions

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parent.parent / "README.md"
TINY = dict(algo="protonet", hidden=8, iterations=2, val_every=2, val_episodes=2, ways=3, shots=2, queries=2,
            train_queries=2, device="cpu")


def readme_example() -> str:
    """The ```python block of the README's `## Python API` section."""
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section should hold one python example"
    return blocks[0]


def temporary_runs() -> set:
    return set(Path(tempfile.gettempdir()).glob("l2l_app-run-*"))


def test_the_readme_example_runs(omniglot_root, capsys):
    namespace: dict = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    run, result, labels = namespace["run"], namespace["result"], namespace["labels"]
    assert isinstance(result, Predictions) and len(result) == 9
    assert set(result.classes) == set(labels) and len(result.classes) == 3
    assert not run.path.exists(), "run.close() should remove the temporary run directory"
    printed = capsys.readouterr().out
    assert "predicted class" in printed and "95% CI" in printed


@pytest.fixture(scope="module")
def run(synthetic_data_root):
    """A tiny ProtoNet trained through the API without out= (a temporary run directory)."""
    with l2l_app.train(data_root=synthetic_data_root, **TINY) as trained:
        yield trained


@pytest.fixture(scope="module")
def test_images(run):
    """Stored pixels uint8 [12, 1, 28, 28] of 3 test classes (4 each) and their class names."""
    data = run.load_split("test")
    picked = [data.images[data.labels == c][:4] for c in range(3)]
    return torch.cat(picked), [data.class_names[c] for c in range(3) for _ in range(4)]


def as_pil(pixels: torch.Tensor, invert: bool) -> list:
    """Stored pixels [N, 1, S, S] -> PIL images as the originals were drawn (Omniglot: un-inverted)."""
    return [Image.fromarray((255 - p[0] if invert else p[0]).numpy()) for p in pixels]


def test_train_without_out_writes_only_a_temporary_directory_removed_on_close(synthetic_data_root):
    before = temporary_runs()
    trained = l2l_app.train(data_root=synthetic_data_root, **TINY)
    assert trained.temporary and trained.path.is_dir() and (trained.path / "checkpoints" / "best.pt").is_file()
    assert trained.step == 2 and trained.summary.steps == 2
    trained.close()
    assert not trained.path.exists() and temporary_runs() == before

    again = l2l_app.train(data_root=synthetic_data_root, **TINY)
    path = again.path
    del again
    gc.collect()
    assert not path.exists(), "a garbage-collected Run removes its temporary directory"


def test_train_runs_in_a_worker_thread(synthetic_data_root, tmp_path):
    """Apps and notebooks train in worker threads, where Python refuses signal handlers: the run
    leaves signals to the main thread and trains as it would there."""
    import threading
    outcome = {}

    def work():
        try:
            outcome["run"] = l2l_app.train(out=tmp_path / "run", data_root=synthetic_data_root, **TINY)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = e
    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["run"].step == 2 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    outcome["run"].close()


def test_train_resumes_a_run_as_the_cli_does(synthetic_data_root, tmp_path):
    """After a stop (a time budget, a Ctrl-C), `train(resume=RUN_DIR, ...)` continues from the last
    checkpoint with what a resume may change; anything else is refused as by `train --resume`."""
    from l2l_app.errors import ConfigError
    run_dir = tmp_path / "run"
    l2l_app.train(out=run_dir, data_root=synthetic_data_root, **TINY).close()
    resumed = l2l_app.train(resume=run_dir, iterations=TINY["iterations"] + 2)
    assert resumed.summary.steps == TINY["iterations"] + 2 and not resumed.temporary
    assert resumed.config.optim.iterations == TINY["iterations"] + 2
    with pytest.raises(ConfigError, match="cannot change --hidden when resuming"):
        l2l_app.train(resume=run_dir, hidden=TINY["hidden"] * 2)
    with pytest.raises(ConfigError, match="drop config=, recipe=, out= and overwrite="):
        l2l_app.train(resume=run_dir, out=tmp_path / "other")
    with pytest.raises(ConfigError, match=r"unknown setting 'iteration' \(did you mean --iterations\?\)"):
        l2l_app.train(resume=run_dir, iteration=9)


def test_train_into_out_and_load_give_the_same_predictions(synthetic_data_root, tmp_path, test_images):
    images, labels = test_images
    trained = l2l_app.train(out=tmp_path / "run", data_root=synthetic_data_root, **TINY)
    trained.close()  # a run in out= stays
    assert (tmp_path / "run" / "config.json").is_file() and not trained.temporary
    loaded = l2l_app.load(tmp_path / "run", device="cpu")
    assert loaded.step == trained.step and loaded.config == trained.config
    support, queries = images[0::2], images[1::2]
    a = trained.predict(support, labels[0::2], queries)
    b = loaded.predict(support, labels[0::2], queries)
    assert torch.equal(a.probabilities, b.probabilities) and a.predicted == b.predicted


def test_every_input_kind_gives_the_same_prediction(run, test_images, tmp_path):
    images, labels = test_images
    invert = run.preprocessing.invert
    support, queries = images[0::2], images[1::2]
    paths = []
    for i, image in enumerate(as_pil(queries, invert)):
        paths.append(tmp_path / f"q{i}.png")
        image.save(paths[-1])
    reference = run.predict(support, labels[0::2], queries)
    for kind, support_in, query_in in [
        ("float pixels / 255", support.float() / 255, queries.float() / 255),
        ("PIL images", as_pil(support, invert), as_pil(queries, invert)),
        ("paths", as_pil(support, invert), paths),
    ]:
        other = run.predict(support_in, labels[0::2], query_in)
        assert torch.equal(other.probabilities, reference.probabilities), kind
        # the rows are named by the queries' paths where they are paths, as the CLI names them
        assert other.images == ([str(p) for p in paths] if kind == "paths" else [f"query {i}" for i in range(6)])
    assert reference.classes == list(dict.fromkeys(labels))
    assert reference.images == [f"query {i}" for i in range(6)]
    assert torch.allclose(reference.probabilities.sum(dim=1), torch.ones(6, dtype=torch.float64), rtol=0,
                          atol=1e-12)


def test_folders_and_export_as_the_cli_does(run, test_images, tmp_path):
    """`Run.predict_folder` is `l2l-app predict` (same probabilities, rows named by path) and
    `Run.export` is `l2l-app export` (an existing file replaced only with overwrite=True)."""
    from l2l_app.errors import ConfigError
    from l2l_app.predict import predict_folder
    images, labels = test_images
    classes = list(dict.fromkeys(labels))
    for i, (image, label) in enumerate(zip(as_pil(images, run.preprocessing.invert), labels)):
        folder = tmp_path / "support" / f"c{classes.index(label)}" if i % 2 == 0 else tmp_path / "queries"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:02d}.png")
    got = run.predict_folder(tmp_path / "support", [tmp_path / "queries"])
    want = predict_folder(run.path, tmp_path / "support", [tmp_path / "queries"], checkpoint=run.checkpoint,
                          device=run.device)
    assert torch.equal(got.probabilities, want.probabilities) and got.images == want.images
    assert got.images == [str(tmp_path / "queries" / f"{i:02d}.png") for i in range(1, 12, 2)]
    assert got.classes == ["c0", "c1", "c2"]

    out = tmp_path / "model.pt"
    exported = run.export(out, "state-dict")
    assert out.is_file() and (tmp_path / "model.pt.json").is_file() and exported.describe()
    with pytest.raises(ConfigError, match="already exist; pass --overwrite"):
        run.export(out, "state-dict")
    run.export(out, "state-dict", overwrite=True)


def test_labels_are_any_hashable_names(run, test_images):
    images, _ = test_images
    names = [("cat", 1), 7, None]
    labels = [names[i // 4] for i in range(12)]
    result = run.predict(images[0::2], labels[0::2], images[1::2])
    assert result.classes == names
    assert set(result.predicted) <= set(names)
    assert result.rows()[0]["predicted_class"] in names
    assert '"classes"' in result.to_json()


def test_evaluate_is_eval_and_writes_only_when_asked(run):
    before = sorted(p.name for p in run.path.rglob("*"))
    result = run.evaluate(episodes=3, seed=5)
    assert isinstance(result, EvalResult) and result.episodes == 3 and len(result.accuracies) == 3
    assert result.protocol["ways"] == 3 and result.protocol["episode_seed"] == 5
    assert sorted(p.name for p in run.path.rglob("*")) == before  # nothing written unless asked
    saved = run.evaluate(episodes=3, seed=5, save=True)
    assert saved.accuracies == result.accuracies  # the same fixed-seed episodes
    assert (run.path / saved.protocol["file"]).is_file()


def test_properties(run):
    assert run.config.algo == "protonet" and run.config.model.hidden == 8
    assert isinstance(run.model, torch.nn.Module) and run.preprocessing.input_shape == (1, 28, 28)
    assert "protonet" in repr(run) and run.device == "cpu"


def test_config_object_with_settings(synthetic_data_root):
    config = compose({"data_root": str(synthetic_data_root), **TINY})
    with l2l_app.train(config, iterations=1, val_every=1) as trained:
        assert trained.config.optim.iterations == 1 and trained.step == 1
    with pytest.raises(ConfigError, match="recipe"):
        l2l_app.train(config, recipe="maml-omniglot-5w1s")


def test_bad_settings_are_refused_before_anything_is_written(synthetic_data_root):
    before = temporary_runs()
    with pytest.raises(ConfigError, match="unknown setting 'iteration'"):
        l2l_app.train(data_root=synthetic_data_root, iteration=3)
    with pytest.raises(ConfigError, match="--ways"):
        l2l_app.train(data_root=synthetic_data_root, **{**TINY, "ways": 1})
    assert temporary_runs() == before


@pytest.mark.parametrize("support,labels,queries,message", [
    (lambda x: x[:4], ["a", "b", "a"], lambda x: x[4:6], "4 support images but 3 support labels"),
    (lambda x: x[:2], ["a"], lambda x: x[4:6], "2 support images but 1 support labels"),
    (lambda x: x[:4], ["a"] * 4, lambda x: x[4:6], "has 1 class"),
    (lambda x: x[:4].float() * 2, ["a", "b"] * 2, lambda x: x[4:6], "pixels / 255 in [0, 1]"),
    (lambda x: x[:4, :, :20, :20], ["a", "b"] * 2, lambda x: x[4:6], "expected [N, 1, 28, 28]"),
    (lambda x: x[:4], ["a", "b"] * 2, lambda x: x[4], "expected [N, 1, 28, 28]"),
    (lambda x: x[:4], ["a", "b"] * 2, lambda x: [], "no query images"),
    (lambda x: x[:4], [["a"], ["b"]] * 2, lambda x: x[4:6], "hashable"),
    (lambda x: "support_folder", None, lambda x: x[4:6], "for a folder of class folders use Run.predict_folder"),
])
def test_bad_predict_input_is_one_line(run, test_images, support, labels, queries, message):
    images, _ = test_images
    with pytest.raises(DataError, match=re.escape(message)) as info:
        run.predict(support(images), labels, queries(images))
    assert "\n" not in str(info.value)


def test_a_closed_temporary_run_still_predicts_but_cannot_evaluate(synthetic_data_root, test_images):
    images, labels = test_images
    trained = l2l_app.train(data_root=synthetic_data_root, **TINY)
    trained.close()
    assert len(trained.predict(images[0::2], labels[0::2], images[1::2])) == 6
    with pytest.raises(ConfigError, match="closed"):
        trained.evaluate(episodes=1)


def test_a_feature_vector_run_predicts_from_float_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 8, generator=g) * 3
    rows = ["label," + ",".join(f"f{i}" for i in range(8))]
    for c in range(20):
        for _ in range(6):
            vector = centres[c] + torch.randn(8, generator=g)
            rows.append(f"k{c:02d}," + ",".join(f"{v:.5f}" for v in vector.tolist()))
    (tmp_path / "vectors.csv").write_text("\n".join(rows) + "\n")
    settings = {**{k: v for k, v in TINY.items() if k != "hidden"}, "dataset": "features",
                "data_root": tmp_path / "vectors.csv", "backbone": "mlp", "mlp_hidden": "16"}
    with l2l_app.train(**settings) as trained:
        assert trained.preprocessing.input_shape == (8,)
        support = centres[:3].repeat_interleave(2, dim=0) + 0.1
        result = trained.predict(support, ["a", "a", "b", "b", "c", "c"], centres[:3])
        assert result.classes == ["a", "b", "c"] and len(result) == 3
        with pytest.raises(DataError, match="float tensor"):
            trained.predict([Image.new("L", (8, 8))] * 2, ["a", "b"], centres[:1])
        with pytest.raises(DataError, match=re.escape("expected [N, 8]")):
            trained.predict(support[:, :4], ["a", "a", "b", "b", "c", "c"], centres[:3])
