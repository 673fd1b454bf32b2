"""Property tests of the numeric options: over the whole range of every number (huge, negative,
nan, inf), `train` and `eval` either succeed or refuse with one line on stderr (exit 2) that names
the flag -- never a traceback -- and a refused train leaves nothing on disk.

Runs use the synthetic Omniglot root (train 16 classes, val 8, test 12, 20 images per class),
hidden 8 and one step, so an example takes a fraction of a second.  Where a *valid* value would
make a real run slow (hidden 1024, 10^5 tasks per step, 10^6 episodes), the trainer (or the
evaluation) is replaced by a stand-in that records what it was given.
"""
from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, List, Optional
from unittest import mock

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from l2l_app.cli import cli

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BASE = ["--hidden", "8", "--iterations", "1", "--val-every", "1", "--val-episodes", "1", "--device", "cpu",
        "--quiet", "--skip-nonfinite"]  # a huge learning rate may make the loss NaN: skip, do not stop
VAL_CLASSES, PER_CLASS = 8, 20
MAML, REPTILE, BATCHED = ["--algo", "maml"], ["--algo", "reptile"], ["--engine", "batched"]

pytestmark = pytest.mark.usefixtures("one_thread")

#: every numeric option of `train` -> the other flags under which it applies
TRAIN_CONTEXT = {
    "--ways": [], "--shots": [], "--queries": [], "--train-ways": [], "--train-shots": [], "--train-queries": [],
    "--hidden": [], "--inner-lr": MAML, "--inner-steps": MAML, "--test-inner-steps": MAML,
    "--inner-batch": REPTILE, "--meta-lr": [], "--meta-lr-final": REPTILE, "--meta-batch": [],
    "--iterations": ["--time-budget", "1e-9"],  # any number of iterations stops after one step
    "--grad-clip": [], "--lr-decay-every": [], "--lr-decay": ["--lr-decay-every", "1"], "--seed": [],
    "--chunk-size": BATCHED, "--max-memory": BATCHED, "--val-every": [], "--val-episodes": [],
    "--checkpoint-every": [], "--checkpoint-minutes": [], "--time-budget": [], "--log-every": [],
    "--image-size": [], "--channels": [], "--split-seed": [],  # omniglot takes the first two, not the third
}
EVAL_OPTIONS = ["--episodes", "--seed", "--ways", "--shots", "--queries"]
#: above these, a valid value runs against the stand-in (a real run would take seconds to hours)
SLOW_ABOVE = {"--hidden": 16, "--meta-batch": 4, "--val-episodes": 8, "--inner-steps": 3,
              "--test-inner-steps": 3, "--episodes": 20, "--image-size": 40}

#: tried first for every option: small values most options accept, a large one only some accept
#: (the stand-in runs it), and the top of the seed's range
EDGES = {int: (2, 1000, 2**63 - 1), float: (0.5, 1000.0, 1e308)}
WHOLE_INTS = st.one_of(st.integers(-3, 30), st.integers(31, 5000), st.integers(),
                       st.sampled_from([-2**63, 1024, 1025, 10**5, 10**6 + 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63,
                                        2**64, 10**40]))
WHOLE_FLOATS = st.one_of(st.floats(), st.floats(0, 2),
                         st.sampled_from([0.0, -0.0, 5e-324, 1e308, math.inf, -math.inf, math.nan]))


def numeric_options(command: click.Command) -> dict:
    """{flag: int or float} for every INTEGER/FLOAT option of `command`."""
    kinds = {click.types.IntParamType: int, click.types.FloatParamType: float}
    return {p.opts[0]: kinds[type(p.type)] for p in command.params
            if isinstance(p, click.Option) and type(p.type) in kinds}


def over_whole_range(kind: type) -> Callable[[Callable], Callable]:
    """@given(value=...) over the whole range of `kind`, with the EDGES tried first."""
    def decorate(check: Callable) -> Callable:
        check = given(value=WHOLE_INTS if kind is int else WHOLE_FLOATS)(check)
        for value in EDGES[kind]:
            check = example(value=value)(check)
        return settings(SETTINGS, max_examples=7)(check)
    return decorate


def text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def cannot_be_valid(value: Any) -> bool:
    """No numeric option accepts these: negative numbers, nan/inf, integers beyond 64 bits."""
    if isinstance(value, float):
        return not math.isfinite(value) or value < 0
    return value < 0 or value >= 2**63


class Recorder:
    """Stands in for Trainer / evaluate_run where a valid value would make a real run slow."""

    def __init__(self) -> None:
        self.calls: List[Any] = []

    def trainer(self, config: Any, run_dir: Path, **kwargs: Any) -> SimpleNamespace:
        self.calls.append(config)
        return SimpleNamespace(fit=lambda: SimpleNamespace(describe=lambda *a: "trained 1 steps (stand-in)"),
                               engine="loop", sampler="l2l", device="cpu", learner=None)

    def evaluate_run(self, run_dir: Path, **kwargs: Any) -> SimpleNamespace:
        self.calls.append(kwargs)
        protocol = dict(dataset="omniglot", split="test", ways=5, shots=1, queries=1, checkpoint="best",
                        batchnorm="-", file="eval.json")
        return SimpleNamespace(protocol=protocol)


def slow(flag: str, value: Any) -> bool:
    """Whether a real run with this (possibly valid) value would be slow."""
    return flag in SLOW_ABOVE and not cannot_be_valid(value) and value > SLOW_ABOVE[flag]


def assert_refused_naming(code: int, err: str, out: str, flag: str) -> None:
    assert code == 2, out
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in out, err
    assert flag in err, err


def invoke(args: List[str], stand_in: Optional[str] = None) -> tuple:
    """(exit code, stderr, output, what the stand-in received or None) of `l2l-app ARGS`."""
    recorder = Recorder()
    patches = {"trainer": mock.patch("l2l_app.trainer.Trainer", recorder.trainer),
               "eval": mock.patch("l2l_app.evaluation.evaluate_run", recorder.evaluate_run)}
    with patches[stand_in] if stand_in else contextlib.nullcontext():
        r = CliRunner().invoke(cli, args)
    return r.exit_code, r.stderr.strip(), r.output, (recorder.calls[-1] if recorder.calls else None)


def test_every_numeric_option_is_covered():
    from l2l_app.cli import eval_cmd, train
    assert set(numeric_options(train)) == set(TRAIN_CONTEXT)
    assert set(numeric_options(eval_cmd)) == set(EVAL_OPTIONS)


@pytest.mark.parametrize("flag", sorted(TRAIN_CONTEXT))
def test_train_option_over_its_whole_range(synthetic_data_root, flag):
    from l2l_app.cli import train
    kind = numeric_options(train)[flag]

    @over_whole_range(kind)
    def check(value):
        with tempfile.TemporaryDirectory() as d:
            out_dir = Path(d) / "run"
            args = ["train", "--data-root", str(synthetic_data_root), "--out", str(out_dir), *BASE,
                    *TRAIN_CONTEXT[flag], flag, text(value)]
            code, err, out, received = invoke(args, "trainer" if slow(flag, value) else None)
            event(f"exit {code}" + (" (stand-in)" if received is not None else ""))
            if code == 0:
                assert not cannot_be_valid(value), out
                assert "trained 1 steps" in out and "Traceback" not in out, out
                if received is not None:  # the stand-in got the value as given
                    assert received.flat()[flag[2:].replace("-", "_")] == value
            else:
                assert_refused_naming(code, err, out, flag)
                assert not out_dir.exists(), "a refused train created its run directory"

    check()


@pytest.fixture(scope="module")
def trained_run(synthetic_data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_props") / "run"
    r = CliRunner().invoke(cli, ["train", "--data-root", str(synthetic_data_root), "--out", str(out), *BASE])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("flag", EVAL_OPTIONS)
def test_eval_option_over_its_whole_range(trained_run, flag):
    @over_whole_range(int)
    def check(value):
        args = ["eval", str(trained_run), "--episodes", "2", "--quiet", flag, text(value)]
        code, err, out, received = invoke(args, "eval" if slow(flag, value) else None)
        event(f"exit {code}" + (" (stand-in)" if received is not None else ""))
        if code == 0:
            assert not cannot_be_valid(value), out
            assert "Traceback" not in out, out
            if received is not None:
                assert received[flag[2:]] == value
            else:
                assert "accuracy" in out
        else:
            assert_refused_naming(code, err, out, flag)

    check()


NOT_A_NUMBER = st.sampled_from(["five", "1.5e", "", "0x10", "1,5"])


@SETTINGS
@given(flag=st.sampled_from(sorted(TRAIN_CONTEXT)), value=NOT_A_NUMBER)
def test_non_numbers_are_refused_naming_the_flag(synthetic_data_root, flag, value):
    code, err, out, _ = invoke(["train", "--data-root", str(synthetic_data_root), "--out", "unused", *BASE,
                                flag, value])
    assert_refused_naming(code, err, out, flag)
    assert "is not a valid" in err, err


@settings(SETTINGS, max_examples=8)
@given(algo=st.sampled_from(["protonet", "maml", "reptile"]), ways=st.integers(2, 5), shots=st.integers(1, 3),
       queries=st.integers(1, 3), meta_batch=st.integers(1, 2), inner_steps=st.integers(1, 2),
       test_inner_steps=st.integers(0, 2), inner_lr=st.floats(1e-4, 0.5), meta_lr=st.floats(1e-5, 1e-1))
def test_valid_numbers_train(synthetic_data_root, algo, ways, shots, queries, meta_batch, inner_steps,
                             test_inner_steps, inner_lr, meta_lr):
    inner = [] if algo == "protonet" else ["--inner-steps", inner_steps, "--test-inner-steps", test_inner_steps,
                                           "--inner-lr", repr(inner_lr)]
    with tempfile.TemporaryDirectory() as d:
        code, err, out, _ = invoke(["train", "--data-root", str(synthetic_data_root), "--out", str(Path(d) / "r"),
                                    *BASE, "--algo", algo, "--ways", str(ways), "--shots", str(shots),
                                    "--queries", str(queries), "--meta-batch", str(meta_batch),
                                    "--meta-lr", repr(meta_lr), *map(str, inner)])
    assert code == 0, err
    assert "trained 1 steps" in out
