"""A real `l2l-app train` process killed mid-run (SIGKILL: no handler runs) and resumed ends bit-for-bit
where the uninterrupted run ends; SIGTERM finishes the step, checkpoints, exits 143 and says how to resume.

Each run is a subprocess on the synthetic Omniglot root (hidden 8, 5-way 1-shot, 12 MAML steps), so
the test sees exactly what a user sees: a separate interpreter, a fresh import, the CLI's exit code.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

#: real processes, killed and resumed: learning-free, but each test costs 10-45 s of training
pytestmark = pytest.mark.training

ITERATIONS = 12
ARGS = ["--algo", "maml", "--hidden", "8", "--ways", "5", "--shots", "1", "--queries", "5",
        "--meta-batch", "4", "--iterations", str(ITERATIONS), "--checkpoint-every", "1",
        "--val-every", "4", "--val-episodes", "4", "--seed", "5", "--device", "cpu", "--quiet"]
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def train(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "l2l_app.cli", "train", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def last_step(run_dir: Path) -> int:
    """The highest train step in metrics.jsonl (0 if none yet); tolerates a half-written line."""
    try:
        text = (run_dir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in text.splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return max(steps)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, k: int, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step = last_step(run_dir)
        if step >= k:
            return step
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before step {k}: {proc.stderr.read()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no step {k} within {timeout} s")


def checkpoint(run_dir: Path, name: str = "last") -> dict:
    return torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)


def log_without_time(run_dir: Path) -> list:
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("time")
    return lines


@pytest.fixture(scope="module")
def straight(synthetic_data_root, tmp_path_factory) -> Path:
    """The uninterrupted reference run."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    code, out, err = finish(train("--data-root", str(synthetic_data_root), "--out", str(run_dir), *ARGS))
    assert code == 0, err
    assert f"trained {ITERATIONS} steps" in out
    return run_dir


def test_sigkill_then_resume_is_bit_identical(straight, synthetic_data_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = train("--data-root", str(synthetic_data_root), "--out", str(run_dir), *ARGS)
    seen = wait_for_step(proc, run_dir, 4)
    os.kill(proc.pid, signal.SIGKILL)
    code, _, _ = finish(proc)
    assert code == -signal.SIGKILL
    killed_at = checkpoint(run_dir)["step"]
    assert seen - 1 <= killed_at < ITERATIONS, (seen, killed_at)  # really killed mid-run

    code, out, err = finish(train("--resume", str(run_dir), "--quiet"))
    assert code == 0, err
    assert f"trained {ITERATIONS} steps" in out

    a, b = checkpoint(straight), checkpoint(run_dir)
    assert a["step"] == b["step"] == ITERATIONS
    assert a["learner"]["model"].keys() == b["learner"]["model"].keys()
    for name in a["learner"]["model"]:
        assert torch.equal(a["learner"]["model"][name], b["learner"]["model"][name]), name
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)
    # The log has every step exactly once and the same numbers (wall time aside).
    assert log_without_time(run_dir) == log_without_time(straight)
    assert checkpoint(run_dir, "best")["best_step"] == checkpoint(straight, "best")["best_step"]


def test_sigterm_checkpoints_and_says_how_to_resume(synthetic_data_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = train("--data-root", str(synthetic_data_root), "--out", str(run_dir), *ARGS)
    wait_for_step(proc, run_dir, 3)
    os.kill(proc.pid, signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 128 + signal.SIGTERM == 143, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: stopped by signal 15 after step ")
    assert f"continue with `l2l-app train --resume {run_dir}`" in message
    stopped_at = int(message.split("after step ")[1].split(";")[0])
    assert 3 <= stopped_at < ITERATIONS
    assert checkpoint(run_dir)["step"] == stopped_at  # the step it finished is the one saved
    assert last_step(run_dir) == stopped_at


def test_a_second_process_is_refused_and_a_killed_runs_lock_is_released(synthetic_data_root, tmp_path):
    """Two processes never train in one run directory; the lock dies with its process."""
    run_dir = tmp_path / "run"
    first = train("--data-root", str(synthetic_data_root), "--out", str(run_dir), *ARGS, "--iterations", "100000")
    wait_for_step(first, run_dir, 2)
    second_tries = {
        "resume": ["--resume", str(run_dir)],
        "overwrite": ["--data-root", str(synthetic_data_root), "--out", str(run_dir), *ARGS, "--overwrite"],
        "same --out": ["--data-root", str(synthetic_data_root), "--out", str(run_dir), *ARGS],
    }
    for what, args in second_tries.items():
        code, out, err = finish(train(*args))
        assert code == 2, (what, err)
        assert len(err.strip().splitlines()) == 1, (what, err)
        assert f"run directory {run_dir} is in use by process {first.pid}" in err, (what, err)
    assert first.poll() is None  # the first run was not disturbed
    os.kill(first.pid, signal.SIGKILL)
    finish(first)
    killed_at = checkpoint(run_dir)["step"]
    code, out, err = finish(train("--resume", str(run_dir), "--iterations", str(killed_at + 2)))
    assert code == 0, err
    assert checkpoint(run_dir)["step"] == killed_at + 2
    assert last_step(run_dir) == killed_at + 2
