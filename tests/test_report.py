"""The report on what real runs write: tiny runs trained and evaluated with the library, one resumed.

Two runs are trained once per module (seconds on one CPU thread):

- `protonet`: ProtoNet trained 5-way (the paper trains 60-way), naming the 5-way 5-shot recipe while
  being 1-shot; evaluated under five protocols, then resumed for more steps (which rewrites
  checkpoints/last.pt) and evaluated twice more;
- `maml`: MAML with the published setting's episode shape but hidden 8, meta-batch 2, a few
  iterations and 1 test-time inner step (the paper: 64, 32, 60000 and 3).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest
from click.testing import CliRunner

from l2l_app.cli import cli
from l2l_app.config import ExperimentConfig, with_overrides
from l2l_app.errors import ConfigError
from l2l_app.plots import group_by_train_shape, learning_curves_figure, plot_learning_curves, smooth
from l2l_app.recipes import load_recipe
from l2l_app.report import build_report
from l2l_app.run_records import load_run_record, pick_evaluation
from l2l_app.rundir import eval_command, list_evaluations
from l2l_app.trainer import Trainer, resume_config
from l2l_app.evaluation import evaluate_run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="omniglot", ways=5, shots=1, queries=2, hidden=8, val_every=2, val_episodes=4,
            checkpoint_every=1, episodes=10, eval_seed=7, device="cpu", engine="loop")


def train(run_dir: Path, data_root: Path, **settings) -> Path:
    config = with_overrides(ExperimentConfig(), {**TINY, "data_root": str(data_root), **settings})
    Trainer(config, run_dir, progress=False).fit()
    return run_dir


def evaluate(run_dir: Path, **protocol) -> str:
    """Evaluate and return the name of the file written."""
    return evaluate_run(run_dir, progress=False, device="cpu", **protocol).protocol["file"]


@dataclass
class ProtoNetRun:
    path: Path
    before_resume: List[str]  # evaluation files written before training was resumed
    stale: str  # evaluated `last` before the resume: its checkpoint has changed since
    fresh: str  # evaluated `last` after the resume
    matching: str  # the published protocol (test, best, 5-way 1-shot, 15 queries), after the resume


@pytest.fixture(scope="module")
def protonet(synthetic_data_root, tmp_path_factory) -> ProtoNetRun:
    run = train(tmp_path_factory.mktemp("runs") / "protonet", synthetic_data_root, algo="protonet",
                iterations=4, recipe="protonet-omniglot-5w5s")
    before = [evaluate(run), evaluate(run, checkpoint="last"), evaluate(run, queries=3),
              evaluate(run, ways=3), evaluate(run, split="val")]
    Trainer(resume_config(run, {"iterations": 8}), run, resume=True, progress=False).fit()
    fresh = evaluate(run, checkpoint="last", episodes=12)
    matching = evaluate(run, queries=15)
    return ProtoNetRun(run, before, before[1], fresh, matching)


@pytest.fixture(scope="module")
def maml(synthetic_data_root, tmp_path_factory) -> Path:
    run = train(tmp_path_factory.mktemp("runs") / "maml", synthetic_data_root, algo="maml", iterations=2,
                meta_batch=2, train_queries=1, inner_lr=0.4, test_inner_steps=1)
    evaluate(run)
    return run


@pytest.fixture(scope="module")
def report(protonet, maml, tmp_path_factory) -> Dict[str, str]:
    paths = build_report([protonet.path, maml], tmp_path_factory.mktemp("report"))
    return {"md": paths["md"].read_text(), "html": paths["html"].read_text(), "png": paths["png"]}


def md_rows(md: str, first_cell: str) -> List[List[str]]:
    """Cells of the Markdown table rows whose first cell contains `first_cell`."""
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in md.splitlines()
            if line.startswith("| ")]
    return [r for r in rows if first_cell in r[0]]


def section(md: str, run_name: str) -> str:
    """The Markdown of one run's section."""
    return md.split(f"\n## {run_name}\n", 1)[1].split("\n## ", 1)[0]


# ------------------------------------------------------------------------------ evaluations
def test_every_evaluation_is_listed_with_its_protocol(protonet, maml, report):
    for run, count in ((protonet.path, 7), (maml, 1)):
        files = sorted(p.name for p in run.glob("eval-*.json"))
        assert len(files) == count
        for name in files:
            assert len(md_rows(section(report["md"], run.name), f"`{name}`")) == 1, name
            assert f"<code>{name}</code>" in report["html"]
    text = section(report["md"], "protonet")
    for ev in list_evaluations(protonet.path):  # each row: its protocol and its result
        split, shape, episodes, seed, checkpoint, _, accuracy = md_rows(text, f"`{ev.path.name}`")[0][1:8]
        p = ev.protocol
        assert (split, shape) == (p["split"], f"{p['ways']}-way {p['shots']}-shot, {p['queries']} queries/class")
        assert (episodes, seed) == (str(p["episodes"]), str(p["episode_seed"]))
        assert checkpoint == f"{p['checkpoint_name']} (step {p['checkpoint_step']})"
        assert accuracy == f"{ev.result['mean']:.2f} ± {ev.result['ci95']:.2f}"
    shapes = {md_rows(text, f"`{name}`")[0][2] for name in protonet.before_resume}
    assert {"3-way 1-shot, 2 queries/class", "5-way 1-shot, 3 queries/class"} < shapes
    assert md_rows(text, "`eval-val-")[0][1] == "val"


def test_changed_checkpoint_marks_older_evaluation_stale(protonet, report):
    stale, = [ev for ev in list_evaluations(protonet.path) if ev.path.name == protonet.stale]
    text = section(report["md"], "protonet")
    row = md_rows(text, f"`{protonet.stale}`")[0]
    assert row[8].startswith("**STALE**: checkpoints/last.pt has changed since this evaluation (it evaluated step 4)")
    assert row[9] == f"`{stale.refresh}`" == f"`{eval_command(protonet.path, stale.protocol)}`"
    assert "--checkpoint last" in stale.refresh and "--episodes 10" in stale.refresh
    for fresh in (protonet.fresh, protonet.matching):
        row = md_rows(text, f"`{fresh}`")[0]
        assert row[8] == "current" and row[9] == ""
    assert md_rows(text, f"`{protonet.fresh}`")[0][5] == "last (step 8)"
    assert '<td class="stale"><strong>STALE</strong>: checkpoints/last.pt has changed' in report["html"]


# ------------------------------------------------------------------------------ published numbers
def test_comparison_uses_the_published_protocol_and_lists_every_difference(protonet, report):
    rec = load_run_record(protonet.path)
    published, named = rec.comparisons
    assert published.recipe.name == "protonet-omniglot-5w1s" and named.recipe.name == "protonet-omniglot-5w5s"
    assert published.evaluation.path.name == protonet.matching  # test, 5-way 1-shot, 15 queries, current
    mean = published.evaluation.result["mean"]
    assert published.difference_pp == pytest.approx(mean - 98.8)
    # the paper trains 60-way with 5 queries, 20000 episodes, hidden 64, halving the rate every 2000
    assert {d.setting: (d.ours, d.theirs) for d in published.differences} == {
        "train_ways": (5, 60), "train_queries": (2, 5), "hidden": (8, 64), "iterations": (8, 20000),
        "lr_decay_every": (None, 2000)}
    summary, = [r for r in md_rows(report["md"], "protonet") if r[6] == "`protonet-omniglot-5w1s`"]
    assert summary[8] == f"{mean:.2f} ± {published.evaluation.result['ci95']:.2f}"
    assert summary[10] == f"{mean - 98.8:+.2f} pp"
    assert summary[11] == "5: hidden, train_ways, train_queries, lr_decay_every, iterations"  # the recipe's order
    text = section(report["md"], "protonet")
    assert "**Protocol differs in 5 setting(s)**" in text
    assert "| `--train-ways` | 5 | 60 | config.json |" in text
    assert "| `--lr-decay-every` | n/a | 2000 | config.json |" in text


def test_comparison_prefers_matching_queries_then_current_then_best(protonet):
    rec = load_run_record(protonet.path)
    by_name = {ev.path.name: ev for ev in rec.evaluations}
    recipe = rec.comparisons[0].recipe

    def pick(*names: str):
        chosen = pick_evaluation([by_name[n] for n in names], recipe, rec.config)
        return chosen and chosen.path.name

    best_2q, _, best_3q, three_way, val = protonet.before_resume
    assert pick(protonet.stale, protonet.fresh) == protonet.fresh  # both `last`: current beats stale
    assert pick(best_3q, protonet.fresh, protonet.matching) == protonet.matching  # the recipe's 15 queries
    # same queries, both current unless resuming found a better validation score: best beats last
    expected = best_2q if by_name[best_2q].status == "current" else protonet.fresh
    assert pick(protonet.fresh, best_2q) == expected
    assert pick(three_way, val) is None  # 3-way, and the validation split: never compared


def test_recipe_without_a_matching_evaluation_is_not_compared(protonet, report):
    named = load_run_record(protonet.path).comparisons[1]
    assert named.evaluation is None and named.difference_pp is None
    assert {"shots", "train_shots"} <= {d.setting for d in named.differences}
    command = eval_command(protonet.path, {"split": "test", "checkpoint_name": "best", "ways": 5, "shots": 5,
                                           "queries": 15, "episodes": 10, "episode_seed": 7})
    assert f"no test evaluation at 5-way 5-shot, so no accuracy is compared; evaluate with `{command}`" \
        in section(report["md"], "protonet")
    summary, = [r for r in md_rows(report["md"], "protonet") if r[6] == "`protonet-omniglot-5w5s`"]
    recipe = load_recipe("protonet-omniglot-5w5s")
    assert summary[7:9] == ["none", "not evaluated"] and summary[10] == "–"
    assert summary[9].startswith(f"{recipe.reported_accuracy:.2f}")


def test_maml_differences_come_from_training_and_evaluation(maml, report):
    comparison, = load_run_record(maml).comparisons
    assert comparison.recipe.name == "maml-omniglot-5w1s"
    found = {d.setting: (d.ours, d.theirs, d.source) for d in comparison.differences}
    assert found == {"backbone": ("conv4", "conv4-strided", "config"), "hidden": (8, 64, "config"),
                     "iterations": (2, 60000, "config"), "meta_batch": (2, 32, "config"),
                     "queries": (2, 15, "evaluation"), "test_inner_steps": (1, 3, "evaluation")}
    assert "| `--test-inner-steps` | 1 | 3 | the compared evaluation |" in section(report["md"], "maml")


def test_a_run_cut_short_differs_in_the_steps_it_trained(maml, tmp_path):
    """A run that asked for the recipe's 60000 iterations but trained 2 (a time budget ended it)
    differs from the recipe in them: the report says so, from its metrics, not from its config."""
    run = tmp_path / "maml"
    shutil.copytree(maml, run)
    config = json.loads((run / "config.json").read_text())
    config["optim"]["iterations"] = 60000
    (run / "config.json").write_text(json.dumps(config))
    comparison, = load_run_record(run).comparisons
    found = {d.setting: (d.ours, d.theirs, d.source) for d in comparison.differences}
    assert found["iterations"] == (2, 60000, "metrics")
    md = Path(build_report([run], tmp_path / "report")["md"]).read_text()
    assert "| `--iterations` | 2 | 60000 | the steps it trained (metrics.jsonl) |" in md
    # asked for more than the recipe's (a time budget run: --iterations 100000) but trained 2: the 2 count
    config["optim"]["iterations"] = 100000
    (run / "config.json").write_text(json.dumps(config))
    comparison, = load_run_record(run).comparisons
    assert [(d.ours, d.theirs, d.source) for d in comparison.differences if d.setting == "iterations"] == \
        [(2, 60000, "metrics")]


# ------------------------------------------------------------------------------ configuration
def test_config_table_shows_resolved_values_and_never_none(protonet, maml, report):
    assert "None" not in report["md"] and "None" not in report["html"]
    rows = {r[0]: r[1] for r in md_rows(section(report["md"], "protonet"), "")}
    assert rows["train_ways"] == "5" and rows["train_queries"] == "2"  # resolved: same as ways/queries
    assert rows["recipe"] == "protonet-omniglot-5w5s" and rows["iterations"] == "8"
    assert "inner_steps" not in rows and rows["lr_decay_every"] == "n/a"  # not protonet's / not used
    maml_rows = {r[0]: r[1] for r in md_rows(section(report["md"], "maml"), "")}
    assert maml_rows["test_inner_steps"] == "1" and maml_rows["inner_lr"] == "0.4"


# ------------------------------------------------------------------------------ learning curves
def test_learning_curves_png_is_written(report):
    png = report["png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "![learning curves](learning_curves.png)" in report["md"]
    assert "data:image/png;base64," in report["html"]


def test_runs_with_different_training_episodes_get_separate_panels(protonet, maml):
    records = [load_run_record(protonet.path), load_run_record(maml)]
    assert list(group_by_train_shape(records)) == [(5, 1, 2), (5, 1, 1)]
    fig = learning_curves_figure(records)
    titles = [sub.get_suptitle() for sub in fig.subfigs]
    assert titles == ["training episodes: 5-way 1-shot, 2 queries/class",
                      "training episodes: 5-way 1-shot, 1 query/class"]
    accuracy_axes = [ax for sub in fig.subfigs for ax in sub.axes if ax.get_ylabel() == "accuracy (%)"]
    assert len(accuracy_axes) == 4
    top = max(max(line.get_ydata(), default=0) for ax in accuracy_axes for line in ax.get_lines())
    assert top > 1.0  # percentages, not fractions
    for sub in fig.subfigs:
        data_axes = [ax for ax in sub.axes if ax.lines]
        assert all(ax.get_legend() is None for ax in data_axes)  # the legend has an axis of its own


def test_plot_learning_curves_alone(protonet, tmp_path):
    out = plot_learning_curves([protonet.path], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smooth_keeps_level_and_reduces_noise():
    assert smooth([3.0] * 50, 10) == pytest.approx([3.0] * 50)
    noisy = [50.0 + (10.0 if i % 2 else -10.0) for i in range(200)]
    smoothed = smooth(noisy, 10)
    assert smoothed[0] == noisy[0] and max(abs(v - 50.0) for v in smoothed[20:]) < 1.5
    assert smooth([1.0, 5.0], 1) == [1.0, 5.0]


# ------------------------------------------------------------------------------ older runs
def test_older_run_fractions_and_unverified_evaluation(maml, tmp_path):
    """A run written before run.json had "accuracy_unit" (training accuracy as a fraction) and before
    evaluations recorded their checkpoint's hash (eval-test-best.json)."""
    old = tmp_path / "old"
    shutil.copytree(maml, old, ignore=shutil.ignore_patterns("eval-*.json", ".lock"))
    info = json.loads((maml / "run.json").read_text())
    info.pop("accuracy_unit")
    (old / "run.json").write_text(json.dumps(info))
    rows = [json.loads(line) for line in (maml / "metrics.jsonl").read_text().splitlines()]
    (old / "metrics.jsonl").write_text("".join(
        json.dumps({**r, "accuracy": r["accuracy"] / 100} if r["kind"] == "train" else r) + "\n" for r in rows))
    result = json.loads(next(maml.glob("eval-test-best-*.json")).read_text())
    for key in ("checkpoint_sha256", "checkpoint_name", "checkpoint_step", "file"):
        result["protocol"].pop(key)
    (old / "eval-test-best.json").write_text(json.dumps(result))

    rec = load_run_record(old)
    assert [r["accuracy"] for r in rec.train] == pytest.approx([r["accuracy"] for r in load_run_record(maml).train])
    ev, = rec.evaluations
    assert ev.status == "unverified" and rec.comparisons[0].evaluation is ev
    md = build_report([old], tmp_path / "out")["md"].read_text()
    row, = md_rows(md, "`eval-test-best.json`")
    assert row[5] == "best (step 2)" and row[8].startswith("**unverified**: written by an older l2l-app")
    assert row[9] == f"`{ev.refresh}`"


# ------------------------------------------------------------------------------ errors and CLI
def test_a_run_named_twice_is_reported_once_and_out_stays_outside_the_runs(maml, tmp_path):
    paths = build_report([maml, Path(str(maml) + "/")], tmp_path / "report")
    assert Path(paths["md"]).read_text().count("## maml") == 1
    with pytest.raises(ConfigError, match=f"--out {maml / 'report'} is inside the run {maml}"):
        build_report([maml], maml / "report")
    assert not (maml / "report").exists()


def test_non_run_dir_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run directory"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "is not a directory" in result.output and len(result.output.strip().splitlines()) == 1


def test_report_cli(maml, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(maml), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "report.md").is_file()
