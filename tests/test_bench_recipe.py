"""`l2l-app bench --recipe NAME` times exactly the meta-step the recipe trains."""
from __future__ import annotations

import json

import pytest

from conftest import cli_run, refused
from l2l_app.config import compose, resolve

pytestmark = pytest.mark.usefixtures("one_thread")

TIMING = ["--synthetic", "--impl", "loop", "--warmup", "0", "--repeats", "1", "--device", "cpu"]


@pytest.mark.parametrize("recipe", ["maml-omniglot-5w1s", "reptile-omniglot-5w1s", "protonet-omniglot-5w1s"])
def test_the_workload_is_the_recipes_training_step(tmp_path, recipe):
    # small overrides keep it fast; everything else must come from the recipe
    result = cli_run("bench", "--recipe", recipe, "--hidden", "8", "--meta-batch", "2", *TIMING, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "bench.json").read_text())["settings"]
    trained = resolve(compose({}, recipe=recipe))
    assert settings["recipe"] == recipe and settings["algo"] == trained.algo
    assert (settings["hidden"], settings["meta_batch"]) == (8, 2)  # the flags given override
    assert settings["backbone"] == trained.model.backbone
    assert (settings["ways"], settings["shots"], settings["queries"]) == \
        (trained.train_ways, trained.train_shots, trained.train_queries)  # the training shape, not eval's
    for name in trained.spec.setting_names():
        assert settings[name] == getattr(trained.algorithm, name), name
    header = (tmp_path / "bench.md").read_text().splitlines()[0]  # what was timed, said where it is read
    assert f"; {trained.model.backbone}, 8 filters (recipe `{recipe}`: its training step" in header


def test_an_algorithm_setting_given_overrides_the_recipe(tmp_path):
    result = cli_run("bench", "--recipe", "maml-omniglot-5w1s", "--inner-steps", "2", "--hidden", "8",
                     "--meta-batch", "2", *TIMING, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "bench.json").read_text())["settings"]
    assert settings["inner_steps"] == 2 and settings["inner_lr"] == 0.4 and settings["backbone"] == "conv4-strided"


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "bench"
    refused(cli_run("bench", "--recipe", "maml-omniglot-5w1s", "--algo", "protonet", *TIMING, "--out", out),
            "--recipe maml-omniglot-5w1s trains maml", "--algo protonet")
    refused(cli_run("bench", "--recipe", "maml-omniglot-5ws1", *TIMING, "--out", out), "maml-omniglot-5ws1")
    assert not out.exists()
