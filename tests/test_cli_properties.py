"""Property tests of the numeric options of `l2l-app train`: any invalid value is refused with one
line on stderr (exit 2) that names the flag; any valid combination trains.

Runs use the synthetic Omniglot root (train 16 classes, val 8 classes, 20 images per class), hidden 8
and one step, so an example takes well under a second.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2l_app.cli import cli

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BASE = ["--hidden", "8", "--iterations", "1", "--val-every", "1", "--val-episodes", "1", "--device", "cpu",
        "--quiet"]
VAL_CLASSES, PER_CLASS = 8, 20


pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(root: Path, *args) -> tuple:
    with tempfile.TemporaryDirectory() as d:
        r = CliRunner().invoke(cli, ["train", "--data-root", str(root), "--out", str(Path(d) / "run"), *BASE,
                                     *map(str, args)])
        return r.exit_code, r.stderr.strip(), r.output


def _fmt(v) -> str:
    return repr(v) if isinstance(v, float) and math.isfinite(v) else str(v)


# (flag, invalid values).  Integer options: below their minimum; rates: not a positive finite number.
INVALID = {
    "--ways": st.integers(-5, 1) | st.integers(VAL_CLASSES + 1, 10_000),
    "--shots": st.integers(-5, 0) | st.integers(PER_CLASS, 10_000),
    "--queries": st.integers(-5, 0) | st.integers(PER_CLASS, 10_000),
    "--meta-batch": st.integers(-1000, 0),
    "--inner-steps": st.integers(-1000, -1),
    "--test-inner-steps": st.integers(-1000, -1),
    "--inner-lr": st.floats(max_value=0.0) | st.sampled_from([math.inf, -math.inf, math.nan]),
    "--meta-lr": st.floats(max_value=0.0) | st.sampled_from([math.inf, -math.inf, math.nan]),
}
NOT_A_NUMBER = st.sampled_from(["five", "1.5e", "", "0x10", "1,5"])


@SETTINGS
@given(data=st.data())
def test_invalid_numbers_are_refused_naming_the_flag(synthetic_data_root, data):
    flag = data.draw(st.sampled_from(sorted(INVALID)), label="flag")
    value = data.draw(INVALID[flag], label="value")
    algo = "maml" if flag in ("--inner-lr", "--inner-steps", "--test-inner-steps") else "protonet"
    code, err, out = invoke(synthetic_data_root, "--algo", algo, flag, _fmt(value))
    assert code == 2, out
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in out, err
    assert flag in err, err


@SETTINGS
@given(flag=st.sampled_from(sorted(INVALID)), text=NOT_A_NUMBER)
def test_non_numbers_are_refused_naming_the_flag(synthetic_data_root, flag, text):
    code, err, out = invoke(synthetic_data_root, flag, text)
    assert code == 2, out
    assert err.startswith("error: ") and "\n" not in err, err
    assert flag in err and "is not a valid" in err, err


@settings(SETTINGS, max_examples=10)
@given(algo=st.sampled_from(["protonet", "maml"]), ways=st.integers(2, 5), shots=st.integers(1, 3),
       queries=st.integers(1, 3), meta_batch=st.integers(1, 2), inner_steps=st.integers(1, 2),
       test_inner_steps=st.integers(0, 2),
       inner_lr=st.floats(1e-4, 0.5), meta_lr=st.floats(1e-5, 1e-1))
def test_valid_numbers_train(synthetic_data_root, algo, ways, shots, queries, meta_batch, inner_steps,
                             test_inner_steps, inner_lr, meta_lr):
    code, err, out = invoke(synthetic_data_root, "--algo", algo, "--ways", ways, "--shots", shots,
                            "--queries", queries, "--meta-batch", meta_batch, "--inner-steps", inner_steps,
                            "--test-inner-steps", test_inner_steps, "--inner-lr", repr(inner_lr),
                            "--meta-lr", repr(meta_lr))
    assert code == 0, err
    assert "trained 1 steps" in out
