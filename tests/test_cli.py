"""The command line: every bad input is one line on stderr with exit code 2, and nothing is lost."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from l2l_app.cli import cli

FAST = ["--iterations", "2", "--val-every", "2", "--val-episodes", "4", "--quiet",
        "--train-ways", "5", "--queries", "2"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err


def test_missing_data_root(tmp_path):
    result = run("train", "--data-root", tmp_path / "nowhere", "--out", tmp_path / "run", *FAST)
    assert_one_line_error(result, str(tmp_path / "nowhere"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_data_root_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert_one_line_error(run("train", "--data-root", f, "--out", tmp_path / "run", *FAST), str(f))


def test_unknown_dataset(tmp_path):
    assert_one_line_error(run("train", "--dataset", "omniglott", "--out", tmp_path / "r", *FAST),
                          "omniglott", "did you mean 'omniglot'")


def test_unknown_algorithm(tmp_path):
    assert_one_line_error(run("train", "--algo", "protonets", "--out", tmp_path / "r", *FAST),
                          "--algo 'protonets'", "protonet")


def test_not_a_number(tmp_path):
    assert_one_line_error(run("train", "--ways", "five", "--out", tmp_path / "r"), "'five'")


def test_ways_exceed_classes(tmp_path):
    # the Omniglot validation split has 688 classes
    assert_one_line_error(run("train", "--ways", 700, "--out", tmp_path / "r", *FAST[:-4]),
                          "700", "688")


def test_shots_plus_queries_exceed_images(tmp_path):
    assert_one_line_error(run("train", "--shots", 10, "--queries", 15, "--out", tmp_path / "r", *FAST[:-2]),
                          "--shots", "20 images")


def test_train_ways_exceed_classes(tmp_path):
    args = [a if a != "5" else "5000" for a in FAST]
    assert_one_line_error(run("train", "--out", tmp_path / "r", *args), "--train-ways", "5000")


def test_existing_run_dir_is_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_one_line_error(run("train", "--out", out, *FAST), "holds files but is not an l2l-app run directory",
                          "choose a new or empty folder")
    assert (out / "precious.txt").read_text() == "keep me"
    # --overwrite refuses a folder that is not a run directory
    assert_one_line_error(run("train", "--out", out, "--overwrite", *FAST), "not an l2l-app run directory")
    assert (out / "precious.txt").read_text() == "keep me"


def test_resume_needs_a_run_dir(tmp_path):
    assert_one_line_error(run("train", "--resume", tmp_path), "not a run directory")
    assert_one_line_error(run("train", "--resume", tmp_path / "nowhere"), "nowhere: it does not exist",
                          f"--out {tmp_path / 'nowhere'}")
    assert not (tmp_path / "nowhere").exists()


def test_resume_and_overwrite_together_are_refused(tmp_path):
    """--overwrite asks for a fresh run, --resume for the old one continued: neither is guessed."""
    assert_one_line_error(run("train", "--resume", tmp_path, "--overwrite"), "--resume continues the run",
                          "--out RUN_DIR --overwrite instead of --resume")


def test_a_time_budget_of_zero_is_refused(tmp_path):
    assert_one_line_error(run("train", "--time-budget", "0", "--out", tmp_path / "run"), "--time-budget",
                          "positive number")
    assert not (tmp_path / "run").exists()


def test_under_torchrun_rank_0_alone_prints_what_every_rank_meets(tmp_path, monkeypatch):
    """A refused command line is refused by every rank alike: one line from rank 0, the same exit
    code from every rank; a rank's own data error is printed by it, with its rank."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, expected in (("0", "error: --ways must be >= 2, got 1"), ("1", "")):
        monkeypatch.setenv("RANK", rank)
        result = run("train", "--ways", "1", "--out", tmp_path / "run")
        assert result.exit_code == 2 and result.stderr.strip().startswith(expected), result.stderr
        assert bool(result.stderr) == (rank == "0")
    monkeypatch.setenv("RANK", "1")
    result = run("data", "check", "--dataset", "folder", "--data-root", tmp_path, "--quiet")
    assert result.exit_code == 2 and result.stderr.startswith("error: [rank 1] no class folders under")


def test_eval_needs_a_run_dir(tmp_path):
    assert_one_line_error(run("eval", "--run", tmp_path), "not a run directory")
    assert_one_line_error(run("eval", tmp_path / "nowhere"), "nowhere does not exist", "--out directory")


def test_unknown_recipe(tmp_path):
    assert_one_line_error(run("train", "--recipe", "maml-omniglot", "--out", tmp_path / "r"), "unknown recipe")


def test_device_not_available(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert_one_line_error(run("train", "--device", "cuda", "--out", tmp_path / "r", *FAST), "CUDA is not available")


def test_train_then_eval_is_reproducible(tmp_path):
    out = tmp_path / "run"
    result = run("train", "--out", out, "--seed", 3, *FAST)
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["task"]["ways"] == 5 and config["run"]["seed"] == 3
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["kind"] == "train"] == [1, 2]
    assert {"loss", "accuracy", "time", "lr"} <= set(lines[0])
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "checkpoints" / "best.pt").is_file()
    first = run("eval", "--run", out, "--episodes", 20, "--quiet")
    second = run("eval", "--run", out, "--episodes", 20, "--quiet")
    assert first.exit_code == 0, first.output
    assert "accuracy" in first.output and "95% CI" in first.output
    assert first.output == second.output
    written = Path(first.output.split("written to ")[-1].strip())  # the file name encodes the protocol
    assert written.parent == out and written.name.startswith("eval-test-best")
    saved = json.loads(written.read_text())
    assert saved["episodes"] == 20 and len(saved["accuracies"]) == 20
    assert saved["protocol"]["queries"] == 2 and "transductive" in saved["protocol"]["batchnorm"]


def test_resume_may_extend_but_not_change_the_run(tmp_path):
    out = tmp_path / "run"
    assert run("train", "--out", out, *FAST).exit_code == 0
    assert_one_line_error(run("train", "--resume", out, "--meta-lr", "0.1"), "cannot change --meta-lr")
    longer = run("train", "--resume", out, "--iterations", 3, "--quiet")
    assert longer.exit_code == 0, longer.output
    assert "trained 3 steps" in longer.output
    assert json.loads((out / "config.json").read_text())["optim"]["iterations"] == 3
