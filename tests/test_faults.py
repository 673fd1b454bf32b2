"""Faults seen from the command line: broken or hostile checkpoints, a diverging run, a full disk,
and checkpoints written at the requested steps.  Every failure is one line with the right exit code,
and no earlier checkpoint is lost."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from l2l_app import checkpoint as checkpoint_module
from l2l_app import trainer as trainer_module
from l2l_app.cli import cli

TINY = ["--algo", "protonet", "--hidden", "8", "--ways", "5", "--shots", "1", "--queries", "2",
        "--meta-batch", "1", "--val-every", "100", "--val-episodes", "2", "--device", "cpu", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def ckpt(run_dir: Path, name: str = "last") -> dict:
    return torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)


@pytest.fixture
def trained(synthetic_data_root, tmp_path) -> Path:
    """A finished 3-step run (last.pt and best.pt)."""
    out = tmp_path / "run"
    result = run("train", "--data-root", synthetic_data_root, "--out", out, "--iterations", 3, *TINY)
    assert result.exit_code == 0, result.output
    return out


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_broken_checkpoint_is_one_line_naming_the_file(trained, damage):
    for name, args in (("best", ("eval", "--run", trained, "--episodes", 2, "--quiet")),
                       ("last", ("eval", "--run", trained, "--checkpoint", "last", "--episodes", 2, "--quiet")),
                       ("last", ("train", "--resume", trained, "--iterations", 5, "--quiet"))):
        path = trained / "checkpoints" / f"{name}.pt"
        good = path.read_bytes()
        path.write_bytes({"truncate": good[: len(good) // 2], "garbage": os.urandom(512), "empty": b""}[damage])
        one_line_error(run(*args), 2, str(path), "truncated or corrupted")
        path.write_bytes(good)
    assert ckpt(trained)["step"] == 3  # nothing was overwritten by the failed resume


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (MARKER,))


MARKER = ""


def test_checkpoint_with_pickled_code_is_refused_not_run(trained):
    global MARKER
    MARKER = str(trained / "pwned")
    state = ckpt(trained)
    torch.save({**state, "payload": _Payload()}, trained / "checkpoints" / "last.pt")
    for args in (("eval", "--run", trained, "--checkpoint", "last", "--episodes", 2, "--quiet"),
                 ("train", "--resume", trained, "--iterations", 5, "--quiet")):
        one_line_error(run(*args), 2, "refusing to load", str(trained / "checkpoints" / "last.pt"))
    assert not os.path.exists(MARKER)


def _saves(monkeypatch) -> list:
    """Record (name, step) of every Trainer.save."""
    calls = []
    real = trainer_module.Trainer.save

    def save(self, name):
        calls.append((name, self.step))
        return real(self, name)

    monkeypatch.setattr(trainer_module.Trainer, "save", save)
    return calls


def test_checkpoint_every_n_steps(synthetic_data_root, tmp_path, monkeypatch):
    calls = _saves(monkeypatch)
    result = run("train", "--data-root", synthetic_data_root, "--out", tmp_path / "a", "--iterations", 8,
                 "--checkpoint-every", 3, *TINY)
    assert result.exit_code == 0, result.output
    assert [s for n, s in calls if n == "last"] == [3, 6, 8]  # every 3 steps, and at the end
    assert ckpt(tmp_path / "a")["step"] == 8
    calls.clear()
    # --checkpoint-minutes 0: every step is due by time as well.
    result = run("train", "--data-root", synthetic_data_root, "--out", tmp_path / "b", "--iterations", 4,
                 "--checkpoint-every", 100, "--checkpoint-minutes", 0, *TINY)
    assert result.exit_code == 0, result.output
    assert [s for n, s in calls if n == "last"] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- training faults


@pytest.mark.parametrize("flag,step", [("--meta-lr", 2), ("--inner-lr", 1)])
def test_diverging_run_stops_with_exit_1(synthetic_data_root, tmp_path, flag, step):
    """A learning rate of 1e30 really diverges: ProtoNet's first Adam step blows the weights up
    (NaN at step 2); MAML's inner step overflows at once (step 1)."""
    out = tmp_path / "run"
    algo = "protonet" if flag == "--meta-lr" else "maml"
    tiny = [a if a != "protonet" else algo for a in TINY]
    result = run("train", "--data-root", synthetic_data_root, "--out", out, "--iterations", 6,
                 "--checkpoint-every", 1, flag, 1e30, *tiny)
    err = one_line_error(result, 1, f"loss became nan at step {step}", "--skip-nonfinite")
    if step > 1:
        assert f"keeping the last good checkpoint in {out / 'checkpoints' / 'last.pt'}" in err
        state = ckpt(out)
        assert state["step"] == step - 1
        assert all(torch.isfinite(v).all() for v in state["learner"]["model"].values() if v.is_floating_point())
    else:
        assert "no checkpoint had been written yet" in err
    # --skip-nonfinite: the run goes on and reports the skipped steps.
    result = run("train", "--data-root", synthetic_data_root, "--out", tmp_path / "skip", "--iterations", 4,
                 "--skip-nonfinite", flag, 1e30, *tiny)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "non-finite loss" in result.output


def test_disk_full_while_checkpointing(synthetic_data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save
    writes = {"last": 0}

    def target(f) -> str:
        """The file a torch.save writes to (atomic_write hands it an fdopen'ed temporary file)."""
        try:
            return os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}"))
        except (AttributeError, OSError, ValueError):
            return str(f)

    def save(obj, f, *a, **kw):
        if not target(f).startswith(".last.pt."):
            return real_save(obj, f, *a, **kw)
        writes["last"] += 1
        if writes["last"] == 3:  # the third last.pt write: half the bytes, then the disk is full
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    result = run("train", "--data-root", synthetic_data_root, "--out", out, "--iterations", 6,
                 "--checkpoint-every", 1, *TINY)
    path = out / "checkpoints" / "last.pt"
    one_line_error(result, 2, "No space left on device", str(path), "the previous one is kept")
    assert ckpt(out)["step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_disk_full_while_logging_then_resume(synthetic_data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_open = open
    lines = {"n": 0}

    def fake_open(file, mode="r", *a, **kw):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            lines["n"] += 1
            if lines["n"] == 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(trainer_module, "open", fake_open, raising=False)
    result = run("train", "--data-root", synthetic_data_root, "--out", out, "--iterations", 6,
                 "--checkpoint-every", 1, *TINY)
    one_line_error(result, 2, "No space left on device", str(out / "metrics.jsonl"), f"--resume {out}")
    assert ckpt(out)["step"] == 3
    monkeypatch.undo()  # space freed
    result = run("train", "--resume", out, "--quiet")
    assert result.exit_code == 0, result.output
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
