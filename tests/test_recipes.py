"""Every recipe loads, validates and carries its published number; unknown names are helpful."""
import pytest
from click.testing import CliRunner

from l2l_app.cli import cli
from l2l_app.config import ExperimentConfig, applies, compose, resolve, validate, with_overrides
from l2l_app.errors import ConfigError
from l2l_app.recipes import find_published, load_recipe, recipe_names

REQUIRED = {"maml-omniglot-5w1s", "maml-omniglot-20w1s", "maml-miniimagenet-5w1s", "maml-miniimagenet-5w5s",
            "fomaml-omniglot-5w1s", "reptile-omniglot-5w1s", "reptile-omniglot-5w5s",
            "protonet-omniglot-5w1s", "protonet-omniglot-5w5s", "protonet-miniimagenet-5w1s",
            "protonet-miniimagenet-5w5s"}


def test_required_recipes_exist():
    assert REQUIRED <= set(recipe_names())


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_loads_and_validates(name):
    recipe = load_recipe(name)
    config = validate(with_overrides(ExperimentConfig(), recipe.settings))
    assert config.algo in name
    assert config.data.dataset in name
    assert f"{config.task.ways}w{config.task.shots}s" in name
    assert 0 < recipe.reported_accuracy <= 100
    assert find_published(config.flat()) is not None


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_sets_only_what_its_algorithm_uses(name):
    """`--recipe NAME` alone is never refused, and its resolved config validates."""
    settings = load_recipe(name).settings
    assert [k for k in settings if not applies(k, settings["algo"])] == []
    assert name.startswith("fomaml") == bool(settings.get("first_order"))  # the name report.py shows
    resolved = resolve(compose({}, recipe=name))
    assert validate(resolved) == resolved and resolved.recipe == name


def test_published_hyperparameters():
    maml = load_recipe("maml-omniglot-5w1s").settings
    assert (maml["meta_batch"], maml["inner_steps"], maml["inner_lr"]) == (32, 1, 0.4)
    mini = load_recipe("maml-miniimagenet-5w5s").settings
    assert (mini["meta_batch"], mini["inner_steps"], mini["test_inner_steps"], mini["hidden"]) == (2, 5, 10, 32)
    rep = load_recipe("reptile-omniglot-5w1s").settings
    assert (rep["inner_optimizer"], rep["inner_lr"], rep["inner_steps"], rep["meta_batch"]) == ("adam", 1e-3, 5, 5)
    assert load_recipe("protonet-omniglot-5w1s").settings["train_ways"] == 60


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="did you mean 'maml-omniglot-5w1s'"):
        load_recipe("maml-omniglot-5w1")


def test_recipes_command_lists_all():
    result = CliRunner().invoke(cli, ["recipes"])
    assert result.exit_code == 0
    for name in recipe_names():
        assert name in result.output
    assert "98.7" in result.output
