"""Config: defaults validate, every invalid value is named by its flag, round trips are exact."""
import dataclasses

import pytest

from l2l_app.config import (ExperimentConfig, FIELD_GROUP, flag, from_dict, validate, with_overrides)
from l2l_app.errors import ConfigError


def test_defaults_validate():
    assert validate(ExperimentConfig()).algorithm.algo == "protonet"


def test_every_setting_has_one_flat_name():
    flat = ExperimentConfig().flat()
    assert set(flat) == set(FIELD_GROUP)


@pytest.mark.parametrize("name,value,expected", [
    ("ways", 1, "--ways must be >= 2"),
    ("shots", 0, "--shots must be >= 1"),
    ("queries", -3, "--queries must be >= 1"),
    ("meta_batch", 0, "--meta-batch must be >= 1"),
    ("iterations", 2.5, "--iterations must be a whole number"),
    ("inner_lr", 0.0, "--inner-lr must be a positive number"),
    ("meta_lr", float("nan"), "--meta-lr must be a positive number"),
    ("inner_steps", -1, "--inner-steps must be >= 0"),
    ("algo", "mamll", "--algo 'mamll' is not one of protonet, maml, reptile; did you mean 'maml'?"),
    ("engine", "fast", "--engine 'fast' is not one of auto, loop, batched"),
    ("dataset", "omniglott", "did you mean 'omniglot'?"),
    ("inner_optimizer", "rmsprop", "--inner-optimizer 'rmsprop' is not one of adam, sgd"),
])
def test_invalid_values_name_their_flag(name, value, expected):
    config = with_overrides(ExperimentConfig(), {name: value})
    with pytest.raises(ConfigError) as err:
        validate(config)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_all_problems_reported_at_once():
    config = with_overrides(ExperimentConfig(), {"ways": 1, "shots": 0})
    with pytest.raises(ConfigError) as err:
        validate(config)
    assert "--ways" in str(err.value) and "--shots" in str(err.value)


def test_maml_output_layer_needs_same_train_and_test_ways():
    config = with_overrides(ExperimentConfig(), {"algo": "maml", "ways": 5, "train_ways": 20})
    with pytest.raises(ConfigError, match="--train-ways must equal --ways"):
        validate(config)


def test_unknown_override_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean --inner-lr"):
        with_overrides(ExperimentConfig(), {"inner_lrr": 0.1})


def test_round_trip_and_derived_settings():
    config = with_overrides(ExperimentConfig(), {"ways": 20, "train_ways": 60, "inner_steps": 5,
                                                 "algo": "maml", "recipe": "x"})
    again = from_dict(config.to_dict())
    assert again == config
    assert again.train_ways == 60 and again.train_shots == config.task.shots
    assert again.test_inner_steps == 5
    assert dataclasses.replace(again.algorithm, test_inner_steps=10) != again.algorithm


def test_flag_names():
    assert flag("inner_lr") == "--inner-lr"


def test_auto_engine_never_picks_the_slower_measured_engine():
    import torch
    from l2l_app.registry import resolve_engine
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_engine("maml", "auto", cpu, 32) == "loop"
    assert resolve_engine("reptile", "auto", cpu, 5) == "loop"
    assert resolve_engine("reptile", "auto", cuda, 5) == "batched"
    assert resolve_engine("maml", "auto", cuda, 32) == "batched"
    assert resolve_engine("maml", "auto", cuda, 1) == "loop"
    assert resolve_engine("protonet", "batched", cpu, 1) == "batched"


def test_inner_lr_default_depends_on_the_algorithm():
    maml = with_overrides(ExperimentConfig(), {"algo": "maml"})
    reptile = with_overrides(ExperimentConfig(), {"algo": "reptile"})
    assert (maml.inner_lr, reptile.inner_lr) == (0.4, 1e-3)
    assert with_overrides(ExperimentConfig(), {"algo": "reptile", "inner_lr": 0.01}).inner_lr == 0.01
