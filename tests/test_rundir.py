"""The run directory, as a user meets it through `l2l-app train/eval`: a refused command changes
nothing on disk, `--overwrite` never loses the old run before the new one has a checkpoint, resume
accepts what does not change the run and says when there is nothing to do, and evaluations are
kept one file per protocol and marked stale when their checkpoint changes."""
from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Dict

import pytest
import torch
from click.testing import CliRunner

from l2l_app import rundir
from l2l_app.cli import cli
from l2l_app.config import ExperimentConfig, with_overrides
from l2l_app.errors import CheckpointError
from l2l_app.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["--hidden", "8", "--ways", "5", "--shots", "1", "--queries", "2", "--iterations", "4",
        "--val-every", "2", "--val-episodes", "2", "--checkpoint-every", "2", "--device", "cpu", "--quiet"]


def run_cli(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def snapshot(path: Path) -> Dict[str, bytes]:
    """Every file below `path` (hidden ones included) with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def trained(synthetic_data_root, tmp_path) -> Path:
    """A finished 4-step ProtoNet run with one evaluation."""
    run = tmp_path / "runs" / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *ARGS)
    assert code == 0, err
    code, _, err = run_cli("eval", "--run", run, "--episodes", "4", "--quiet")
    assert code == 0, err
    return run


BAD_OPTIONS = {
    "invalid number": ["--ways", "0"],
    "unknown algorithm": ["--algo", "nope"],
    "more ways than classes": ["--ways", "40"],
    "more shots + queries than images": ["--shots", "15", "--queries", "10"],
}


# ------------------------------------------------------------------------------ refused = untouched
@pytest.mark.parametrize("what", list(BAD_OPTIONS))
def test_refused_overwrite_leaves_the_old_run_byte_identical(trained, synthetic_data_root, what):
    before, around = snapshot(trained), sorted(p.name for p in trained.parent.iterdir())
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", trained, *ARGS, "--overwrite",
                           *BAD_OPTIONS[what])
    one_line_error(code, err)
    assert snapshot(trained) == before
    assert sorted(p.name for p in trained.parent.iterdir()) == around  # no staging folder left beside it


def test_refused_overwrite_with_a_missing_data_root(trained, tmp_path):
    before = snapshot(trained)
    code, _, err = run_cli("train", "--data-root", tmp_path / "nowhere", "--out", trained, *ARGS, "--overwrite")
    assert "nowhere" in one_line_error(code, err)
    assert snapshot(trained) == before


@pytest.mark.parametrize("what", list(BAD_OPTIONS))
def test_a_refused_new_run_creates_nothing(synthetic_data_root, tmp_path, what):
    target = tmp_path / "a" / "b" / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", target, *ARGS, *BAD_OPTIONS[what])
    one_line_error(code, err)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("through", ["file", "/dev/null"])
def test_an_output_path_through_a_file_is_one_line(synthetic_data_root, tmp_path, through):
    blocker = tmp_path / "file" if through == "file" else Path("/dev/null")
    if through == "file":
        blocker.write_text("not a folder")
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", blocker / "x" / "run", *ARGS)
    assert f"{blocker} is a file, not a folder" in one_line_error(code, err)


def test_a_folder_that_cannot_be_created_is_one_line(synthetic_data_root, tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", tmp_path / "run", *ARGS)
    assert "cannot create run directory" in one_line_error(code, err)
    assert "Permission denied" in err


def test_a_full_disk_at_start_up_leaves_nothing_behind(synthetic_data_root, tmp_path, monkeypatch):
    def full(path, data):
        raise CheckpointError(f"could not write {path}: No space left on device")

    monkeypatch.setattr("l2l_app.trainer.write_json", full)
    target = tmp_path / "new" / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", target, *ARGS)
    assert "No space left on device" in one_line_error(code, err)
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------ --overwrite
def _config(root: Path, **kw) -> ExperimentConfig:
    settings = dict(data_root=str(root), hidden=8, ways=5, shots=1, queries=2, iterations=4, val_every=2,
                    val_episodes=2, checkpoint_every=2, device="cpu")
    return with_overrides(ExperimentConfig(), {**settings, **kw})


def test_overwrite_swaps_the_new_run_in_only_at_its_first_checkpoint(trained, synthetic_data_root):
    before = snapshot(trained)
    seen = {}

    def at_step(step, metrics):
        if step == 1:  # no checkpoint yet (every 2 steps): the old run must still be there
            seen["old intact"] = snapshot(trained) == before
            seen["beside"] = sorted(p.name for p in trained.parent.iterdir() if p.name != trained.name)

    Trainer(_config(synthetic_data_root, seed=3), trained, overwrite=True, progress=False, on_step=at_step).fit()
    assert seen["old intact"]
    assert len(seen["beside"]) == 1 and seen["beside"][0].startswith(".run.staging-")
    assert sorted(p.name for p in trained.parent.iterdir()) == ["run"]  # swapped, nothing left beside
    assert json.loads((trained / "config.json").read_text())["run"]["seed"] == 3
    assert not list(trained.glob("eval-*.json"))  # the old run's evaluation went with it
    steps = [json.loads(line)["step"] for line in (trained / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_overwrite_that_fails_before_its_first_checkpoint_keeps_the_old_run(trained, synthetic_data_root):
    before = snapshot(trained)

    def crash(step, metrics):
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        Trainer(_config(synthetic_data_root), trained, overwrite=True, progress=False, on_step=crash).fit()
    assert snapshot(trained) == before
    assert sorted(p.name for p in trained.parent.iterdir()) == ["run"]


def test_an_overwrite_stopped_by_a_signal_before_its_first_checkpoint_keeps_the_old_run(trained, synthetic_data_root):
    """Ctrl-C is what a user presses on seeing they overwrote the wrong run: before the new run's
    first checkpoint it discards the new run (no checkpoint is written for the signal) and keeps
    the old one byte for byte, saying so."""
    import os
    import signal
    from l2l_app.trainer import Interrupted
    before = snapshot(trained)

    def ctrl_c(step, metrics):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match=f"stopped by signal 2 after step 1, before this --overwrite run's first "
                                          f"checkpoint: the run in {trained} is kept as it was, and the new one "
                                          f"discarded"):
        Trainer(_config(synthetic_data_root), trained, overwrite=True, progress=False, on_step=ctrl_c).fit()
    assert snapshot(trained) == before
    assert sorted(p.name for p in trained.parent.iterdir()) == ["run"]


@pytest.mark.parametrize("existed", [False, True], ids=["new folder", "empty folder"])
def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing_and_can_start_again(
        synthetic_data_root, tmp_path, existed):
    """A run that fails before any checkpoint cannot be resumed, so it leaves nothing that would
    refuse the corrected command: the folders it created go (an empty folder it was given stays empty)."""
    run = tmp_path / "runs" / "run"
    if existed:
        run.mkdir(parents=True)

    def crash(step, metrics):
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        Trainer(_config(synthetic_data_root), run, progress=False, on_step=crash).fit()
    assert (sorted(p.name for p in run.iterdir() if p.name != ".lock") == [] if existed
            else not (tmp_path / "runs").exists())
    Trainer(_config(synthetic_data_root), run, progress=False).fit()
    assert (run / "checkpoints" / "last.pt").is_file()


def test_a_run_killed_before_its_first_checkpoint_is_named_as_such(synthetic_data_root, tmp_path):
    """What a kill (or a second Ctrl-C) before the first checkpoint leaves: the same command is
    refused with the one fix that works (--resume has nothing to resume), and that fix works."""
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *ARGS)
    assert code == 0, err
    for checkpoint in (run / "checkpoints").iterdir():
        checkpoint.unlink()
    metrics = run / "metrics.jsonl"  # killed before the first validation: training rows only
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if json.loads(line)["kind"] == "train" and json.loads(line)["step"] == 1))
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *ARGS)
    assert one_line_error(code, err) == (f"error: run directory {run} holds a run that wrote no checkpoint (it was "
                                         f"killed before its first); pass --overwrite to start it again")
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *ARGS, "--overwrite")
    assert code == 0, err


@pytest.mark.parametrize("left", ["metrics log", "evaluations"])
def test_a_run_whose_checkpoints_were_removed_is_not_called_killed(trained, tmp_path, left):
    """A run that validated or was evaluated had checkpoints: the message says they were removed,
    to restore them, and what --overwrite would discard."""
    run = trained
    shutil.rmtree(run / "checkpoints")
    if left == "evaluations":
        (run / "metrics.jsonl").write_text("")
    else:
        for evaluation in run.glob("eval-*.json"):
            evaluation.unlink()
    assert any(run.glob("eval-*.json")) == (left == "evaluations")
    before = snapshot(run)
    code, _, err = run_cli("train", "--resume", run)
    message = one_line_error(code, err)
    assert f"has no checkpoints, but its {left} show it had some" in message and "restore checkpoints/" in message
    assert "also replaces its metrics and evaluations" in message and snapshot(run) == before


def test_a_killed_overwrites_staging_folder_is_cleaned_by_the_next_one(trained, synthetic_data_root):
    abandoned = trained.parent / ".run.staging-99999999"
    abandoned.mkdir()
    (abandoned / "metrics.jsonl").write_text("")
    Trainer(_config(synthetic_data_root), trained, overwrite=True, progress=False).fit()
    assert sorted(p.name for p in trained.parent.iterdir()) == ["run"]


# ------------------------------------------------------------------------------ resume rules
def test_resume_accepts_the_runs_own_values_and_refuses_changes(trained):
    before = snapshot(trained)
    code, _, err = run_cli("train", "--resume", trained, "--val-episodes", "3", "--quiet")
    msg = one_line_error(code, err)
    assert "cannot change --val-episodes when resuming (the run has 2)" in msg
    assert snapshot(trained) == before
    code, out, err = run_cli("train", "--resume", trained, "--val-episodes", "2", "--hidden", "8",
                             "--iterations", "5", "--quiet")
    assert code == 0, err
    assert "trained 5 steps" in out


def test_resuming_a_finished_run_says_so_and_writes_nothing(trained):
    before = snapshot(trained)
    code, out, err = run_cli("train", "--resume", trained, "--quiet")
    assert code == 0, err
    assert "is complete (4 of 4 steps); nothing to do" in out
    assert "--iterations N (N > 4)" in out
    assert snapshot(trained) == before


def test_resume_refuses_iterations_below_the_current_step(trained):
    before = snapshot(trained)
    code, _, err = run_cli("train", "--resume", trained, "--iterations", "2", "--quiet")
    assert "--iterations 2 is below the step this run has reached (4); pass --iterations above 4" in \
        one_line_error(code, err)
    assert snapshot(trained) == before
    assert json.loads((trained / "config.json").read_text())["optim"]["iterations"] == 4


def test_resuming_a_run_whose_time_budget_is_spent_says_to_raise_it(synthetic_data_root, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *ARGS,
                             "--iterations", "1000", "--time-budget", "0.00001")
    assert code == 0, err
    assert "(time budget reached)" in out
    before = snapshot(run)
    code, out, err = run_cli("train", "--resume", run, "--quiet")
    assert code == 0, err
    assert "stopped at its time budget" in out and "--time-budget M" in out
    assert snapshot(run) == before


# ------------------------------------------------------------------------------ evaluations
def test_evaluations_are_keyed_by_protocol_and_marked_stale_when_the_checkpoint_changes(trained):
    first = trained / rundir.eval_file_name("test", "best", 5, 1, 2, 4, 1234)
    assert first.is_file()
    for extra in (["--queries", "5"], ["--checkpoint", "last"], ["--split", "val"], ["--seed", "7"]):
        code, _, err = run_cli("eval", "--run", trained, "--episodes", "4", "--quiet", *extra)
        assert code == 0, err
    names = sorted(p.name for p in trained.glob("eval-*.json"))
    assert names == sorted([first.name, rundir.eval_file_name("test", "best", 5, 1, 5, 4, 1234),
                            rundir.eval_file_name("test", "last", 5, 1, 2, 4, 1234),
                            rundir.eval_file_name("val", "best", 5, 1, 2, 4, 1234),
                            rundir.eval_file_name("test", "best", 5, 1, 2, 4, 7)])
    saved = json.loads(first.read_text())["protocol"]
    best_step = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)["step"]
    assert saved["checkpoint_step"] == best_step and saved["checkpoint_name"] == "best"
    assert saved["checkpoint"] == f"best (step {best_step})"
    assert saved["checkpoint_sha256"] == rundir.file_sha256(trained / "checkpoints" / "best.pt")
    last = json.loads((trained / rundir.eval_file_name("test", "last", 5, 1, 2, 4, 1234)).read_text())
    assert last["protocol"]["checkpoint_step"] == 4
    assert {e.status for e in rundir.list_evaluations(trained)} == {"current"}

    code, out, err = run_cli("train", "--resume", trained, "--iterations", "6", "--quiet")
    assert code == 0, err
    by_name = {e.path.name: e for e in rundir.list_evaluations(trained)}
    last = by_name[rundir.eval_file_name("test", "last", 5, 1, 2, 4, 1234)]
    assert last.status == "stale" and "changed since this evaluation (it evaluated step 4)" in last.reason
    assert "stale" in out  # train says so at the end
    # its refresh command recomputes it in place, and then it is current
    command = shlex.split(last.refresh)
    assert command[:2] == ["l2l-app", "eval"]
    code, _, err = run_cli(*command[1:], "--quiet")
    assert code == 0, err
    again = {e.path.name: e for e in rundir.list_evaluations(trained)}[last.path.name]
    assert again.status == "current" and again.protocol["checkpoint_step"] == 6


def test_an_evaluation_without_a_recorded_hash_is_unverified(trained):
    old_style = trained / "eval-test-best.json"
    old_style.write_text(json.dumps({"mean": 50.0, "ci95": 1.0, "protocol": {"split": "test", "ways": 5}}))
    status = {e.path.name: e.status for e in rundir.list_evaluations(trained)}
    assert status["eval-test-best.json"] == "unverified"


def test_resuming_a_run_logged_in_fractions_converts_its_log_to_percent(trained):
    """Runs of older versions logged training accuracy as a fraction; one log never mixes units."""
    metrics, info = trained / "metrics.jsonl", trained / "run.json"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    old_rows = [dict(r, accuracy=r["accuracy"] / 100) if r["kind"] == "train" else r for r in rows]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in old_rows))
    old_info = {k: v for k, v in json.loads(info.read_text()).items() if k != "accuracy_unit"}
    info.write_text(json.dumps(old_info))
    code, _, err = run_cli("train", "--resume", trained, "--iterations", "6", "--quiet")
    assert code == 0, err
    after = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in after if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    for before, now in zip(rows, after):
        if before["kind"] == "train":
            assert now["accuracy"] == pytest.approx(before["accuracy"], rel=1e-12)
    assert json.loads(info.read_text())["accuracy_unit"] == "%"


# ------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_scalars_match_the_metrics_log(synthetic_data_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *ARGS, "--tensorboard")
    assert code == 0, err
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_acc = [(r["step"], r["accuracy"]) for r in rows if r["kind"] == "train"]
    val_acc = [(r["step"], r["val_accuracy"]) for r in rows if r["kind"] == "val"]
    got = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in ("train/accuracy", "val/accuracy")}
    assert [s for s, _ in got["train/accuracy"]] == [s for s, _ in train_acc] == [1, 2, 3, 4]
    assert [v for _, v in got["train/accuracy"]] == pytest.approx([v for _, v in train_acc], rel=1e-6)
    assert [v for _, v in got["val/accuracy"]] == pytest.approx([v for _, v in val_acc], rel=1e-6)
    assert set(events.Tags()["scalars"]) >= {"train/loss", "train/lr", "val/ci95"}


def test_tensorboard_missing_is_one_line_and_creates_nothing(synthetic_data_root, tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    target = tmp_path / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", target, *ARGS, "--tensorboard")
    assert "pip install tensorboard" in one_line_error(code, err)
    assert not target.exists()


def test_eval_refuses_other_ways_for_a_fixed_output_layer(synthetic_data_root, tmp_path):
    run = tmp_path / "maml"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *ARGS, "--algo", "maml",
                           "--iterations", "2", "--meta-batch", "2")
    assert code == 0, err
    code, _, err = run_cli("eval", run, "--ways", "3", "--episodes", "2", "--quiet")
    msg = one_line_error(code, err)
    assert "this maml model has a 5-way output layer; evaluate with --ways 5" in msg
    assert not list(run.glob("eval-*.json"))


def test_run_records_without_checkpoints_are_unverified_not_stale(trained):
    for ckpt in (trained / "checkpoints").iterdir():
        ckpt.unlink()
    evaluations = rundir.list_evaluations(trained)
    assert [e.status for e in evaluations] == ["unverified"]
    assert "checkpoints/best.pt is not here" in evaluations[0].reason


def test_a_run_stopped_before_its_first_validation_points_to_its_last_checkpoint(synthetic_data_root, tmp_path):
    """No validation ran, so there is no best.pt: eval, predict and export by default name the
    checkpoint there is (`--checkpoint last`), which works, and the report's command uses it."""
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *ARGS, "--val-every", "100",
                           "--iterations", "2")
    assert code == 0, err
    (run / "checkpoints" / "best.pt").unlink()  # the end-of-run validation's; a Ctrl-C before it writes none
    expected = (f"error: run {run} has no best checkpoint: it stopped before its first validation; pass "
                f"--checkpoint last, or resume it (`l2l-app train --resume {run}`)")
    code, _, err = run_cli("eval", run, "--episodes", "2", "--quiet")
    assert one_line_error(code, err) == expected
    code, _, err = run_cli("export", run, "--format", "state-dict", "--out", tmp_path / "model.pt")
    assert one_line_error(code, err) == expected and not (tmp_path / "model.pt").exists()
    code, _, err = run_cli("eval", run, "--episodes", "2", "--quiet", "--checkpoint", "last")
    assert code == 0, err
    last = run / "checkpoints" / "last.pt"
    kept, log = last.read_bytes(), (run / "metrics.jsonl").read_text()
    # and none at all: a run killed before its first checkpoint (no evaluation, no validation logged)
    last.unlink()
    (run / "eval-test-last-5w1s2q-2ep-seed1234.json").unlink()
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in log.splitlines() if '"val"' not in line))
    code, _, err = run_cli("eval", run, "--episodes", "2", "--quiet")
    assert one_line_error(code, err) == (f"error: run directory {run} holds a run that wrote no checkpoint (it was "
                                         f"killed before its first); train it again (`l2l-app train --out {run} "
                                         f"--overwrite` with its settings)")
    last.write_bytes(kept)
    (run / "metrics.jsonl").write_text(log)
    code, _, err = run_cli("report", run, "--out", tmp_path / "report")
    assert code == 0, err
    assert f"`l2l-app eval {run} --split test --checkpoint last " in (tmp_path / "report" / "report.md").read_text()


def test_a_new_time_budget_below_the_time_trained_is_refused_and_changes_nothing(synthetic_data_root, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *ARGS,
                             "--iterations", "1000", "--time-budget", "0.00001")
    assert code == 0, err
    before = snapshot(run)
    code, out, err = run_cli("train", "--resume", run, "--time-budget", "0.000005", "--quiet")
    assert code == 2 and err.startswith("error: --time-budget 5e-06 is below the") and \
        "pass a --time-budget above" in err and err.count("\n") == 1, err
    used = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["elapsed"] / 60
    assert f"below the {used:.3g} min this run has trained; pass a --time-budget above {used:.3g} " in err, err
    assert snapshot(run) == before


# ------------------------------------------------------------------------------ what --out may replace
def test_overwrite_refuses_a_run_holding_files_it_did_not_write(trained, synthetic_data_root):
    (trained / "notes.txt").write_text("my thesis")
    (trained / "sub").mkdir()
    (trained / "checkpoints" / "keep-this.pt").write_bytes(b"mine")
    before = snapshot(trained)
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", trained, *ARGS, "--overwrite")
    message = one_line_error(code, err)
    assert "it holds checkpoints/keep-this.pt, notes.txt, sub/, which l2l-app did not write" in message
    assert snapshot(trained) == before and (trained / "sub").is_dir()


def test_overwrite_refuses_a_folder_whose_config_json_is_not_a_runs(tmp_path, synthetic_data_root):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "config.json").write_text("my own settings, not JSON")
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", folder, *ARGS, "--overwrite")
    assert "its config.json is not a run's config" in one_line_error(code, err)
    assert (folder / "config.json").read_text() == "my own settings, not JSON"


def test_out_inside_a_run_is_refused(trained, synthetic_data_root):
    before = snapshot(trained)
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", trained / "sub" / "run", *ARGS)
    assert f"is inside the run directory {trained.resolve()}" in one_line_error(code, err)
    assert snapshot(trained) == before and not (trained / "sub").exists()


def test_out_inside_the_data_root_is_refused(synthetic_data_root):
    before = snapshot(synthetic_data_root)
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", synthetic_data_root / "myrun",
                           *ARGS)
    assert f"is inside the data root {synthetic_data_root.resolve()}" in one_line_error(code, err)
    assert snapshot(synthetic_data_root) == before


def test_out_that_holds_other_files_is_named_as_not_a_run(tmp_path, synthetic_data_root):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", folder, *ARGS)
    assert "it holds files but is not an l2l-app run directory" in one_line_error(code, err)


def test_resuming_a_run_that_cannot_be_written_says_so(trained, monkeypatch):
    def read_only(self, directory):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rundir._Lock, "__init__", read_only)
    code, _, err = run_cli("train", "--resume", trained, "--iterations", "8")
    message = one_line_error(code, err)
    assert message.startswith(f"error: cannot write to run directory {trained}: Permission denied; give yourself")


def test_a_runs_file_given_for_the_run_is_named_as_a_file(trained):
    code, _, err = run_cli("eval", trained / "config.json", "--episodes", "2", "--quiet")
    assert f"is a file, not a run directory; pass the run's folder ({trained})" in one_line_error(code, err)


def test_eval_of_a_run_still_training_before_its_first_checkpoint_says_so(trained):
    shutil.rmtree(trained / "checkpoints")
    for evaluation in trained.glob("eval-*.json"):
        evaluation.unlink()
    (trained / "metrics.jsonl").write_text("")
    lock = rundir._Lock(trained)  # as `train` holds it
    try:
        code, _, err = run_cli("eval", trained, "--episodes", "2", "--quiet")
    finally:
        lock.release()
    message = one_line_error(code, err)
    assert f"run {trained} has no checkpoint yet: process {os.getpid()} is training it" in message
    assert "--overwrite" not in message
