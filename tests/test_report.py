"""Report builder on hand-made run directories (config.json, metrics.jsonl, eval json)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from l2l_app.cli import cli
from l2l_app.config import ExperimentConfig, dump_json, with_overrides
from l2l_app.errors import ConfigError
from l2l_app.report import build_report, load_run_record, plot_learning_curves


def make_run(root: Path, name: str, evaluated: bool = True, **settings) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = with_overrides(ExperimentConfig(), {"algo": "maml", "dataset": "omniglot", "ways": 5, "shots": 1,
                                                 **settings})
    dump_json(config, run / "config.json")
    lines = []
    for step in range(1, 21):
        lines.append({"kind": "train", "step": step, "loss": 1.6 / step, "accuracy": min(0.2 + 0.04 * step, 1.0),
                      "lr": 1e-3, "time": 0.5 * step})
        if step % 10 == 0:
            lines.append({"kind": "val", "step": step, "val_accuracy": 50.0 + step, "val_ci95": 1.0,
                          "time": 0.5 * step})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if evaluated:
        (run / "eval-test-best.json").write_text(json.dumps({
            "mean": 97.5, "ci95": 0.3, "std": 4.0, "episodes": 1000, "accuracies": [97.5] * 3,
            "protocol": {"dataset": "omniglot", "split": "test", "ways": 5, "shots": 1, "queries": 15,
                         "episodes": 1000, "episode_seed": 1234, "checkpoint": "best (step 20)"}}))
    return run


def test_report_writes_md_html_png_with_published_number(tmp_path):
    a = make_run(tmp_path, "maml-run")
    b = make_run(tmp_path, "proto-run", evaluated=False, algo="protonet")
    paths = build_report([a, b], tmp_path / "report")
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert paths["png"].is_file() and paths["png"].stat().st_size > 1000
    assert "97.50 ± 0.30" in md and "98.70 ± 0.40" in md  # ours and Finn et al.'s 98.7 ± 0.4
    assert "-1.20 pp" in md and "-1.20 pp" in page
    assert "Finn" in md and "Table 1" in md
    assert f"not evaluated (run `l2l-app eval --run {b}`)" in md
    assert "learning_curves.png" in md and "data:image/png;base64," in page
    assert "episode_seed" in md and "inner_lr" in md  # protocol and full configuration
    rec = load_run_record(a)
    assert len(rec.train) == 20 and len(rec.val) == 2 and rec.difference == pytest.approx(-1.2)


def test_plot_learning_curves_alone(tmp_path):
    out = plot_learning_curves([make_run(tmp_path, "r")], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_non_run_dir_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run directory"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "is not a directory" in result.output and len(result.output.strip().splitlines()) == 1


def test_report_cli(tmp_path):
    run = make_run(tmp_path, "maml-run")
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "report.md").is_file()
