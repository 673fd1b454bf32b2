"""Evaluation: the episode set is drawn once, is the same for every engine, and is scored by the
batched engine wherever the algorithm has one -- with the loop engine's numbers."""
from __future__ import annotations

import copy

import pytest
import torch

from l2l_app.config import resolve, validate
from l2l_app.data import build_task_source
from l2l_app.evaluation import EpisodeSet, evaluate
from l2l_app.experiment import Experiment
from enrol import BATCHED_ALGOS
from test_trainer import config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def val_split():
    x = Experiment.build(config(algo="protonet"), device="cpu")
    return x.load_split("val", progress=False)


def test_the_episode_set_is_the_sources_stream_drawn_at_once(val_split):
    """Drawing 7 episodes at once from learn2learn's sampler (what eval and validation use) gives
    the episodes that 3 + 4 successive draws give: results of earlier versions, which drew 50 at
    a time, stay comparable."""
    def source():
        return build_task_source("l2l", val_split, 5, 1, 2, seed=11)
    fixed = EpisodeSet(source(), 7)
    stream = source()
    parts = [stream.sample_indices(3), stream.sample_indices(4)]
    assert torch.equal(fixed.support_idx, torch.cat([p[0] for p in parts]))
    assert torch.equal(fixed.query_idx, torch.cat([p[1] for p in parts]))
    batches = list(fixed.batches(3, limit=5))
    assert [b.num_tasks for b in batches] == [3, 2]
    again = source().sample(5)
    assert torch.equal(torch.cat([b.support_x for b in batches]), again.support_x)
    assert torch.equal(torch.cat([b.query_y for b in batches]), again.query_y)


def test_an_episode_set_from_the_tensor_sampler_is_fixed_by_its_seed(val_split):
    first, second = (EpisodeSet(build_task_source("tensor", val_split, 5, 1, 2, seed=s), 6) for s in (4, 4))
    other = EpisodeSet(build_task_source("tensor", val_split, 5, 1, 2, seed=5), 6)
    assert torch.equal(first.support_idx, second.support_idx) and torch.equal(first.query_idx, second.query_idx)
    assert not torch.equal(first.support_idx, other.support_idx)


@pytest.mark.parametrize("algo", BATCHED_ALGOS)
def test_a_loop_run_scored_by_the_batched_engine_gets_the_loop_numbers(val_split, algo):
    """The batched twin of a loop learner (same model, the loop learner's extra state: Meta-SGD's
    rates, changed here from their start) scores every episode as the loop learner does, in float64.
    (On a GPU the batched engine scores every run: `AlgorithmSpec.eval_engine`.)"""
    c = resolve(validate(config(algo=algo, hidden=8)))
    x = Experiment.build(c, device="cpu", engine="loop")
    x.model.double()
    for name, value in x.learner.extra_state().items():
        if isinstance(value, dict):  # learned per-parameter rates: move them off their initial value
            x.learner.load_extra_state({name: {k: v * 1.5 for k, v in value.items()}})
    twin = x.evaluation_learner("batched")
    assert twin.engine == "batched" and twin.model is x.model
    split = copy.copy(val_split)
    source = build_task_source("l2l", split, c.task.ways, c.task.shots, c.task.queries, seed=3)
    episodes = EpisodeSet(source, 6)

    class Float64:
        """The learner seeing its episodes in float64."""
        def __init__(self, learner):
            self.learner = learner

        def query_accuracy(self, batch):
            return self.learner.query_accuracy(batch.to("cpu", torch.float64))

    by_loop = evaluate(Float64(x.learner), episodes, 6, batch_size=4, progress=False)
    by_twin = evaluate(Float64(twin), episodes, 6, batch_size=4, progress=False)
    assert by_loop.accuracies == by_twin.accuracies


def test_the_engine_that_scores_episodes_is_the_one_measured_faster():
    """`AlgorithmSpec.eval_engine` on the CPU agrees with benchmarks/results/cpu/eval_engines*.json
    (every algorithm, 1 and 2 threads), and a CPU experiment scores with it whatever engine trained."""
    import json
    from pathlib import Path
    from l2l_app.registry import ALGORITHMS
    results = sorted((Path(__file__).resolve().parent.parent / "benchmarks/results/cpu").glob("eval_engines*.json"))
    assert results
    for path in results:
        rows = json.loads(path.read_text())["rows"]
        assert {r["algo"] for r in rows} == set(ALGORITHMS.names()), path
        for r in rows:
            ms = r["ms_per_episode"]
            assert ALGORITHMS[r["algo"]].eval_engine["cpu"] == min(ms, key=ms.get), (path.name, r)
    for algo in BATCHED_ALGOS:
        for engine in ("loop", "batched"):
            x = Experiment.build(resolve(validate(config(algo=algo, hidden=8))), device="cpu", engine=engine)
            assert x.evaluation_learner().engine == ALGORITHMS[algo].eval_engine["cpu"]
