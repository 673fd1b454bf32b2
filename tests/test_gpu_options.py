"""The GPU speed options as a CPU can check them: `--conv-impl` and `--cudnn-benchmark` reach the
model and torch and are recorded in run.json, bad values are refused in one line, and
benchmarks/reproduce.py's `--pick` turns bench results into training flags by its stated rule."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from l2l_app.backbones import TaskConv2d, set_conv_impl
from l2l_app.experiment import PLAIN_TUNING, Experiment, resolve_tuning
from l2l_app.registry import ALGORITHMS
from conftest import cli_run, random_episodes, refused
from enrol import ENGINE_CASES, make_learner, make_net
from l2l_app.backbones import bn_invariant_biases
from test_trainer import config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from reproduce import BUDGET_SHARE, fit_iterations, pick_train_args, table_rows  # noqa: E402


@pytest.fixture
def cudnn_benchmark_restored():
    before = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = before


def test_conv_impl_and_cudnn_benchmark_reach_the_model_and_torch(cudnn_benchmark_restored):
    x = Experiment.build(config(algo="maml", conv_impl="unfold", cudnn_benchmark=True), device="cpu")
    convs = [m for m in x.model.modules() if isinstance(m, TaskConv2d)]
    assert len(convs) == 4 and all(m.impl == "unfold" for m in convs)
    assert torch.backends.cudnn.benchmark is True
    assert "unfold convolutions" in x.describe_execution()
    assert "--cudnn-benchmark asked for but without effect on cpu" in x.describe_execution()  # run.json's word
    tf32 = Experiment.build(config(algo="maml", tf32=True), device="cpu").describe_execution()
    assert "--tf32 asked for but without effect on cpu" in tf32 and "TF32 convolutions" not in tf32
    plain = Experiment.build(config(algo="maml"), device="cpu")
    assert "without effect" not in plain.describe_execution()
    assert all(m.impl == "native" for m in plain.model.modules() if isinstance(m, TaskConv2d))
    assert torch.backends.cudnn.benchmark is False


def test_train_with_unfold_convolutions_records_it(tmp_path, cudnn_benchmark_restored):
    run = tmp_path / "run"
    result = cli_run("train", "--algo", "protonet", "--hidden", "8", "--ways", "3", "--shots", "1", "--queries", "2",
                     "--iterations", "2", "--val-every", "2", "--val-episodes", "2", "--device", "cpu",
                     "--conv-impl", "unfold", "--quiet", "--out", run)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["run"]["conv_impl"] == "unfold"
    assert "unfold convolutions" in json.loads((run / "run.json").read_text())["execution"]


CUDA = torch.device("cuda")  # resolve_tuning only reads the device's type: no GPU needed


@pytest.fixture
def gpu_compile_ok(monkeypatch):
    """As on a machine with Triton and a C compiler (what the tuned GPU step's torch.compile needs)."""
    from l2l_app import runtime
    monkeypatch.setattr(runtime, "gpu_compile_problem", lambda: None)


def tuned(cfg, device=CUDA, engine="batched", training=True):
    resolved, filled = resolve_tuning(cfg, device, engine, training)
    values = {name: getattr(resolved.run, name) for name in PLAIN_TUNING}
    return values, tuple(name for name in filled if values[name] != PLAIN_TUNING[name])


def built_on_a_gpu(**settings) -> Experiment:
    """The Experiment a GPU training run of `settings` would get (built here on the CPU, then given
    what `resolve_tuning` picks for CUDA and its convolutions' impl)."""
    x = Experiment.build(config(**settings), device="cpu", training=True)
    cfg, filled = resolve_tuning(config(**settings), CUDA, "batched")
    set_conv_impl(x.model, cfg.run.conv_impl)
    return dataclasses.replace(x, config=cfg, filled=filled, device=CUDA, engine="batched")


def test_engine_auto_trains_each_algorithm_on_a_gpu_with_its_measured_fastest_step(gpu_compile_ok):
    assert tuned(config(algo="maml")) == ({"compile": True, "cudnn_benchmark": False, "conv_impl": "unfold"},
                                          ("compile", "conv_impl"))
    assert tuned(config(algo="maml", first_order=True))[0]["conv_impl"] == "unfold"  # FOMAML: MAML's spec
    assert tuned(config(algo="protonet")) == ({"compile": True, "cudnn_benchmark": True, "conv_impl": "native"},
                                              ("compile", "cudnn_benchmark"))
    untuned = [name for name, spec in ALGORITHMS.items() if not spec.gpu_tuning]
    assert "reptile" in untuned
    for algo in untuned:
        assert tuned(config(algo=algo)) == (PLAIN_TUNING, ())


@pytest.mark.parametrize("where", [dict(device=torch.device("cpu")), dict(engine="loop"), dict(training=False)])
def test_tuning_is_for_training_with_the_batched_engine_on_a_gpu(where):
    # on a CPU, with the loop engine, or for an evaluation (not the compiled step): the plain settings
    assert tuned(config(algo="maml"), **where) == (PLAIN_TUNING, ())


def test_tuning_never_overrides_a_setting_the_user_gave(gpu_compile_ok):
    assert tuned(config(algo="maml", engine="batched")) == (PLAIN_TUNING, ())  # not --engine auto
    # unfold pays only compiled: --no-compile keeps the plain convolutions too
    assert tuned(config(algo="maml", compile=False)) == (PLAIN_TUNING, ())
    assert tuned(config(algo="maml", conv_impl="native")) == (PLAIN_TUNING, ())
    assert tuned(config(algo="maml", conv_impl="unfold")) == (
        {"compile": True, "cudnn_benchmark": False, "conv_impl": "unfold"}, ("compile",))
    assert tuned(config(algo="maml", cudnn_benchmark=True)) == (
        {"compile": True, "cudnn_benchmark": True, "conv_impl": "unfold"}, ("compile", "conv_impl"))
    assert tuned(config(algo="protonet", conv_impl="channels-last")) == (
        {"compile": True, "cudnn_benchmark": True, "conv_impl": "channels-last"}, ("compile", "cudnn_benchmark"))


def test_a_tuned_run_says_why_and_records_its_settings_unset(gpu_compile_ok, cudnn_benchmark_restored):
    x = Experiment.build(config(algo="maml"), device="cpu", training=True)
    assert x.tuned == () and "by --engine auto" not in x.describe_execution()
    x = built_on_a_gpu(algo="maml")
    assert ("--compile, --conv-impl unfold by --engine auto: the fastest maml training step measured on a GPU"
            in x.describe_execution())
    recorded = x.recorded_config().run
    assert (recorded.compile, recorded.conv_impl, recorded.cudnn_benchmark) == (None, None, None)


def test_without_triton_or_a_c_compiler_a_gpu_run_trains_the_plain_step_and_says_why(monkeypatch,
                                                                                       cudnn_benchmark_restored):
    from l2l_app import runtime
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: None if name == "triton" else object())
    assert runtime.gpu_compile_problem() == "Triton is not installed"
    assert tuned(config(algo="maml")) == (PLAIN_TUNING, ())  # a default run must not fail at compilation
    gpu = built_on_a_gpu(algo="maml")
    assert ("not the fastest maml step measured on a GPU, which is compiled: Triton is not installed"
            in gpu.describe_execution())
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: object())
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    assert "no C compiler" in runtime.gpu_compile_problem()
    monkeypatch.setenv("CC", "/opt/cc")
    assert runtime.gpu_compile_problem() is None


def test_validation_scores_with_the_plain_convolutions_where_tuning_picked_unfold(gpu_compile_ok,
                                                                                  cudnn_benchmark_restored):
    plain = Experiment.build(config(algo="maml"), device="cpu", training=True)
    with plain.evaluation_mode():
        assert all(m.impl == "native" for m in plain.model.modules() if isinstance(m, TaskConv2d))
    x = built_on_a_gpu(algo="maml")
    convs = [m for m in x.model.modules() if isinstance(m, TaskConv2d)]
    assert [m.impl for m in convs] == ["unfold"] * 4
    with x.evaluation_mode():
        assert [m.impl for m in convs] == ["native"] * 4
    assert [m.impl for m in convs] == ["unfold"] * 4
    given = Experiment.build(config(algo="maml", conv_impl="unfold"), device="cpu", training=True)
    with given.evaluation_mode():  # a user's own --conv-impl holds for validation too
        assert all(m.impl == "unfold" for m in given.model.modules() if isinstance(m, TaskConv2d))


def test_a_cpu_run_records_the_tuned_settings_unset_and_resumes(tmp_path):
    run = tmp_path / "run"
    args = ("--algo", "maml", "--hidden", "8", "--ways", "3", "--shots", "1", "--queries", "1", "--meta-batch", "2",
            "--val-every", "2", "--val-episodes", "2", "--device", "cpu", "--quiet")
    assert cli_run("train", *args, "--iterations", "2", "--out", run).exit_code == 0
    saved = json.loads((run / "config.json").read_text())["run"]
    assert (saved["compile"], saved["cudnn_benchmark"], saved["conv_impl"]) == (None, None, None)
    assert json.loads((run / "run.json").read_text())["compile"] is False
    result = cli_run("train", "--resume", run, "--iterations", "4", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4


GPU_RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "gpu-h200"


@pytest.mark.parametrize("algo", [name for name, spec in ALGORITHMS.items() if spec.gpu_tuning])
def test_each_gpu_tuning_is_the_fastest_configuration_its_committed_benches_measured(algo):
    """What --engine auto trains with on a GPU is what `reproduce.py --pick` reads from the committed
    benches of the algorithm's Omniglot 5w1s recipe (each one cuDNN setting and convolution impl)."""
    benches = [json.loads(p.read_text()) for p in sorted(GPU_RESULTS.glob(f"bench-{algo}-omniglot-5w1s*/bench.json"))]
    assert len(benches) >= 3, f"no committed GPU benches of {algo}'s configurations"
    tuning = {**PLAIN_TUNING, **ALGORITHMS[algo].gpu_tuning}
    expected = ((["--compile"] if tuning["compile"] else [])
                + (["--cudnn-benchmark"] if tuning["cudnn_benchmark"] else [])
                + ([f"--conv-impl={tuning['conv_impl']}"] if tuning["conv_impl"] != "native" else []))
    assert pick_train_args(benches) == expected


def test_help_names_the_tuned_defaults():
    result = cli_run("train", "--help")
    assert "default: no-compile; with --engine auto, training on a GPU: maml, protonet compile" in " ".join(
        result.output.split())


def test_a_bad_conv_impl_is_refused_in_one_line(tmp_path):
    refused(cli_run("train", "--algo", "protonet", "--conv-impl", "fft", "--out", tmp_path / "run"),
            "--conv-impl", "fft", "native", "channels-last", "unfold")
    assert not (tmp_path / "run").exists()


def _bench(rows, cudnn=False, conv="native", tf32=False):
    return {"settings": {"cudnn_benchmark": cudnn, "conv_impl": conv, "tf32": tf32},
            "results": [{"impl": impl, "mode": mode, "status": "ok", "median_ms": ms} for impl, mode, ms in rows]}


E2E = "end to end"


def test_pick_takes_the_fastest_end_to_end_configuration():
    plain = _bench([("batched-captured-step", E2E, 5.0), ("batched-compiled-captured-step", E2E, 4.0)])
    tuned = _bench([("batched-captured-step", E2E, 3.0), ("batched-compiled-captured-step", E2E, 2.0)], cudnn=True)
    unfold = _bench([("batched-captured-step", E2E, 3.5)], conv="unfold")
    # compiled 2.0 < 0.75 * 3.0: compile pays; the autotuned bench won
    assert pick_train_args([plain, tuned, unfold]) == ["--compile", "--cudnn-benchmark"]
    # compiled 2.4 is not 25% under 3.0: no compile
    tuned_close = _bench([("batched-captured-step", E2E, 3.0), ("batched-compiled-captured-step", E2E, 2.4)],
                         cudnn=True)
    assert pick_train_args([plain, tuned_close]) == ["--cudnn-benchmark"]
    assert pick_train_args([plain, _bench([("batched-captured-step", E2E, 1.0)], conv="unfold")]) == \
        ["--conv-impl=unfold"]
    # a TF32 bench is for the record: the reproduction trains in fp32 whatever it measured
    # (taken, its 0.5 ms would win with --cudnn-benchmark; skipped, plain's uncompiled row stands)
    assert pick_train_args([plain, _bench([("batched-captured-step", E2E, 0.5)], cudnn=True, tf32=True)]) == []
    # compute-only rows, failed rows and impls that training cannot be are ignored
    ignored = _bench([("batched-captured-step", "compute only", 0.1), ("batched", E2E, 0.2),
                      ("loop", E2E, 0.3)], cudnn=True)
    assert pick_train_args([plain, ignored]) == []
    assert pick_train_args([]) == []


@pytest.mark.parametrize("conv_impl", ["channels-last", "unfold"])
@pytest.mark.parametrize("algo,engine", ENGINE_CASES)
def test_every_engine_gives_the_same_meta_gradient_with_any_convolution(algo, engine, conv_impl):
    """float64: the meta-gradient of every algorithm on every engine (learn2learn's clones, torch.func,
    ProtoNet's folded batch) with NHWC or im2col convolutions equals the native one to rounding
    (< 1e-10 relative, as the engines' parity).  Conv biases directly before batch norm have an
    exactly-zero gradient; what is computed for them is rounding noise (amplified by an inner Adam:
    test_every_algorithm), so they are only held below 1e-6 of the largest element."""
    import copy
    net = make_net(algo)
    invariant = bn_invariant_biases(net)
    grads = []
    for impl in ("native", conv_impl):
        learner = make_learner(algo, engine, set_conv_impl(copy.deepcopy(net), impl))
        learner.meta_gradient(random_episodes(3, 2, 2, 2, 16, torch.float64, seed=4))
        grads.append(dict(learner.named_meta_parameters()))
    names = [n for n in grads[0] if n not in invariant]
    native, other = (torch.cat([g[n].grad.reshape(-1) for n in names]) for g in grads)
    assert ((other - native).norm() / native.norm()).item() < 1e-10
    scale = native.abs().max()
    for n in invariant:
        assert all(g[n].grad.abs().max() <= 1e-6 * scale for g in grads), n


def _calibration_rows(steps: int, first: float, step: float, validation: float, val_every: int = 500) -> list:
    """metrics.jsonl rows of a run whose steps take `step` s (the first `first` s) and whose
    validations take `validation` s: a train row's time is before its step's validation."""
    rows, now = [], 0.0
    for n in range(1, steps + 1):
        now += first if n == 1 else step
        rows.append({"kind": "train", "step": n, "time": round(now, 6)})
        if n % val_every == 0:
            rows.append({"kind": "val", "step": n, "time": round(now, 6)})
            now += validation
    return rows


def _run_seconds(n: int, first: float, step: float, validation: float, val_every: int = 500) -> float:
    return first + (n - 1) * step + (n // val_every) * validation


def test_fit_iterations_ends_the_schedule_within_the_budget():
    first, step, validation, budget = 4.0, 0.0025, 3.0, 240.0
    fit = fit_iterations(_calibration_rows(600, first, step, validation), budget, 500, most=100_000)
    n = fit["iterations"]
    assert fit["step_seconds"] == pytest.approx(step) and fit["validation_seconds"] == pytest.approx(validation)
    assert fit["first_step_seconds"] == pytest.approx(first) and fit["calibration_steps"] == 600
    # the most steps whose planned time (validations spread per step) fits the budget's share
    assert _run_seconds(n, first, step, validation) <= BUDGET_SHARE * budget + validation
    assert first + n * (step + validation / 500) > BUDGET_SHARE * budget
    assert 24_000 < n < 26_000  # 212 s at 2.5 + 3000/500 ms per step: well short of the recipe's 100,000


def test_fit_iterations_caps_at_the_recipes_iterations_and_times_without_a_validation():
    fast = fit_iterations(_calibration_rows(600, 1.0, 0.0001, 0.5), 240.0, 500, most=100_000)
    assert fast["iterations"] == 100_000  # the budget holds the recipe's whole schedule: nothing is cut
    slow = fit_iterations(_calibration_rows(50, 2.0, 1.2, 10.0), 60.0, 500, most=100_000)
    assert slow["validation_seconds"] is None  # ended before its first validation: counted as free
    assert slow["iterations"] == int((BUDGET_SHARE * 60.0 - 2.0) // 1.2) + 1
    with pytest.raises(SystemExit, match="2 steps"):
        fit_iterations(_calibration_rows(2, 2.0, 1.2, 10.0), 60.0, 500, most=100_000)


ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_reproduction_table_holds_the_committed_records():
    """Every record of a committed gpu-*/reproduction.json is a row of the README's table as
    `reproduce.py --table` writes it: the README's figures are the committed results'."""
    paths = sorted((ROOT / "benchmarks" / "results").glob("gpu-*/reproduction.json"))
    assert paths
    readme = set((ROOT / "README.md").read_text().splitlines())
    for path in paths:
        for row in table_rows(json.loads(path.read_text())):
            assert row in readme, f"{path.relative_to(ROOT)}: README lacks {row}"


def test_a_fitted_run_beating_its_paper_is_tabled_as_such():
    record = {"recipe": "reptile-omniglot-5w1s", "shape": "5w1s", "accuracy": 97.9, "ci95": 0.2, "paper": 97.68,
              "shortfall": 0.0, "minutes": 4.0, "steps": 31000, "ms_per_step": 7.01, "trained_together_with": [],
              "iterations_fitted_to_budget": {"iterations": 31000},
              "command": "l2l-app train --recipe reptile-omniglot-5w1s --cudnn-benchmark --iterations 31000 "
                         "--time-budget 4 --out runs/r && l2l-app eval runs/r --ways 5 --shots 1"}
    assert table_rows([record]) == ["| Reptile Omniglot 5w1s (`--cudnn-benchmark`) | 4.0 | 31,000 (of 31,000 fitted "
                                    "to the budget) | 7.0 | 97.90 ± 0.20 | 97.68 ± 0.04 | none |"]


def test_table_of_a_missing_file_is_refused_in_one_line(tmp_path):
    import subprocess
    missing = tmp_path / "reproduction.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), "--table", str(missing)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and not missing.exists()
    assert f"--table {missing}: no such file; pass a reproduction.json" in done.stderr.splitlines()[-1]
