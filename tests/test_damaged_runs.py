"""Damaged run directories and wrong API arguments: every one is a one-line error that names what
is wrong and the fix, never a traceback or a silent fallback to defaults.

Damage covered: config.json (empty, a group missing or unknown, not an object, truncated, edited so it
no longer fits the checkpoint), a checkpoint that is not l2l-app's (an exported state dict copied over
it), preprocessing.json with a missing or mistyped entry, metrics.jsonl with a bad line; and the
Python API called with arguments of the wrong type."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import torch
from click.testing import CliRunner

import l2l_app
from l2l_app import rundir
from l2l_app.checkpoint import load_checkpoint
from l2l_app.cli import cli
from l2l_app.config import compose, load_json
from l2l_app.errors import CheckpointError, ConfigError
from l2l_app.run_records import read_metrics
from l2l_app.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent
RESTORE = "restore it from a copy of the run"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, synthetic_data_root) -> Path:
    """A finished 2-step ProtoNet run (hidden 8, 3-way); copy it (`damaged`) before changing it."""
    out = tmp_path_factory.mktemp("damaged") / "run"
    Trainer(compose(dict(data_root=str(synthetic_data_root), hidden=8, iterations=2, val_every=2, val_episodes=2,
                         ways=3, shots=1, queries=2, device="cpu")), out, progress=False).fit()
    return out


@pytest.fixture
def damaged(pristine, tmp_path) -> Path:
    """A private copy of the pristine run, to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "run"))


def cli_error(*args: Any) -> str:
    """The one `error: ...` line of a command that must fail with exit code 2."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    return err


def evaluate(run: Path) -> str:
    return cli_error("eval", "--run", run, "--episodes", 2, "--quiet")


def edit_json(path: Path, change: Callable[[Dict[str, Any]], Any]) -> None:
    """Rewrite a JSON file with `change` applied: in place (it returns None) or replaced by what it returns."""
    data = json.loads(path.read_text())
    result = change(data)
    path.write_text(json.dumps(data if result is None else result))


# ------------------------------------------------------------------------------ config.json
CONFIG_DAMAGE: Dict[str, tuple] = {
    "empty object": (lambda d: {}, "missing the 'data', 'task', 'model', 'algorithm', 'optim', 'run' and 'eval' groups"),
    "no data group": (lambda d: d.pop("data") and None, "missing the 'data' group"),
    "unknown group": (lambda d: d.update(bogus={}), "unknown group 'bogus'"),
    "not an object": (lambda d: [], "expected a JSON object of setting groups, got a list"),
    "group not an object": (lambda d: d.update(model=[64]), "the 'model' group is a list"),
    "no algorithm named": (lambda d: d["algorithm"].pop("algo") and None, "names no algorithm"),
}


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_damaged_config_is_refused_not_filled_with_defaults(damaged, damage):
    change, fragment = CONFIG_DAMAGE[damage]
    edit_json(damaged / "config.json", change)
    err = evaluate(damaged)
    assert f"run config {damaged / 'config.json'} is damaged" in err and fragment in err and RESTORE in err
    with pytest.raises(ConfigError, match="is damaged"):
        rundir.load_config(damaged)


@pytest.mark.parametrize("command", ["report", "resume", "export", "predict"])
def test_config_that_is_not_an_object_is_one_line_everywhere(damaged, tmp_path, command):
    (damaged / "config.json").write_text("[]")
    args = {"report": ["report", damaged, "--out", tmp_path / "report"],
            "resume": ["train", "--resume", damaged, "--quiet"],
            "export": ["export", damaged, "--format", "state-dict", "--out", tmp_path / "model.pt"],
            "predict": ["predict", damaged, "--support", tmp_path, "--query", tmp_path]}[command]
    err = cli_error(*args)
    assert "got a list" in err and RESTORE in err, err


def test_from_dict_refuses_what_is_not_an_object():
    from l2l_app.config import from_dict

    with pytest.raises(ConfigError, match="expected the settings as a JSON object of groups .*got a list"):
        from_dict([])  # type: ignore[arg-type]


def test_truncated_config_says_how_to_fix_it(damaged):
    path = damaged / "config.json"
    path.write_text(path.read_text()[:100])
    err = evaluate(damaged)
    assert "is damaged: it is not valid JSON" in err and RESTORE in err


def test_a_setting_missing_inside_a_group_takes_its_default(damaged):
    """Runs of older versions lack the settings added since: those take their defaults."""
    edit_json(damaged / "config.json", lambda d: d["run"].pop("log_every") and None)
    config = rundir.load_config(damaged)
    assert config.run.log_every == 100 and config.model.hidden == 8


def test_committed_run_records_still_load():
    configs = sorted((REPO / "benchmarks" / "results").glob("**/config.json"))
    if not configs:
        pytest.skip("no committed run records")
    for path in configs:
        assert load_json(path).algo, path
        rundir.load_config(path.parent)


# ------------------------------------------------------------------------------ config vs checkpoint
@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["model"].update(hidden=16), "blocks.0.0.weight is 8x1x3x3 in the checkpoint but 16x1x3x3 in the model"),
    (lambda d: d.update(algorithm={"algo": "maml"}), "the model has backbone.blocks.0.0.weight, which the checkpoint lacks"),
    (lambda d: d["model"].update(backbone="resnet12"), "which the checkpoint lacks"),
], ids=["hidden", "algo", "backbone"])
def test_config_edited_to_no_longer_fit_the_checkpoint(damaged, edit, fragment):
    edit_json(damaged / "config.json", edit)
    err = evaluate(damaged)
    best = damaged / "checkpoints" / "best.pt"
    assert f"{best} does not match the run's config.json" in err and fragment in err, err
    assert "restore config.json (or the checkpoint) from a copy of the run" in err


# ------------------------------------------------------------------------------ checkpoints
def test_exported_state_dict_over_the_checkpoint_is_named(damaged, tmp_path):
    l2l_app.load(damaged).export(tmp_path / "model.pt", format="state-dict")
    for name in ("best", "last"):
        shutil.copy(tmp_path / "model.pt", damaged / "checkpoints" / f"{name}.pt")
    err = evaluate(damaged)
    assert f"{damaged / 'checkpoints' / 'best.pt'} is not an l2l-app checkpoint (no 'step'" in err, err
    err = cli_error("train", "--resume", damaged, "--iterations", 4, "--quiet")
    assert f"{damaged / 'checkpoints' / 'last.pt'} is not an l2l-app checkpoint (no 'step'" in err, err


def test_checkpoint_that_is_not_a_dict_or_has_a_bad_step(tmp_path):
    path = tmp_path / "best.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="is not an l2l-app checkpoint \\(it holds a Tensor"):
        load_checkpoint(path)
    torch.save({"step": 3}, path)
    assert load_checkpoint(path)["step"] == 3
    with pytest.raises(CheckpointError, match="no 'rng'"):
        load_checkpoint(path, required=("step", "rng"))


def test_learner_state_that_does_not_load_is_one_line(tmp_path):
    """Weights that fit but learner state that does not (Meta-SGD's rates missing): one line, not a KeyError."""
    from l2l_app.checkpoint import load_learner

    class Learner:
        model = torch.nn.Linear(2, 3)

        def load_state_dict(self, state):
            raise KeyError("lr")

    state = {"step": 1, "learner": {"model": torch.nn.Linear(2, 3).state_dict()}}
    with pytest.raises(CheckpointError, match=r"best\.pt cannot be loaded \('lr'\): the checkpoint does not fit"):
        load_learner(Learner(), state, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match=r"best\.pt: checkpoint holds no model weights"):
        load_learner(Learner(), {"step": 1}, tmp_path / "best.pt")


def test_checkpoint_step_that_is_not_a_count(damaged):
    best = damaged / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    torch.save({**state, "step": "two"}, best)
    assert "its step is 'two', not a count of training steps" in evaluate(damaged)


# ------------------------------------------------------------------------------ preprocessing.json
@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.pop("dataset") and None, "it has no 'dataset' entry"),
    (lambda d: d.update(channels="one"), "its 'channels' entry is 'one', not a whole number"),
    (lambda d: d.update(mean=["a"]), "its 'mean' entry is ['a'], not a list of numbers or null"),
    (lambda d: [d], "expected a JSON object"),
], ids=["missing", "wrong type", "bad mean", "not an object"])
def test_damaged_preprocessing_names_the_entry(damaged, edit, fragment):
    edit_json(damaged / "preprocessing.json", edit)
    err = evaluate(damaged)
    assert str(damaged / "preprocessing.json") in err and fragment in err and RESTORE in err, err


def test_preprocessing_read_names_the_file_and_the_fix(pristine, tmp_path):
    """`Preprocessing.read` (for rundir.load_preprocessing): truncated, not UTF-8, missing entry."""
    from l2l_app.data import Preprocessing

    good = (pristine / "preprocessing.json").read_text()
    assert Preprocessing.read(pristine / "preprocessing.json").channels == 1
    path = tmp_path / "preprocessing.json"
    for text, fragment in ((good[:50], "it is not valid JSON"), ("\udcff", "not UTF-8 text"),
                           (json.dumps({**json.loads(good), "kind": None}), "its 'kind' entry is None, not text")):
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(ConfigError) as raised:
            Preprocessing.read(path)
        assert str(raised.value).startswith(f"cannot read {path}: ") and fragment in str(raised.value)
        assert RESTORE in str(raised.value)


# ------------------------------------------------------------------------------ metrics.jsonl
@pytest.mark.parametrize("line, fragment", [
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (b'{"kind": "train", "step": 3, "accuracy": [1]}', "its accuracy is [1], not a number"),
    (b'{"kind": "train", "loss": 1.0}', "its step is None"),
    (b"[1, 2]", "it is list, not a JSON object"),
    (b"{not json", "is not JSON"),
], ids=["not utf-8", "accuracy list", "no step", "not an object", "not json"])
def test_damaged_metrics_line_is_one_line_in_report(damaged, tmp_path, line, fragment):
    metrics = damaged / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines()
    metrics.write_bytes(b"\n".join(lines[:1] + [line] + lines[1:]) + b"\n")
    err = cli_error("report", damaged, "--out", tmp_path / "report")
    assert f"{metrics}: line 2" in err and fragment in err and "delete that line" in err, err


def test_intact_metrics_still_read(pristine):
    train, val = read_metrics(pristine / "metrics.jsonl", 1.0)
    assert [r["step"] for r in train] == [1, 2] and [r["step"] for r in val] == [2]


# ------------------------------------------------------------------------------ Python API arguments
@pytest.fixture(scope="module")
def loaded(pristine) -> l2l_app.Run:
    return l2l_app.load(pristine)


API_CALLS: Dict[str, tuple] = {
    "train(dict)": (lambda run: l2l_app.train({"ways": 5}), "pass settings as keywords, e.g. l2l_app.train(ways=5)"),
    "train(5)": (lambda run: l2l_app.train(5), "config must be an ExperimentConfig or the path of a TOML/JSON"),
    "train(out=5)": (lambda run: l2l_app.train(out=5), "out must be a path (a str or pathlib.Path), got int 5"),
    "train(resume=123)": (lambda run: l2l_app.train(resume=123), "resume must be a path"),
    "train(overwrite='yes')": (lambda run: l2l_app.train(overwrite="yes"), "overwrite must be True or False"),
    "load(None)": (lambda run: l2l_app.load(None), "load(): run_dir must be a path"),
    "load(device=5)": (lambda run: l2l_app.load(run.path, device=5), "device must be text"),
    "evaluate(episodes='ten')": (lambda run: run.evaluate(episodes="ten"), "episodes must be a whole number"),
    "evaluate(ways=True)": (lambda run: run.evaluate(ways=True), "ways must be a whole number"),
    "evaluate(split=3)": (lambda run: run.evaluate(split=3), "split must be text"),
    "predict(5, ...)": (lambda run: run.predict(5, ["a", "b"], 7), "support_images must be a list of image paths"),
    "predict(labels=7)": (lambda run: run.predict([], 7, []), "support_labels must be a list of class names"),
    "predict(queries=7)": (lambda run: run.predict(torch.zeros(2, 1, 28, 28), ["a", "b"], 7),
                           "query_images must be a list"),
    "predict_folder(5, 6)": (lambda run: run.predict_folder(5, 6), "support_dir must be a path"),
    "export(5)": (lambda run: run.export(5), "Run.export(): out must be a path"),
}


@pytest.mark.parametrize("call", list(API_CALLS))
def test_api_arguments_of_the_wrong_type_are_config_errors(loaded, call):
    do, fragment = API_CALLS[call]
    with pytest.raises(ConfigError) as raised:
        do(loaded)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_api_accepts_paths_and_numbers_of_the_right_types(loaded, pristine):
    again = l2l_app.load(str(pristine), "last", "cpu")
    assert again.step == 2
    result = loaded.evaluate(episodes=2, ways=3, seed=1)
    assert result.episodes == 2


def test_a_checkpoint_that_is_a_folder_is_named_as_such(tmp_path, synthetic_data_root):
    from click.testing import CliRunner
    from l2l_app.cli import cli
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["train", "--data-root", str(synthetic_data_root), "--out", str(run), "--hidden",
                                    "8", "--iterations", "2", "--val-every", "2", "--val-episodes", "2", "--ways",
                                    "5", "--queries", "2", "--device", "cpu", "--quiet"]).exit_code == 0
    (run / "checkpoints" / "best.pt").unlink()
    (run / "checkpoints" / "best.pt").mkdir()
    result = CliRunner().invoke(cli, ["eval", str(run), "--episodes", "2", "--quiet"])
    assert result.exit_code == 2 and "best.pt is not a file (a folder?)" in result.stderr
    assert "--checkpoint last" in result.stderr and result.stderr.count("\n") == 1
