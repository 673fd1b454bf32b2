"""Progress tells the truth: fraction and ETA follow whichever limit ends the work; plain lines
every --log-every units when the output is not a terminal, one redrawn line when it is."""
from __future__ import annotations

import io

import pytest

from l2l_app.progress import Progress, format_seconds


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_seconds():
    assert format_seconds(12.4) == "00:12"
    assert format_seconds(3725) == "1:02:05"


def test_the_time_budget_sets_fraction_and_eta_when_it_ends_the_run_first():
    p = Progress("maml", total=100000, budget_seconds=60.0, enabled=False)
    p.update(100, 30.0)  # 0.3 s/step: 100000 steps would take 8 hours, the budget ends in 30 s
    assert p.fraction() == 0.5
    assert p.eta() == (30.0, "time budget")
    assert "50%" in p.line() and "ETA 00:30 (time budget)" in p.line()


def test_the_step_count_sets_them_when_it_ends_the_run_first():
    p = Progress("protonet", total=20, budget_seconds=3600.0, enabled=False)
    p.update(9, 10.0)
    assert abs(p.fraction() - 0.45) < 1e-12
    seconds, limit = p.eta()
    assert limit == "steps" and abs(seconds - 11 * 10.0 / 9) < 1e-9


def test_a_resumed_run_measures_its_rate_from_its_own_steps():
    p = Progress("x", total=100, done=50, elapsed=500.0, enabled=False)  # 10 s/step before the resume
    assert p.eta() == (None, "")
    p.update(60, 510.0)  # 1 s/step now
    assert p.eta() == (40.0, "steps")


def test_plain_lines_after_the_first_step_then_every_log_every_steps_when_not_a_terminal():
    out = io.StringIO()
    p = Progress("reptile", total=10, stream=out, log_every=4)
    for step in range(1, 11):
        p.update(step, float(step), {"loss": "1.000"})
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split("step ")[1].split()[0] for line in lines] == ["1/10", "4/10", "8/10", "10/10"]
    assert "ETA 00:09 (steps)" in lines[0]  # the first step's pace already gives the ETA
    assert all("loss 1.000" in line for line in lines)


def test_one_redrawn_line_on_a_terminal():
    out = Terminal()
    clock = iter(float(t) for t in range(100))
    p = Progress("proto", total=5, stream=out, clock=lambda: next(clock))
    for step in range(1, 6):
        p.update(step, float(step))
    p.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") >= 5 and "step 5/5" in text.rsplit("\r", 1)[1]


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    p = Progress("quiet", total=3, stream=out, enabled=False, log_every=1)
    for step in range(1, 4):
        p.update(step, float(step))
    p.close()
    assert out.getvalue() == ""


def test_advance_counts_uneven_chunks_and_prints_each_tenth_once():
    out = io.StringIO()
    clock = iter(float(t) for t in range(100))
    with Progress("decoding", total=100, stream=out, log_every=10, unit="image", clock=lambda: next(clock)) as p:
        for _ in range(14):
            p.advance(7)  # 98 images
        p.advance(2)
    done = [line.split("image ")[1].split()[0] for line in out.getvalue().splitlines()]
    assert done == ["7/100", "14/100", "21/100", "35/100", "42/100", "56/100", "63/100", "70/100", "84/100",
                    "91/100", "100/100"]


def test_a_note_gets_a_line_of_its_own_and_the_progress_line_is_drawn_again():
    term = Terminal()
    p = Progress("reptile", total=10, stream=term, clock=lambda: 0.0)
    p.update(1, 1.0)
    p.note("note: something to know")
    assert term.getvalue().endswith("\rnote: something to know" + " " * (len(p.line()) - 23) + "\n\r" + p.line())
    plain = io.StringIO()
    q = Progress("reptile", total=10, stream=plain, log_every=100)
    q.update(1, 1.0)
    q.update(2, 2.0)
    q.note("note: something to know")
    assert plain.getvalue().splitlines()[1:] == ["note: something to know"]  # no progress line is due at step 2
    quiet = io.StringIO()
    Progress("r", total=10, stream=quiet, enabled=False).note("note")
    assert quiet.getvalue() == ""


def test_quiet_work_shows_nothing_until_it_has_run_quiet_seconds():
    """A validation that ends within `quiet_seconds` prints nothing; a slow one says at once (plain
    mode) what is taking so long, then goes on as usual."""
    fast = io.StringIO()
    with Progress("validation", total=200, stream=fast, log_every=20, unit="episode", quiet_seconds=5.0) as p:
        for done in range(50, 201, 50):
            p.update(done, done / 50)  # 4 s in all
    assert fast.getvalue() == ""
    slow = io.StringIO()
    with Progress("validation", total=200, stream=slow, log_every=100, unit="episode", quiet_seconds=5.0) as p:
        for done in range(50, 201, 50):
            p.update(done, 3.0 * done / 50)  # 3 s per 50 episodes: past 5 s at 100 episodes
    assert [line.split("episode ")[1].split()[0] for line in slow.getvalue().splitlines()] == ["100/200", "200/200"]
    term = Terminal()
    with Progress("validation", total=200, stream=term, unit="episode", quiet_seconds=5.0, clock=lambda: 0.0) as p:
        p.update(50, 3.0)
        assert term.getvalue() == ""
        p.update(100, 6.0)
    assert "episode 100/200" in term.getvalue() and term.getvalue().endswith("\n")


def test_time_spent_on_other_work_is_out_of_the_pace_and_the_work_ahead_is_in_the_eta():
    """A trainer's validations: 10 steps took 10 s of which 6 s validated (0.4 s a step); 90 steps
    ahead take 36 s, plus the 12 s of validations still to come."""
    bar = Progress("train", total=100, enabled=False)
    bar.update(10, 10.0, paused=6.0, pauses_ahead=12.0)
    assert bar.eta() == (pytest.approx(90 * 0.4 + 12.0), "steps")
    bar.update(20, 14.0)  # the pauses as last given: 8 s of steps for 20 steps
    assert bar.eta() == (pytest.approx(80 * 0.4 + 12.0), "steps")
