"""Outputs are checked before the work and replaced only after it: `eval`, `bench` and `report`
refuse an unwritable place with one line (exit 2) before evaluating, timing or plotting, a refused
command leaves nothing on disk, and an earlier bench or report is replaced only with --overwrite,
once the new files are written.

Running as root ignores permission bits, so an unwritable folder is simulated by a probe or a
write that raises PermissionError, or made real with a path under a regular file (--out FILE/sub).
"""
from __future__ import annotations

import errno
import os
import pathlib
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

from conftest import cli_run, refused
from l2l_app import evaluation, experiment, fileio
from l2l_app.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

#: a bench of a few milliseconds: random images, tiny network, the loop engine, one timed call
BENCH = ["bench", "--synthetic", "--device", "cpu", "--hidden", "4", "--queries", "2", "--meta-batch", "2",
         "--warmup", "0", "--repeats", "1", "--impl", "loop"]


def class_folders(root: Path, n_classes: int, n_images: int = 3, size: int = 16) -> Path:
    """root/class NN/imgK.png of random pixels (a seeded split: 20% of the classes are test)."""
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        (root / f"class {c:02d}").mkdir(parents=True)
        for k in range(n_images):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / f"class {c:02d}" / f"img{k}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A ProtoNet run on 10 class folders (2 test classes), trained in about a second."""
    base = tmp_path_factory.mktemp("safety")
    root = class_folders(base / "data", 10)
    out = base / "RUN"
    result = cli_run("train", "--algo", "protonet", "--dataset", "folder", "--data-root", root, "--image-size", 16,
                     "--hidden", 4, "--iterations", 2, "--val-every", 2, "--val-episodes", 2, "--ways", 2,
                     "--shots", 1, "--queries", 1, "--device", "cpu", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def unwritable(monkeypatch, folder: Path) -> None:
    """Writing a (temporary) file into `folder` fails as in a chmod 555 folder for a normal user."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir) / "probe"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def never(monkeypatch, target, name: str) -> None:
    """`target.name` fails the test if called: the command must stop before that work."""
    def called(*args, **kwargs):
        raise AssertionError(f"{name} was called: the refusal came after the work")
    monkeypatch.setattr(target, name, called)


def snapshot(folder: Path) -> Dict[str, bytes]:
    """Every file under `folder` (hidden ones too), relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- eval
def test_eval_of_a_read_only_run_is_refused_before_evaluating(run, monkeypatch):
    before = snapshot(run)
    unwritable(monkeypatch, run)
    never(monkeypatch, experiment.Experiment, "from_run")
    err = refused(cli_run("eval", run, "--episodes", 2, "--device", "cpu", "--quiet"),
                  f"cannot write the run directory {run}", "eval-test-best-2w1s1q-2ep-seed", "Permission denied",
                  "make it writable")
    assert "Traceback" not in err and snapshot(run) == before


def test_eval_without_saving_needs_no_writable_run(run, monkeypatch):
    unwritable(monkeypatch, run)
    result = evaluation.evaluate_run(run, episodes=2, device="cpu", progress=False, save=False)
    assert result.episodes == 2 and not list(run.glob("eval-*.json"))


def test_eval_ways_above_the_split_classes_is_refused_before_decoding(run, tmp_path, monkeypatch):
    """3-way episodes on other data with 2 test classes are refused before any image of it is
    decoded (it gets no split cache), and so are they on the run's own data (never loaded)."""
    other = class_folders(tmp_path / "other", 10)
    result = cli_run("eval", run, "--ways", 3, "--episodes", 2, "--device", "cpu", "--data-root", other, "--quiet")
    refused(result, "--ways 3 exceeds the 2 classes of the folder test split; use at most 2")
    assert not (other / ".cache").exists() and not list(run.glob("eval-folder-*.json"))
    never(monkeypatch, experiment, "load_config_split")
    with pytest.raises(ConfigError, match="--ways 3 exceeds the 2 classes of the folder test split"):
        evaluation.evaluate_run(run, ways=3, episodes=2, device="cpu", progress=False)


# ----------------------------------------------------------------------------- unwritable --out
@pytest.mark.parametrize("command", ["bench", "report"])
def test_out_under_a_file_is_refused_before_any_work(run, tmp_path, command, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    args = BENCH if command == "bench" else ["report", run]
    result = cli_run(*args, "--out", afile / "sub")
    refused(result, f"cannot write --out {afile / 'sub'}: {afile} is a file; choose another --out")
    assert "[bench]" not in result.output and sorted(tmp_path.iterdir()) == [afile]


@pytest.mark.parametrize("command", ["bench", "report"])
def test_unwritable_out_is_refused_before_timing_or_plotting(run, tmp_path, command, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    unwritable(monkeypatch, parent)
    from l2l_app import report
    from l2l_app.bench import harness
    never(monkeypatch, harness.Bench, "__init__")
    never(monkeypatch, report, "plot_learning_curves")
    args = BENCH if command == "bench" else ["report", run]
    refused(cli_run(*args, "--out", parent / "b"),
            f"cannot write --out {parent / 'b'} (in {parent}): Permission denied; choose another --out or fix its "
            f"permissions")
    assert not list(parent.iterdir())


def test_an_output_write_failing_later_is_one_line_and_leaves_no_folder(run, tmp_path, monkeypatch):
    """The CLI's safety net: an OSError naming a file, raised while writing, is `error: cannot
    write FILE: ...` with exit 2; the folder the failed report created is removed again."""
    real = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "report.md":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    out = tmp_path / "reports" / "r1"
    refused(cli_run("report", run, "--out", out), "cannot write ", "report.md: Permission denied; choose another "
                                                                   "--out or fix its permissions")
    assert not (tmp_path / "reports").exists()


def test_an_oserror_without_a_file_is_not_disguised(run, tmp_path, monkeypatch):
    from l2l_app import report

    def broken(*args, **kwargs):
        raise OSError("no file involved")

    monkeypatch.setattr(report, "build_report", broken)
    result = cli_run("report", run, "--out", tmp_path / "r")
    assert result.exit_code == 1 and isinstance(result.exception, OSError)


def test_atomic_write_into_an_unwritable_folder_is_a_one_line_error(tmp_path, monkeypatch):
    unwritable(monkeypatch, tmp_path)
    with pytest.raises(CheckpointError, match=r"could not write .*x\.json: Permission denied; choose another --out "
                                              r"or fix its permissions"):
        fileio.write_json(tmp_path / "x.json", {})
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- refused bench leaves nothing
def test_bench_refused_for_ways_above_the_classes_creates_no_folder(synthetic_data_root, tmp_path):
    result = cli_run("bench", "--data-root", synthetic_data_root, "--device", "cpu", "--ways", 17, "--hidden", 4,
                     "--queries", 2, "--meta-batch", 2, "--warmup", 0, "--repeats", 1, "--impl", "loop",
                     "--out", tmp_path / "bench" / "b1")
    refused(result, "--ways 17 exceeds the 16 classes of the omniglot train split")
    assert "[bench]" not in result.output and not (tmp_path / "bench").exists()


# ----------------------------------------------------------------------------- --overwrite
def test_bench_replaces_an_earlier_bench_only_with_overwrite_and_after_the_new_one(tmp_path, monkeypatch):
    out = tmp_path / "b"
    assert cli_run(*BENCH, "--sweep", "meta-batch=1,2", "--out", out).exit_code == 0
    first = snapshot(out)
    assert set(first) == {"bench.json", "bench.md", "sweep-meta-batch.png"}
    refused(cli_run(*BENCH, "--seed", 1, "--out", out), f"--out {out} already holds the results of an earlier "
                                                         "bench (bench.json, bench.md); pass --overwrite")
    assert snapshot(out) == first
    # the new bench fails once its results are computed: the earlier one is untouched
    from l2l_app import report

    def broken(*args, **kwargs):
        raise RuntimeError("rendering failed")

    with monkeypatch.context() as m:
        m.setattr(report, "bench_markdown", broken)
        failed = cli_run(*BENCH, "--seed", 1, "--overwrite", "--out", out)
    assert failed.exit_code == 1 and isinstance(failed.exception, RuntimeError)
    assert {k: v for k, v in snapshot(out).items() if k != "bench.partial.json"} == first
    result = cli_run(*BENCH, "--seed", 1, "--overwrite", "--out", out)
    assert result.exit_code == 0, result.output
    now = snapshot(out)
    assert set(now) == {"bench.json", "bench.md"}  # the sweep's plot went with the bench that made it
    assert now["bench.json"] != first["bench.json"] and b'"seed": 1' in now["bench.json"]


def test_report_replaces_an_earlier_report_only_with_overwrite_and_after_the_new_one(run, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    assert cli_run("report", run, "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    os.utime(out / "report.md", (0, 0))
    first = snapshot(out)
    assert {"report.md", "report.html", "learning_curves.png"} <= set(first)
    refused(cli_run("report", run, "--out", out), f"--out {out} already holds the results of an earlier report "
                                                  "(report.md, report.html); pass --overwrite")
    from l2l_app import report

    def broken(*args, **kwargs):
        raise RuntimeError("rendering failed")

    with monkeypatch.context() as m:
        m.setattr(report, "html_report", broken)
        failed = cli_run("report", run, "--out", out, "--overwrite")
    assert failed.exit_code == 1 and isinstance(failed.exception, RuntimeError)
    assert snapshot(out) == first and (out / "report.md").stat().st_mtime == 0
    result = cli_run("report", run, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert set(snapshot(out)) == set(first) and (out / "notes.txt").read_text() == "mine"
    assert (out / "report.md").stat().st_mtime > 0
