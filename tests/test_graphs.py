"""The captured meta-step (`engine.graphs`), as far as a CPU can check it.

A real capture needs a GPU (benchmarks/engine_parity.py checks it there, bit for bit).  Here the
`eager` backend keeps the same protocol -- warm-up calls, static input buffers the batch and the
learner's step inputs are copied into, metrics cloned out -- and calls the learner on the buffers,
so everything but the CUDA graph itself is exercised: for every algorithm with a batched engine,
a sequence of captured steps gives exactly the gradients and metrics of plain `meta_gradient`
calls, with the learner's own random draws (Reptile's mini-batch schedules) consumed identically.
"""
from __future__ import annotations

import copy

import pytest
import torch

from l2l_app.engine.graphs import CapturedMetaGradient
from l2l_app.errors import ConfigError
from l2l_app.experiment import resolve_cuda_graph
from conftest import random_episodes
from enrol import BATCHED_ALGOS, make_learner, make_net
from test_trainer import config

pytestmark = pytest.mark.usefixtures("one_thread")


def _grads(learner):
    return [p.grad.clone() for p in learner.meta_parameters()]


@pytest.mark.parametrize("algo", BATCHED_ALGOS)
def test_captured_steps_equal_plain_meta_gradients(algo):
    net = make_net(algo)
    plain = make_learner(algo, "batched", copy.deepcopy(net))
    captured_learner = make_learner(algo, "batched", copy.deepcopy(net))
    step = CapturedMetaGradient(captured_learner, warmup=1, backend="eager")
    batches = [random_episodes(3, 2, 2, 3, 16, torch.float64, seed=s) for s in range(4)]
    kept = []
    for n, batch in enumerate(batches):
        expected = plain.meta_gradient(batch)
        got = step(batch)
        assert step.captured == (n >= 1)  # one eager warm-up call, then the static-buffer protocol
        for a, b in zip(_grads(captured_learner), _grads(plain)):
            assert torch.equal(a, b)
        assert {k: v.item() for k, v in got.items()} == {k: v.item() for k, v in expected.items()}
        kept.append(got)
    # the metrics handed out are the caller's: later steps do not overwrite earlier ones
    again = make_learner(algo, "batched", copy.deepcopy(net))
    for got, batch in zip(kept, batches):
        assert got["loss"].item() == again.meta_gradient(batch)["loss"].item()


def test_a_captured_step_refuses_another_episode_shape():
    learner = make_learner("protonet", "batched", make_net("protonet"))
    step = CapturedMetaGradient(learner, warmup=0, backend="eager")
    step(random_episodes(2, 2, 2, 3, 16, torch.float64, seed=0))
    with pytest.raises(ValueError, match="episodes of one shape: support_x was"):
        step(random_episodes(3, 2, 2, 3, 16, torch.float64, seed=1))


def test_cuda_graph_setting_resolves_and_refuses_in_one_line():
    from l2l_app.config import resolve, validate
    c = resolve(validate(config(algo="maml", train_ways=None)))
    assert resolve_cuda_graph(c, torch.device("cpu"), "batched") is False
    assert resolve_cuda_graph(c, torch.device("cuda"), "batched") is True  # the default on a GPU
    assert resolve_cuda_graph(c, torch.device("cuda"), "loop") is False
    forced = resolve(validate(config(algo="maml", train_ways=None, cuda_graph=True)))
    with pytest.raises(ConfigError, match="--cuda-graph needs a GPU, but this run is on cpu"):
        resolve_cuda_graph(forced, torch.device("cpu"), "batched")
    with pytest.raises(ConfigError, match="runs on the loop engine here; pass --engine batched"):
        resolve_cuda_graph(forced, torch.device("cuda"), "loop")
    off = resolve(validate(config(algo="maml", train_ways=None, cuda_graph=False)))
    assert resolve_cuda_graph(off, torch.device("cuda"), "batched") is False


def test_metrics_read_every_few_steps_log_the_same_rows(tmp_path):
    """Reading the device metrics every 7 steps instead of every step changes nothing in the log."""
    from test_trainer import train_log
    from l2l_app.trainer import Trainer
    every = Trainer(config(iterations=9, log_every=1), tmp_path / "every", progress=False)
    every.fit()
    batched = Trainer(config(iterations=9, log_every=7), tmp_path / "batched", progress=False)
    batched.fit()
    assert train_log(tmp_path / "every") == train_log(tmp_path / "batched")
    assert [r["step"] for r in train_log(tmp_path / "every") if r["kind"] == "train"] == list(range(1, 10))


def test_cuda_graph_on_a_cpu_is_refused_and_leaves_an_existing_run_as_it_was(tmp_path):
    """`train --cuda-graph` on a CPU: one line, exit 2, and neither a new run nor a resumed one is touched."""
    from conftest import cli_run, refused
    from l2l_app.trainer import Trainer
    run = tmp_path / "run"
    Trainer(config(iterations=2, val_every=2, checkpoint_every=2), run, progress=False).fit()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    refused(cli_run("train", "--resume", run, "--cuda-graph"), "--cuda-graph needs a GPU", "drop --cuda-graph")
    refused(cli_run("train", "--out", run, "--overwrite", "--algo", "maml", "--cuda-graph", "--device", "cpu"),
            "--cuda-graph needs a GPU, but this run is on cpu")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
