"""The train/eval options: what does not apply is refused, --config files, resolved configs, --help.

Every refusal is one line on stderr with exit code 2 and leaves nothing on disk.  Runs use the
synthetic Omniglot root (conftest), hidden 8 and a few steps on one CPU thread.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List

import pytest
from click.testing import CliRunner

from l2l_app.cli import cli
from l2l_app.config import APPLIES_TO, ExperimentConfig, compose, listing, resolve, validate, with_overrides
from l2l_app.registry import ALGORITHMS, BACKBONES, DATASETS
from l2l_app.errors import ConfigError
from conftest import cli_run, refused

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--hidden", "8", "--ways", "3", "--queries", "2", "--iterations", "3", "--val-every", "2",
        "--val-episodes", "2", "--device", "cpu", "--quiet"]


def users(setting: str, word: str = "and") -> str:
    """The algorithms that use `setting`, as the messages list them ('anil, maml and reptile')."""
    return listing(APPLIES_TO[setting], word)


run = cli_run


def train(root: Path, out: Path, *args):
    return run("train", "--data-root", root, "--out", out, *TINY, *args)


def metrics(run_dir: Path) -> List[Dict]:
    """metrics.jsonl without the wall-clock field."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "time"} for line in lines]


# ----------------------------------------------------------------------------- what does not apply
@pytest.mark.parametrize("args,fragments", [
    (["--first-order"], [f"--first-order applies only to {users('first_order')}", "not to --algo protonet (the default)"]),
    (["--algo", "protonet", "--inner-steps", "5", "--inner-lr", "0.1"],
     [f"--inner-steps and --inner-lr apply only to {users('inner_lr')}", f"choose --algo {users('inner_lr', 'or')}"]),
    (["--algo", "maml", "--inner-batch", "4"], ["--inner-batch applies only to reptile, not to --algo maml"]),
    (["--algo", "maml", "--inner-optimizer", "sgd"], ["--inner-optimizer applies only to reptile"]),
    (["--algo", "maml", "--no-transductive"], ["--no-transductive applies only to reptile"]),
    (["--algo", "maml", "--meta-lr-final", "0.1"], ["--meta-lr-final applies only to reptile"]),
    (["--algo", "reptile", "--second-order"], [f"--second-order applies only to {users('first_order')}, not to "
                                                "--algo reptile"]),
    (["--algo", "reptile", "--lr-decay-every", "5"], [f"--lr-decay-every applies only to {users('lr_decay_every')}"]),
    (["--lr-decay", "0.3"], ["--lr-decay has no effect without --lr-decay-every"]),
    (["--engine", "loop", "--chunk-size", "2", "--compile"],
     ["--chunk-size and --compile apply only to the batched engine, not to --engine loop"]),
    (["--engine", "batched", "--chunk-size", "2", "--max-memory", "1"], ["--max-memory", "--chunk-size",
                                                                        "drop one of them"]),
    (["--recipe", "maml-omniglot-5w1s", "--algo", "protonet"],
     ["--recipe maml-omniglot-5w1s fixes the algorithm (maml)", "--algo protonet", "drop one of them"]),
    (["--recipe", "maml-omniglot-5w1s", "--algo", "fomaml"], ["fixes the algorithm (maml)", "--algo fomaml"]),
    (["--recipe", "fomaml-omniglot-5w1s", "--algo", "reptile"], ["fixes the algorithm (fomaml)"]),
    (["--recipe", "protonet-omniglot-5w1s", "--inner-lr", "0.1"],
     [f"--inner-lr applies only to {users('inner_lr')}", "--algo protonet (of --recipe protonet-omniglot-5w1s)"]),
    (["--algo", "fomaml", "--second-order"], ["--algo fomaml is first-order MAML", "--second-order",
                                              "drop one of them"]),
])
def test_options_that_do_not_apply_are_refused(synthetic_data_root, tmp_path, args, fragments):
    out = tmp_path / "run"
    refused(train(synthetic_data_root, out, *args), *fragments)
    assert not out.exists()


def test_all_problems_are_named_at_once(tmp_path):
    err = refused(run("train", "--out", tmp_path / "r", "--algo", "reptile", "--first-order", "--lr-decay", "0.5"),
                  "--first-order", "--lr-decay")
    assert err.count(";") >= 1


def test_defaults_of_other_algorithms_are_not_refused():
    """Only what the user gave is checked; each algorithm's config holds only its own settings."""
    config = compose({"algo": "protonet", "ways": 3})
    assert not hasattr(config.algorithm, "inner_steps")
    assert compose({"algo": "reptile", "inner_batch": 4}).algorithm.inner_batch == 4
    assert compose({"algo": "maml"}, recipe="maml-omniglot-5w1s").recipe == "maml-omniglot-5w1s"
    assert compose({"algo": "fomaml"}, recipe="fomaml-omniglot-5w1s").algorithm.first_order is True


def test_fomaml_is_first_order_maml(synthetic_data_root, tmp_path):
    out = tmp_path / "run"
    result = train(synthetic_data_root, out, "--algo", "fomaml", "--first-order", "--log-every", 7)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["algorithm"]["algo"] == "maml" and saved["algorithm"]["first_order"] is True
    assert saved["run"]["log_every"] == 7 and saved["run"]["tensorboard"] is False


def test_dataset_and_backbone_choices_are_the_registries():
    from l2l_app.cli import TRAIN_SECTIONS
    choices = {name: typ.choices for _, specs in TRAIN_SECTIONS for name, typ, _ in specs
               if hasattr(typ, "choices")}
    assert list(choices["dataset"]) == DATASETS.names() and list(choices["backbone"]) == BACKBONES.names()


# ----------------------------------------------------------------------------- resolve
@pytest.mark.parametrize("algo", ALGORITHMS.names())
def test_resolve_fills_derived_values_and_clears_what_does_not_apply(algo):
    config = with_overrides(ExperimentConfig(), {"algo": algo, "ways": 4, "train_shots": 3})
    resolved = resolve(config)
    assert (resolved.task.train_ways, resolved.task.train_shots, resolved.task.train_queries) == (4, 3, 15)
    flat = resolved.flat()
    own = set(ALGORITHMS[algo].setting_names())
    assert own <= set(flat) and all(flat[n] is not None for n in own), flat  # every derived value filled in
    assert not {n for n, algos in APPLIES_TO.items() if algo not in algos and flat.get(n) is not None}
    assert resolve(resolved) == resolved  # idempotent
    assert validate(resolved) is resolved
    assert (resolved.train_ways, resolved.train_shots, resolved.train_queries) == \
        (config.train_ways, config.train_shots, config.train_queries)


def test_resolve_derives_test_inner_steps_and_final_epsilon():
    maml = resolve(with_overrides(ExperimentConfig(), {"algo": "maml", "inner_steps": 2}))
    assert maml.algorithm.test_inner_steps == 2 and maml.algorithm.inner_lr == 0.4
    reptile = resolve(with_overrides(ExperimentConfig(), {"algo": "reptile"}))
    assert reptile.algorithm.meta_lr_final == 0.0 and reptile.optim.lr_decay is None


@pytest.mark.parametrize("algo", ALGORITHMS.names())
def test_resolved_configs_build_learners_and_optimisers(algo):
    from l2l_app.experiment import build_learner, build_model, build_optimizer
    resolved = resolve(with_overrides(ExperimentConfig(), {"algo": algo, "hidden": 8, "lr_decay_every": None}))
    learner = build_learner(resolved, build_model(resolved), "loop")
    build_optimizer(resolved, learner)


def test_validate_still_requires_what_applies():
    import dataclasses
    reptile = resolve(with_overrides(ExperimentConfig(), {"algo": "reptile"}))
    unset = dataclasses.replace(reptile, algorithm=dataclasses.replace(reptile.algorithm, inner_batch=None))
    with pytest.raises(ConfigError, match="--inner-batch must be set for reptile"):
        validate(unset)


# ----------------------------------------------------------------------------- --config
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_file_flat_and_grouped_names(tmp_path):
    flat = write(tmp_path / "flat.toml", 'algo = "maml"\ninner_lr = 0.25\nmeta_batch = 3\nmeta_lr = 1\n')
    config = compose({}, config_file=flat)
    assert (config.algo, config.algorithm.inner_lr, config.optim.meta_batch) == ("maml", 0.25, 3)
    assert isinstance(config.optim.meta_lr, float)
    grouped = write(tmp_path / "grouped.toml", '[algorithm]\nalgo = "reptile"\ninner_batch = 4\n[run]\nseed = 9\n')
    config = compose({}, config_file=grouped)
    assert (config.algo, config.algorithm.inner_batch, config.run.seed) == ("reptile", 4, 9)
    as_json = write(tmp_path / "c.json", json.dumps({"task": {"ways": 7}, "hidden": 16, "recipe": None}))
    config = compose({}, config_file=as_json)
    assert (config.task.ways, config.model.hidden, config.recipe) == (7, 16, None)


def test_precedence_defaults_recipe_file_flags(tmp_path):
    f = write(tmp_path / "c.toml", "meta_batch = 4\ninner_lr = 0.2\n")
    config = compose({"inner_lr": 0.3}, recipe="maml-omniglot-5w1s", config_file=f)
    assert config.algorithm.inner_lr == 0.3  # flag over file
    assert config.optim.meta_batch == 4  # file over recipe (32)
    assert config.optim.iterations == 60000  # recipe over defaults (1000)
    assert config.recipe == "maml-omniglot-5w1s"
    with_recipe = write(tmp_path / "r.toml", 'recipe = "maml-omniglot-5w1s"\nmeta_batch = 2\n')
    config = compose({}, config_file=with_recipe)
    assert (config.recipe, config.optim.meta_batch, config.algorithm.inner_lr) == ("maml-omniglot-5w1s", 2, 0.4)
    assert compose({}, recipe="maml-omniglot-5w1s", config_file=with_recipe).recipe == "maml-omniglot-5w1s"


@pytest.mark.parametrize("name,text,fragments", [
    ("c.toml", "inner_lrr = 0.1\n", ["unknown setting 'inner_lrr'", "did you mean 'inner_lr'?"]),
    ("c.toml", "[task]\ninner_lr = 0.1\n", ["inner_lr belongs in [algorithm], not [task]"]),
    ("c.toml", "[algorithm]\ninner_lrr = 0.1\n", ["unknown setting 'algorithm.inner_lrr'",
                                                  "did you mean 'algorithm.inner_lr'?"]),
    ("c.toml", 'ways = "five"\n', ["ways must be a whole number, got 'five'"]),
    ("c.toml", "first_order = 1\n", ["first_order must be true or false"]),
    ("c.toml", "ways = 3\n[task]\nways = 4\n", ["ways is set twice"]),
    ("c.toml", "ways = \n", ["is not valid TOML"]),
    ("c.json", '{"ways": 3,}', ["is not valid JSON"]),
    ("c.json", "[1, 2]", ["expected a table of settings"]),
    ("c.yaml", "ways: 3\n", ["expected a .toml or .json file"]),
    ("c.toml", "hidden = 0\n", ["--hidden must be >= 1"]),
    ("c.toml", 'algo = "protonet"\ninner_lr = 0.1\n', ["inner_lr in ", f"applies only to {users('inner_lr')}",
                                                       "not to protonet (algo in "]),
    ("c.toml", 'recipe = "maml-omniglot-5w1s"\nalgo = "reptile"\n', ["fixes the algorithm (maml)",
                                                                     'algo = "reptile" in ']),
    ("c.toml", 'recipe = "maml-omniglot-5w1"\n', ["unknown recipe", "did you mean 'maml-omniglot-5w1s'?"]),
])
def test_bad_config_files_are_refused(tmp_path, name, text, fragments):
    f = write(tmp_path / name, text)
    out = tmp_path / "run"
    refused(run("train", "--config", f, "--out", out), *fragments)
    assert not out.exists()


def test_config_file_problems_name_the_file(tmp_path):
    refused(run("train", "--config", tmp_path / "missing.toml", "--out", tmp_path / "r"),
            f"cannot read --config {tmp_path / 'missing.toml'}")
    f = write(tmp_path / "c.toml", 'recipe = "maml-omniglot-5w1s"\n')
    refused(run("train", "--config", f, "--recipe", "maml-omniglot-20w1s", "--out", tmp_path / "r"),
            "--recipe maml-omniglot-20w1s conflicts with", "maml-omniglot-5w1s", "drop one of them")
    refused(run("train", "--config", f, "--resume", tmp_path / "r"), "drop --config")


def test_a_file_value_equal_to_the_default_is_not_refused(tmp_path):
    """A protonet run's config.json from before `resolve` holds MAML's defaults; it still works."""
    f = write(tmp_path / "c.json", json.dumps(ExperimentConfig().to_dict()))
    assert compose({}, config_file=f) == ExperimentConfig()


@pytest.mark.parametrize("algo_args", [["--algo", "protonet", "--train-ways", "4"],
                                       ["--algo", "maml", "--inner-lr", "0.3", "--meta-batch", "2"],
                                       ["--algo", "reptile", "--inner-batch", "2", "--meta-lr", "0.5"]])
def test_a_runs_config_json_reproduces_it(synthetic_data_root, tmp_path, algo_args):
    first, second = tmp_path / "first", tmp_path / "second"
    result = train(synthetic_data_root, first, "--seed", 11, *algo_args)
    assert result.exit_code == 0, result.output
    again = run("train", "--config", first / "config.json", "--out", second, "--quiet")
    assert again.exit_code == 0, again.output
    assert json.loads((second / "config.json").read_text()) == json.loads((first / "config.json").read_text())
    assert metrics(second) == metrics(first)
    assert len(metrics(first)) == 3 + 2  # 3 steps, validated at steps 2 and 3


# ----------------------------------------------------------------------------- numbers at their limits
@pytest.mark.parametrize("args,fragments", [
    (["--seed", 2**63], ["--seed must be <= 9223372036854775807"]),
    (["--seed", 99999999999999999999], ["--seed must be <= 9223372036854775807"]),
    (["--seed", -1], ["--seed must be >= 0"]),
    (["--hidden", 1025], ["--hidden must be <= 1024"]),
    (["--iterations", 2**31], ["--iterations must be <= 2147483647"]),
    (["--meta-lr", "nan"], ["--meta-lr must be a positive number"]),
    (["--meta-lr", "1e39"], ["--meta-lr must be a positive number up to 3.40282e+38"]),
    (["--time-budget", "inf"], ["--time-budget must be a positive number"]),
    (["--lr-decay-every", 2, "--lr-decay", "1.5"], ["--lr-decay must be a positive number up to 1"]),
    (["--log-every", 0], ["--log-every must be >= 1"]),
])
def test_numbers_out_of_range(synthetic_data_root, tmp_path, args, fragments):
    out = tmp_path / "run"
    refused(train(synthetic_data_root, out, *args), *fragments)
    assert not out.exists()


def test_the_largest_seed_trains_and_evaluates(synthetic_data_root, tmp_path):
    out = tmp_path / "run"
    result = train(synthetic_data_root, out, "--seed", 2**63 - 1)
    assert result.exit_code == 0, result.output
    ok = run("eval", out, "--episodes", 2, "--seed", 2**63 - 1, "--quiet")
    assert ok.exit_code == 0, ok.output
    refused(run("eval", out, "--seed", 2**64, "--quiet"), "--seed must be <= 9223372036854775807")
    refused(run("eval", out, "--episodes", 0, "--quiet"), "--episodes must be >= 1")


def test_bench_counts_are_bounded(tmp_path):
    refused(run("bench", "--repeats", 0, "--out", tmp_path / "b"), "--repeats must be >= 1")
    refused(run("bench", "--warmup", 10**9, "--out", tmp_path / "b"), "--warmup must be <= 10000")
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- eval RUN_DIR
@pytest.fixture(scope="module")
def tiny_run(synthetic_data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli_options") / "run"
    result = train(synthetic_data_root, out)
    assert result.exit_code == 0, result.output
    return out


def test_eval_takes_the_run_positionally(tiny_run):
    positional = run("eval", tiny_run, "--episodes", 3, "--quiet")
    option = run("eval", "--run", tiny_run, "--episodes", 3, "--quiet")
    both = run("eval", tiny_run, "--run", tiny_run, "--episodes", 3, "--quiet")
    assert positional.exit_code == option.exit_code == both.exit_code == 0, positional.output
    assert positional.output == option.output == both.output
    assert "accuracy" in positional.output


def test_eval_refuses_two_runs_or_none(tiny_run, tmp_path):
    refused(run("eval", tiny_run, "--run", tmp_path), "two run directories", "give one")
    refused(run("eval"), "l2l-app eval RUN_DIR")


@pytest.mark.parametrize("args,fragments", [
    (["--split", "tset"], ["--split 'tset' is not one of train, val, test", "did you mean 'test'?"]),
    (["--checkpoint", "bset"], ["--checkpoint 'bset'", "did you mean 'best'?"]),
    (["--engine", "batchd"], ["did you mean 'batched'?"]),
])
def test_eval_choices_suggest(tiny_run, args, fragments):
    refused(run("eval", tiny_run, *args), *fragments)


# ----------------------------------------------------------------------------- help
def help_text(*args) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=400, max_content_width=400)
    assert result.exit_code == 0, result.output
    return result.output


def option_line(text: str, option: str) -> str:
    """The --help entry of `option`, joined into one line (a long option name puts its help below it)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"  {re.escape(option)}([ ,/\[]|$)", line)]
    assert len(starts) == 1, (option, starts)
    entry = [lines[starts[0]]]
    for line in lines[starts[0] + 1:]:
        if not line.startswith("   "):  # the next option (two spaces), a section title or a blank line
            break
        entry.append(line.strip())
    return " ".join(entry)


def test_no_arguments_prints_the_help():
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:") and "train" in result.output and "eval" in result.output
    assert result.stderr == ""


def test_train_help_shows_every_default():
    text = help_text("train")
    for option, default in [("--ways", "5"), ("--shots", "1"), ("--queries", "15"), ("--hidden", "64"),
                            ("--algo", "protonet"), ("--iterations", "1000"),
                            ("--inner-steps", "1"), ("--inner-batch", "10"), ("--seed", "0"),
                            ("--first-order", "second-order"), ("--tf32", "no-tf32"), ("--log-every", "100"),
                            ("--tensorboard", "no-tensorboard"), ("--train-ways", "--ways"),
                            ("--engine", "auto")]:
        assert f"[default: {default}]" in option_line(text, option), option
    inner_lr = option_line(text, "--inner-lr")  # per algorithm, grouped by value
    assert re.search(r"\[default: [^]]*\bmaml\b[^;\]]* 0\.4\b", inner_lr) and "reptile 0.001" in inner_lr, inner_lr
    meta_lr = option_line(text, "--meta-lr")  # the algorithm's meta-optimiser's: Adam's rate, Reptile's epsilon
    assert re.search(r"\[default: [^]]*\bprotonet 0\.001; reptile 1\]", meta_lr), meta_lr
    settings = [m for m in re.findall(r"^  (--[a-z0-9-]+)", text, re.M)
                if m not in ("--recipe", "--config", "--out", "--resume", "--overwrite", "--quiet", "--help")]
    assert len(settings) > 40
    for option in settings:
        assert "[default: " in option_line(text, option), option


def test_help_shows_the_choices():
    text = help_text("train")
    algos = "|".join(ALGORITHMS.names()) + "|fomaml"
    for option, choices in [("--algo", algos), ("--dataset", "|".join(DATASETS.names())),
                            ("--sampler", "auto|l2l|tensor"), ("--backbone", "|".join(BACKBONES.names())),
                            ("--engine", "auto|loop|batched"), ("--inner-optimizer", "adam|sgd")]:
        assert f"{option} [{choices}]" in option_line(text, option)
    assert "--device TEXT" in option_line(text, "--device")  # free text: cuda:N
    text = help_text("eval")
    assert "--split [train|val|test]" in option_line(text, "--split")
    assert "--checkpoint [best|last]" in option_line(text, "--checkpoint")


def test_train_help_groups_the_options():
    text = help_text("train")
    titles = ["Experiment:", "Data:", "Episodes:", "Model:", "Algorithm settings:", "Meta-optimiser:", "Run:",
              "Run directory:"]
    positions = [text.index(f"\n{t}\n") for t in titles]
    assert positions == sorted(positions)
    sections = dict(zip(titles, re.split(r"\n(?:" + "|".join(map(re.escape, titles)) + r")\n", text)[1:]))
    for title, option in [("Data:", "--data-root"), ("Episodes:", "--train-queries"), ("Model:", "--backbone"),
                          ("Algorithm settings:", "--inner-lr"), ("Meta-optimiser:", "--lr-decay-every"),
                          ("Run:", "--log-every"), ("Run:", "--tensorboard"), ("Run directory:", "--overwrite"),
                          ("Experiment:", "--config")]:
        assert re.search(rf"^  {option}\b", sections[title], re.M), (title, option)
    assert "(reptile only)" in option_line(text, "--inner-batch")


def test_unknown_choices_suggest_one_line(tmp_path):
    refused(run("train", "--algo", "mamll", "--out", tmp_path / "r"), "--algo 'mamll'", "did you mean 'maml'?")
    refused(run("train", "--engine", "batchd", "--out", tmp_path / "r"), "did you mean 'batched'?")
    refused(run("train", "--inner-optimizer", "adamw", "--algo", "reptile", "--out", tmp_path / "r"),
            "did you mean 'adam'?")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- mini-ImageNet root one level deep
def jpegs(folder: Path, n: int = 3) -> Path:
    from PIL import Image
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (84, 84), (i * 40, 0, 0)).save(folder / f"n0153282900000{i:03d}.jpg")
    return folder


def test_miniimagenet_images_folder_itself_suggests_its_parent(tmp_path):
    images = jpegs(tmp_path / "mini-imagenet" / "images")
    err = refused(run("train", "--dataset", "miniimagenet", "--data-root", images, "--device", "cpu",
                      "--out", tmp_path / "run"),
                  f"--data-root {tmp_path / 'mini-imagenet'}", "images/ folder itself")
    assert "that folder" not in err
    assert not (tmp_path / "run").exists()


def test_miniimagenet_folder_of_jpegs_and_empty_folder(tmp_path):
    loose = jpegs(tmp_path / "loose")
    refused(run("train", "--dataset", "miniimagenet", "--data-root", loose, "--out", tmp_path / "run"),
            "holds the JPEGs itself", f"move them into {loose / 'images'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(run("train", "--dataset", "miniimagenet", "--data-root", empty, "--out", tmp_path / "run"),
            "the folder that contains images/")
