"""Config: defaults validate, every invalid value is named by its flag, round trips are exact."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from l2l_app.config import (ExperimentConfig, FIELD_GROUP, GROUPS, flag, from_dict, resolve, validate,
                            with_overrides)
from l2l_app.errors import ConfigError
from l2l_app.experiment import resolve_engine
from l2l_app.registry import ALGORITHMS


def test_defaults_validate():
    assert validate(ExperimentConfig()).algo == "protonet"


@pytest.mark.parametrize("algo", ALGORITHMS.names())
def test_every_setting_has_one_flat_name(algo):
    config = with_overrides(ExperimentConfig(), {"algo": algo})
    flat = config.flat()
    assert set(flat) <= set(FIELD_GROUP)
    assert set(ALGORITHMS[algo].setting_names()) <= set(flat)
    # one name each: no two groups share a field name (flat() would silently keep only one); +1: algo
    assert sum(len(dataclasses.fields(getattr(config, group))) for group in GROUPS) + 1 == len(flat)


@pytest.mark.parametrize("name,value,expected,algo", [
    ("ways", 1, "--ways must be >= 2", "protonet"),
    ("shots", 0, "--shots must be >= 1", "protonet"),
    ("queries", -3, "--queries must be >= 1", "protonet"),
    ("meta_batch", 0, "--meta-batch must be >= 1", "protonet"),
    ("iterations", 2.5, "--iterations must be a whole number", "protonet"),
    ("inner_lr", 0.0, "--inner-lr must be a positive number", "maml"),
    ("meta_lr", float("nan"), "--meta-lr must be a positive number", "protonet"),
    ("inner_steps", -1, "--inner-steps must be >= 0", "reptile"),
    ("inner_steps", 0, "--inner-steps must be >= 1", "maml"),
    ("algo", "mamll", "--algo 'mamll' is not one of ", None),
    ("algo", "mamll", "; did you mean 'maml'?", None),
    ("engine", "fast", "--engine 'fast' is not one of auto, loop, batched", "protonet"),
    ("dataset", "omniglott", "did you mean 'omniglot'?", "protonet"),
    ("inner_optimizer", "rmsprop", "--inner-optimizer 'rmsprop' is not one of adam, sgd", "reptile"),
])
def test_invalid_values_name_their_flag(name, value, expected, algo):
    with pytest.raises(ConfigError) as err:
        validate(with_overrides(ExperimentConfig(), {**({"algo": algo} if algo else {}), name: value}))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_all_problems_reported_at_once():
    config = with_overrides(ExperimentConfig(), {"ways": 1, "shots": 0})
    with pytest.raises(ConfigError) as err:
        validate(config)
    assert "--ways" in str(err.value) and "--shots" in str(err.value)


def test_maml_output_layer_needs_same_train_and_test_ways():
    config = with_overrides(ExperimentConfig(), {"algo": "maml", "ways": 5, "train_ways": 20})
    with pytest.raises(ConfigError, match="--train-ways must equal --ways"):
        validate(config)


def test_unknown_override_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean --inner-lr"):
        with_overrides(ExperimentConfig(), {"inner_lrr": 0.1})


def test_round_trip_and_derived_settings():
    config = with_overrides(ExperimentConfig(), {"ways": 20, "train_ways": 60, "inner_steps": 5,
                                                 "algo": "maml", "recipe": "x"})
    again = from_dict(config.to_dict())
    assert again == config
    assert again.train_ways == 60 and again.train_shots == config.task.shots
    assert resolve(again).algorithm.test_inner_steps == 5
    # an explicit test_inner_steps survives the round trip and wins over the derived value
    explicit = with_overrides(config, {"test_inner_steps": 10})
    assert from_dict(explicit.to_dict()) == explicit != config
    assert resolve(from_dict(explicit.to_dict())).algorithm.test_inner_steps == 10


def test_configs_of_older_versions_still_load():
    """config.json before settings were nested per algorithm: every algorithm setting in one group,
    null where it did not apply, meta_lr_final among the optimiser's."""
    old = {"algorithm": {"algo": "reptile", "inner_lr": 0.001, "inner_steps": 5, "test_inner_steps": 50,
                         "first_order": None, "inner_batch": 10, "inner_optimizer": "adam", "transductive": True},
           "optim": {"meta_lr": 1.0, "meta_lr_final": 0.0, "meta_batch": 5, "iterations": 10, "grad_clip": None,
                     "lr_decay_every": None, "lr_decay": None},
           "task": {"ways": 5}, "recipe": None}
    config = from_dict(old)
    assert config.algo == "reptile" and config.algorithm.meta_lr_final == 0.0
    assert config.algorithm.test_inner_steps == 50 and config.optim.meta_batch == 5
    protonet = from_dict({"algorithm": {"algo": "protonet", "inner_lr": None, "inner_steps": None}})
    assert protonet.algo == "protonet"


def test_flag_names():
    assert flag("inner_lr") == "--inner-lr"


BENCH_RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
ENGINES = ("loop", "batched")  # what resolve_engine chooses between (eager; no compile)


#: the committed benches `--engine auto` follows (others record a before/after or a parity check)
ENGINE_BENCHES = ("cpu/*/bench.json", "cpu/maml-engines-by-workload/*/bench.json", "cpu/recipe-engines-*/*/bench.json",
                  "gpu-h200/*/bench.json", "gpu-h100/*/bench.json")


def measured_engine_timings():
    """Loop-vs-batched timings committed in benchmarks/results/ (`ENGINE_BENCHES`).

    Each bench.json holds `settings` (algo, device) and `results` (one row per impl and mode,
    with `meta_batch` and `median_ms`), plus `sweeps` ({sweep name: rows}, e.g. the meta-batch
    sweep).  One entry per (file, rows, meta-batch, mode) where both engines were measured:
    (id, algo, device type, meta_batch, {engine: median ms}, captured, (ways, shots, queries) of the
    training task).  On a GPU the batched
    engine runs captured as one CUDA graph by default, so where a bench measured `batched-captured`
    that row stands for the batched engine (captured=True); older benches measured it op by op,
    which is what auto picks with --no-cuda-graph.  Other rows (torchmeta, compiled) are not
    engines `auto` can pick.
    """
    paths = [p for pattern in ENGINE_BENCHES for p in sorted(BENCH_RESULTS.glob(pattern))]
    found = []
    for path in paths:
        bench = json.loads(path.read_text())
        settings = bench["settings"]
        algo, device = settings["algo"], settings["device"]
        task = (settings["ways"], settings["shots"], settings["queries"])
        sweeps = {f"sweep-{name}": rows for name, rows in bench.get("sweeps", {}).items()}
        sources = {"results": bench["results"], **sweeps}
        for source, rows in sources.items():
            timings, captured = {}, set()
            for row in rows:
                engine = "batched" if row["impl"] == "batched-captured" else row["impl"]
                if engine in ENGINES and row["status"] == "ok":
                    key = (row["meta_batch"], row["mode"])
                    if row["impl"] == "batched-captured":
                        captured.add(key)
                    elif engine == "batched" and key in captured:
                        continue  # the captured row stands for the batched engine on a GPU
                    timings.setdefault(key, {})[engine] = row["median_ms"]
            for (meta_batch, mode), t in sorted(timings.items()):
                if set(t) == set(ENGINES):
                    name = f"{path.parent.relative_to(BENCH_RESULTS)}/{source}/mb{meta_batch}/{mode}"
                    found.append((name.replace(" ", "-"), algo, device, meta_batch, t,
                                  (meta_batch, mode) in captured, task))
    return found


MEASURED = measured_engine_timings()
#: medians this close are a tie (run-to-run noise of a shared 2-core CPU): either engine will do
TIE = 1.1


@pytest.mark.parametrize("algo,device,meta_batch,median_ms,captured,task", [m[1:] for m in MEASURED],
                         ids=[m[0] for m in MEASURED])
def test_auto_engine_picks_the_engine_measured_faster(algo, device, meta_batch, median_ms, captured, task):
    """--engine auto picks the engine with the smaller median time in each committed measurement
    of its training task (a GPU measurement of the batched engine op by op: what auto picks with
    --no-cuda-graph)."""
    graphs = {} if captured or device == "cpu" else {"cuda_graph": False}
    ways, shots, queries = task
    config = with_overrides(ExperimentConfig(), {"algo": algo, "ways": ways, "train_ways": ways, "shots": shots,
                                                 "queries": queries, **graphs})
    picked = resolve_engine(config, torch.device(device), "auto", meta_batch)
    other = next(e for e in ENGINES if e != picked)
    assert median_ms[picked] <= TIE * median_ms[other], median_ms


def test_engine_measurements_cover_every_algorithm_and_device():
    """Every engine choice an algorithm declares for `auto` (`AlgorithmSpec.auto_engine`) has a
    measurement above to check it against, and so does the meta-batch-1 CUDA point of the sweep,
    where the loop is faster (11.5 vs 19.8 ms).  (A device an algorithm declares nothing for gets
    the loop.)"""
    covered = {(algo, device) for _, algo, device, *_ in MEASURED}
    declared = {(name, device) for name, spec in ALGORITHMS.items() for device in spec.auto_engine}
    assert declared <= covered, declared - covered
    one_task = [t for name, algo, device, mb, t, captured, _ in MEASURED
                if (algo, device, mb) == ("maml", "cuda", 1) and "/sweep-meta-batch/" in name]
    assert len(one_task) == 1 and one_task[0]["loop"] < one_task[0]["batched"]
    # ...but captured as one CUDA graph the batched engine wins at one task too (ProtoNet's recipe)
    captured_one_task = [t for name, algo, device, mb, t, captured, _ in MEASURED if device == "cuda" and mb == 1
                         and captured]
    assert captured_one_task and all(t["batched"] < t["loop"] for t in captured_one_task)


def test_the_cpu_task_size_threshold_is_a_measured_size_with_a_larger_one_measured_too():
    """`cpu_batched_up_to_images` is no extrapolation: for each algorithm that sets it, the CPU
    benches measured a training task of exactly that many images (where, by the test above, the
    batched engine won) and a larger one (where the loop won)."""
    for name, spec in ALGORITHMS.items():
        up_to = spec.cpu_batched_up_to_images
        if not up_to:
            continue
        sizes = {w * (s + q) for _, algo, device, mb, _, _, (w, s, q) in MEASURED
                 if (algo, device) == (name, "cpu") and mb >= 2}
        assert up_to in sizes and max(sizes) > up_to, (name, sorted(sizes))


def test_explicit_engine_is_kept():
    for algo in ("protonet", "maml"):
        config = with_overrides(ExperimentConfig(), {"algo": algo})
        for engine in ENGINES:
            for device in ("cpu", "cuda"):
                assert resolve_engine(config, torch.device(device), engine, 1) == engine
                assert resolve_engine(config, torch.device(device), engine, 64) == engine


def test_inner_lr_default_depends_on_the_algorithm():
    maml = with_overrides(ExperimentConfig(), {"algo": "maml"})
    reptile = with_overrides(ExperimentConfig(), {"algo": "reptile"})
    assert (maml.algorithm.inner_lr, reptile.algorithm.inner_lr) == (0.4, 1e-3)
    assert with_overrides(ExperimentConfig(), {"algo": "reptile", "inner_lr": 0.01}).algorithm.inner_lr == 0.01


def test_reptiles_epsilon_defaults_to_its_optimisers_and_a_recipe_file_or_flag_overrides_it(tmp_path):
    from l2l_app.config import compose
    assert compose({"algo": "reptile"}).optim.meta_lr == 1.0  # Nichol et al.: the whole step, annealed
    assert compose({"algo": "maml"}).optim.meta_lr == compose({}).optim.meta_lr == 1e-3  # Adam's
    assert compose({"algo": "reptile", "meta_lr": 0.5}).optim.meta_lr == 0.5
    settings = tmp_path / "r.toml"
    settings.write_text('algo = "reptile"\nmeta_lr = 0.25\n')
    assert compose({}, config_file=settings).optim.meta_lr == 0.25
