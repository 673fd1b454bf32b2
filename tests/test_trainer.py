"""The trainer: learning happens, non-finite losses stop the run cleanly, --max-memory picks a chunk size
(resume and learning of every algorithm: tests/test_every_algorithm.py)."""
import json

import pytest
import torch

from l2l_app import experiment
from l2l_app.config import ExperimentConfig, with_overrides
from l2l_app.trainer import NonFiniteLossError, Trainer
from l2l_app.evaluation import evaluate_run

TINY = dict(ways=5, shots=1, queries=2, train_ways=5, hidden=16, val_every=5, val_episodes=5,
            checkpoint_every=1, eval_seed=7)


def config(**kw):
    return with_overrides(ExperimentConfig(), {**TINY, **kw})


def weights(run_dir, name="last"):
    return torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)["learner"]["model"]


def train_log(run_dir):
    """Metrics lines without wall time."""
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for l in lines:
        l.pop("time")
    return lines


def test_a_signal_during_a_step_saves_the_step_it_stops_after_and_resumes_to_the_same_weights(tmp_path):
    """A Ctrl-C that arrives while a step's metrics are read (or it validates: after the step
    decided whether its checkpoint was due) stops the run after that step with that step saved:
    the message names the checkpoint's step, and resuming ends where an uninterrupted run ends."""
    import os
    import signal
    from l2l_app.trainer import Interrupted, resume_config
    common = dict(iterations=8, checkpoint_every=100, val_every=100)
    Trainer(config(**common), tmp_path / "straight", progress=False).fit()

    def ctrl_c_at_step_3(step, _metrics):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted, match="stopped by signal 2 after step 3; checkpoint saved"):
        Trainer(config(**common), run_dir, progress=False, on_step=ctrl_c_at_step_3).fit()
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    Trainer(resume_config(run_dir, {}), run_dir, resume=True, progress=False).fit()
    straight = weights(tmp_path / "straight")
    for k, v in weights(run_dir).items():
        assert torch.equal(v, straight[k]), k


def test_a_signal_during_a_validation_stops_it_and_the_resume_runs_it_first(tmp_path, monkeypatch):
    """A Ctrl-C while the validation of step 5 scores its episodes stops it after the current batch
    (not after all 150 episodes); the checkpoint of step 5 says its validation is pending, so the
    resume validates step 5 before step 6: the log, the best checkpoint and the weights end as an
    uninterrupted run's do."""
    import os
    import signal
    from l2l_app import evaluation
    from l2l_app.trainer import Interrupted, resume_config
    common = dict(iterations=8, checkpoint_every=100, val_every=5, val_episodes=150)
    Trainer(config(**common), tmp_path / "straight", progress=False).fit()

    scored = []
    batches = evaluation.EpisodeSet.batches

    def ctrl_c_in_the_first_batch(self, batch_size, limit=None):
        for batch in batches(self, batch_size, limit):
            if not scored:
                os.kill(os.getpid(), signal.SIGINT)
            scored.append(batch.num_tasks)
            yield batch
    monkeypatch.setattr(evaluation.EpisodeSet, "batches", ctrl_c_in_the_first_batch)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted, match="stopped by signal 2 during the validation at step 5 .a resume runs it "
                                          "first.; checkpoint saved"):
        Trainer(config(**common), run_dir, progress=False).fit()
    assert scored == [50]  # one batch of 50 episodes, not three
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (state["step"], state["validation_pending"]) == (5, True)
    assert [row["step"] for row in train_log(run_dir) if row["kind"] == "val"] == []
    monkeypatch.undo()
    Trainer(resume_config(run_dir, {}), run_dir, resume=True, progress=False).fit()
    assert train_log(run_dir) == train_log(tmp_path / "straight")  # val rows at 5 and 8, in their places
    for name in ("last", "best"):
        straight = weights(tmp_path / "straight", name)
        assert all(torch.equal(v, straight[k]) for k, v in weights(run_dir, name).items()), name
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["validation_pending"] is False


def test_a_second_signal_exits_at_once_saying_what_a_resume_continues_from(tmp_path, monkeypatch, capsys):
    """The first signal asks the run to stop after its step; a second one exits the process now
    (os._exit, as a kill would: nothing half-written survives one), with one line on stderr."""
    import os
    import signal
    exits = []

    class Exited(Exception):
        pass

    def fake_exit(code):
        exits.append(code)
        raise Exited
    monkeypatch.setattr(os, "_exit", fake_exit)
    trainer = Trainer(config(iterations=3), tmp_path / "run", progress=False)
    trainer.fit()  # writes checkpoints/last.pt
    trainer._handle_signal(signal.SIGINT, None)  # the first: noted, nothing else
    assert exits == [] and trainer._stop_signal == signal.SIGINT
    with pytest.raises(Exited):
        trainer._handle_signal(signal.SIGTERM, None)
    assert exits == [128 + signal.SIGTERM]
    line = capsys.readouterr().err.strip()
    assert line == (f"error: a second signal ({int(signal.SIGTERM)}) stopped the run at once; continue from its "
                    f"last checkpoint (step 3) with `l2l-app train --resume {tmp_path / 'run'}`")


def test_nonfinite_loss_stops_and_keeps_last_good(tmp_path, monkeypatch):
    real = experiment.build_learner

    def poisoned(*args, **kw):
        learner = real(*args, **kw)
        step = {"n": 0}
        original = learner.meta_gradient

        def meta_gradient(batch):
            step["n"] += 1
            metrics = original(batch)
            return {**metrics, "loss": metrics["loss"] * float("nan")} if step["n"] == 4 else metrics

        learner.meta_gradient = meta_gradient
        return learner

    monkeypatch.setattr(experiment, "build_learner", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 4"):
        Trainer(config(iterations=10), run_dir, progress=False).fit()
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    # Metrics are read every few steps (no host synchronisation per step), but always before a
    # checkpoint: the first one due after the bad step is never written, and the message names step 4.
    late = tmp_path / "late"
    with pytest.raises(NonFiniteLossError, match=f"loss became nan at step 4; stopped, no checkpoint had been "
                                                 f"written yet, so {late} is removed"):
        Trainer(config(iterations=10, checkpoint_every=5, val_every=5, log_every=100), late, progress=False).fit()
    assert not late.exists()  # nothing to resume: the corrected command may use the same --out
    skipping = tmp_path / "skip"
    summary = Trainer(config(iterations=6, skip_nonfinite=True), skipping, progress=False).fit()
    assert summary.steps == 6 and summary.skipped_steps == 1


def test_the_time_a_validation_takes_counts_against_the_budget(tmp_path, monkeypatch):
    """A validation that outlasts the time budget ends the run at its step: no further step, and
    no second validation of the step after it (each validation here takes 3 s, the budget 2.4 s)."""
    import time
    validate_now = Trainer.validate_now

    def slow_validation(self):
        time.sleep(3.0)
        return validate_now(self)
    monkeypatch.setattr(Trainer, "validate_now", slow_validation)
    run_dir = tmp_path / "run"
    summary = Trainer(config(iterations=1000, val_every=2, checkpoint_every=100, time_budget=0.04), run_dir,
                      progress=False).fit()
    rows = train_log(run_dir)
    validated = [r["step"] for r in rows if r["kind"] == "val"]
    # the first validation (at step 2, or at step 1 should a step outlast the budget) is the last
    assert len(validated) == 1 and validated[0] == rows[-2]["step"] == summary.steps and summary.stopped_by_budget
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == summary.steps


def test_the_bar_shows_each_steps_own_loss_on_a_cpu(tmp_path, monkeypatch):
    """Reading a step's metrics costs nothing on a CPU, so the bar's loss is the step's own, not one
    --log-every steps old (on a GPU it says which step it is from: see `Trainer.fit`)."""
    from l2l_app import trainer as trainer_module
    shown = []
    update = trainer_module.Progress.update

    def recording(self, step, elapsed, stats=None, **pauses):
        shown.append((step, dict(stats or {})))
        return update(self, step, elapsed, stats, **pauses)
    monkeypatch.setattr(trainer_module.Progress, "update", recording)
    Trainer(config(iterations=6, log_every=100, checkpoint_every=100, val_every=100), tmp_path / "run",
            progress=False).fit()
    losses = {row["step"]: f"{row['loss']:.3f}" for row in train_log(tmp_path / "run") if row["kind"] == "train"}
    assert [(step, stats["loss"]) for step, stats in shown if "loss" in stats] == list(losses.items())


def test_the_eta_counts_the_validations_to_come(tmp_path, monkeypatch):
    """Validations (at steps 2 and 4, and at the end, 5) are left out of the bar's per-step pace and
    their mean time is added once for each still to come."""
    from l2l_app import trainer as trainer_module
    seen = {}
    update = trainer_module.Progress.update

    def recording(self, step, elapsed, fields=None, paused=None, pauses_ahead=None):
        if paused is not None:
            seen[step] = (paused, pauses_ahead)
        return update(self, step, elapsed, fields, paused, pauses_ahead)
    monkeypatch.setattr(trainer_module.Progress, "update", recording)
    Trainer(config(iterations=5, val_every=2, checkpoint_every=100), tmp_path / "run", progress=False).fit()
    assert seen[1] == (0.0, 0.0)  # no validation measured yet
    one = seen[2][0]
    assert one > 0 and seen[2][1] == pytest.approx(2 * one) and seen[3] == seen[2]  # steps 4 and 5 to come
    two = seen[4][0]
    assert two > one and seen[4][1] == pytest.approx(two / 2)  # step 5's to come
    assert seen[5][1] == 0.0


def test_evaluation_is_reproducible(tmp_path):
    """The same run, checkpoint and episode seed give the same accuracies, episode for episode
    (learning itself: tests/test_every_algorithm.py::test_quick_settings_learn)."""
    run_dir = tmp_path / "run"
    Trainer(config(iterations=3, val_every=3, checkpoint_every=3), run_dir, progress=False).fit()
    result = evaluate_run(run_dir, episodes=30, progress=False)
    again = evaluate_run(run_dir, episodes=30, progress=False)
    assert again.accuracies == result.accuracies and len(result.accuracies) == 30


def test_max_memory_picks_a_chunk_size(tmp_path):
    """A tiny --max-memory budget forces one task per chunk; no budget leaves the meta-batch whole."""
    tight = Trainer(config(algo="maml", train_ways=None, engine="batched", meta_batch=4, iterations=1,
                           max_memory=1e-6), tmp_path / "tight", progress=False)
    assert tight.learner.chunk_size == 1
    assert json.loads((tmp_path / "tight" / "run.json").read_text())["chunk_size"] == 1
    roomy = Trainer(config(algo="maml", train_ways=None, engine="batched", meta_batch=4, iterations=1,
                           max_memory=64.0), tmp_path / "roomy", progress=False)
    assert roomy.learner.chunk_size == 4


class _OneSecondPerCall:
    """The trainer's clock (`time.perf_counter`), one second later at every call: one call per step."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("algo,cut", [("reptile", True), ("protonet", False)])
def test_a_time_budget_that_cuts_an_annealing_schedule_is_foreseen_and_reported(tmp_path, monkeypatch, capsys,
                                                                                algo, cut):
    """Reptile's epsilon anneals over --iterations: a --time-budget that ends the run sooner is
    said once while it trains (from the measured pace) and again at the end, each with the
    --iterations the budget holds; ProtoNet's Adam (no step decay here) has no schedule to cut."""
    import l2l_app.trainer as trainer_module
    monkeypatch.setattr(trainer_module, "time", _OneSecondPerCall())
    settings = dict(algo=algo, iterations=1000, time_budget=0.25, val_every=1000, checkpoint_every=1000,
                    **(dict(meta_batch=2, inner_steps=1, test_inner_steps=1) if algo == "reptile" else {}))
    summary = Trainer(config(**settings), tmp_path / algo, progress=True).fit()
    err = capsys.readouterr().err
    assert summary.stopped_by_budget and 5 < summary.steps < 1000  # 15 s at one second per step
    text = summary.describe("batched", "tensor", "cpu")
    if not cut:
        assert summary.schedule_cut is None and "--iterations" not in err + text
        return
    # a constant pace: the forecast made two steps in is the step the budget ended the run at
    assert f"the time budget ends the run near step {summary.steps} of 1000" in err
    assert f"then `l2l-app train --resume {tmp_path / algo} --iterations {summary.steps}`" in err
    assert f"at step {summary.steps} of 1000" in text and f"train with --iterations {summary.steps}" in text
    assert err.count("note: at this pace") == 1


def test_the_schedule_cut_forecast_measures_the_pace_after_the_first_step_and_speaks_once():
    from l2l_app.trainer import ScheduleCutForecast
    f = ScheduleCutForecast(iterations=1000, budget_seconds=100.0, after_seconds=40.0)
    assert f.check(1, 30.0) is None  # the first step (30 s: a capture) sets where the pace is measured from
    assert f.check(5, 34.0) is None  # too early to judge
    assert f.check(11, 40.0) == 11 + 60  # 1 s/step since step 1, 60 s left: the first step's 30 s not counted
    assert f.check(12, 41.0) is None  # said once
    roomy = ScheduleCutForecast(iterations=50, budget_seconds=100.0, after_seconds=1.0)
    assert roomy.check(1, 2.0) is None and roomy.check(3, 4.0) is None  # 1 s/step: 50 steps fit in 100 s
    assert roomy.check(4, 5.0) is None
