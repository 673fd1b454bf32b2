"""The captured steps (`engine.graphs`), as far as a CPU can check them.

A real capture needs a GPU (benchmarks/engine_parity.py checks it there).  Here the `eager`
backend keeps the same protocol -- warm-up calls, static input buffers the inputs are copied
into, metrics cloned out, captures counted -- and calls the function on the buffers, so
everything but the CUDA graph itself is exercised: for every algorithm with a batched engine, a
sequence of captured meta-gradients gives exactly the gradients and metrics of plain
`meta_gradient` calls, with the learner's own random draws (Reptile's mini-batch schedules)
consumed identically; a sequence of captured whole training steps (sampler gather, meta-gradient,
clipping, the optimiser step) gives exactly the weights, metrics and sampler state of eager steps,
and the trainer running them writes the run an uncaptured trainer writes, resumed or not.  A
checkpoint's optimiser state resumes whether the step it continues is captured or not.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

from l2l_app import experiment
from l2l_app.config import resolve, validate
from l2l_app.data.samplers import build_task_source
from l2l_app.engine.graphs import CapturedMetaGradient, CapturedTrainingStep
from l2l_app.errors import ConfigError
from l2l_app.experiment import build_optimizer, resolve_cuda_graph
from l2l_app.registry import ALGORITHMS
from conftest import make_tiny_split, random_episodes
from enrol import BATCHED_ALGOS, SIZE, WAYS, make_learner, make_net
from test_trainer import config, train_log, weights

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
    with pytest.raises(ValueError, match=r"episodes of one shape: \(ways, shots, queries\) was \(2, 2, 2\)"):
        step(random_episodes(3, 2, 2, 3, 16, torch.float64, seed=1))
    with pytest.raises(ValueError, match="inputs of one shape: support_x was"):  # another meta-batch size
        step(random_episodes(2, 2, 2, 4, 16, torch.float64, seed=1))


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


#: the algorithms whose whole training step can be captured: a graph-safe optimiser
WHOLE_STEP_ALGOS = [a for a in BATCHED_ALGOS if ALGORITHMS[a].optimizer.capturable]


def _source(seed: int = 3):
    return build_task_source("tensor", make_tiny_split(num_classes=8, per_class=6, size=SIZE), WAYS, 1, 2, seed=seed)


def _optimizer(algo: str, learner, capturable: bool = False, **optim):
    """The algorithm's meta-optimiser and scheduler (Adam; Reptile's annealed SGD) for `learner`."""
    c = resolve(validate(config(algo=algo, train_ways=None, ways=WAYS, **optim)))
    return build_optimizer(c, learner, capturable=capturable)


@pytest.mark.parametrize("algo", WHOLE_STEP_ALGOS)
def test_captured_training_steps_equal_eager_steps(algo):
    """sample -> meta-gradient -> clip -> optimiser step -> schedule, five times, with the optimiser
    built graph-safe (Reptile: epsilon a tensor, annealed in place): the captured protocol (one
    warm-up, then static buffers, one capture) leaves the weights, the sampler and the learner's
    own generator exactly where eager steps do."""
    net = make_net(algo, torch.float32)
    plain, held = (make_learner(algo, "batched", copy.deepcopy(net)) for _ in range(2))
    (plain_opt, plain_sched), (held_opt, held_sched) = (_optimizer(algo, x, capturable=True, iterations=5)
                                                        for x in (plain, held))
    plain_src, held_src = _source(), _source()
    step = CapturedTrainingStep(held, held_src, 4, held_opt, grad_clip=0.5, warmup=1, backend="eager")
    for n in range(5):
        expected = plain.meta_gradient(plain_src.sample(4))
        torch.nn.utils.clip_grad_norm_(plain.meta_parameters(), 0.5)
        plain_opt.step()
        plain_sched.step()
        got = step()
        held_sched.step()
        assert step.captured == (n >= 1)
        assert {k: v.item() for k, v in got.items()} == {k: v.item() for k, v in expected.items()}
    for a, b in zip(held.meta_parameters(), plain.meta_parameters()):
        assert torch.equal(a, b)
    assert torch.equal(held_src.generator.get_state(), plain_src.generator.get_state())
    for a, b in zip(held.state_dict().values(), plain.state_dict().values()):  # Reptile: its generator
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    assert step.call.captures == 1  # a tensor learning rate (Reptile's annealed epsilon) needs no new capture


def test_reptiles_annealed_epsilon_is_a_device_tensor_when_captured_and_a_float_otherwise():
    """Built graph-safe, epsilon is a tensor the scheduler fills in place (the same tensor all run,
    so a graph reads each step's value) and steps exactly as the float one does."""
    nets = [make_learner("reptile", "batched", make_net("reptile")) for _ in range(2)]
    (opt_float, sched_float), (opt_tensor, sched_tensor) = (
        _optimizer("reptile", x, capturable=c, iterations=4, meta_lr=1.0, meta_lr_final=0.2)
        for x, c in zip(nets, (False, True)))
    lr_tensor = opt_tensor.param_groups[0]["lr"]
    assert isinstance(lr_tensor, torch.Tensor) and not isinstance(opt_float.param_groups[0]["lr"], torch.Tensor)
    for _ in range(5):
        for learner, opt, sched in zip(nets, (opt_float, opt_tensor), (sched_float, sched_tensor)):
            for p in learner.meta_parameters():
                p.grad = torch.ones_like(p)
            opt.step()
            sched.step()
        assert opt_tensor.param_groups[0]["lr"] is lr_tensor
        assert lr_tensor.item() == opt_float.param_groups[0]["lr"]
    assert lr_tensor.item() == pytest.approx(0.2)
    for a, b in zip(*(x.meta_parameters() for x in nets)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("algo", ["maml", "reptile"])
def test_an_optimiser_state_resumes_across_captured_and_eager_builds(algo):
    """A checkpoint holds no execution flags and plain-float learning rates: loaded into an
    optimiser built the other way (graph-safe or eager), the optimiser keeps its own flags and
    learning-rate type and takes the saved values (Adam's moments and step count, the schedule)."""
    from l2l_app.learner import load_optimizer_state, optimizer_state
    for saved_capturable in (True, False):
        source = make_learner(algo, "batched", make_net(algo))
        opt, sched = _optimizer(algo, source, capturable=saved_capturable, iterations=10)
        for _ in range(3):
            for p in source.meta_parameters():
                p.grad = torch.full_like(p, 0.1)
            opt.step()
            sched.step()
        state = optimizer_state(opt, sched)
        assert all(not isinstance(v, torch.Tensor) and k not in ("capturable", "fused", "foreach")
                   for g in state["optimizer"]["param_groups"] for k, v in g.items())
        target = make_learner(algo, "batched", make_net(algo))
        new_opt, new_sched = _optimizer(algo, target, capturable=not saved_capturable, iterations=10)
        flags = [{k: v for k, v in g.items() if k in ("capturable", "fused", "foreach")} for g in new_opt.param_groups]
        lr_type = type(new_opt.param_groups[0]["lr"])
        load_optimizer_state(new_opt, new_sched, state["optimizer"], state["scheduler"])
        assert flags == [{k: v for k, v in g.items() if k in ("capturable", "fused", "foreach")}
                         for g in new_opt.param_groups]
        assert type(new_opt.param_groups[0]["lr"]) is lr_type
        assert float(new_opt.param_groups[0]["lr"]) == float(opt.param_groups[0]["lr"])
        assert new_sched.last_epoch == sched.last_epoch == 3
        for p_old, p_new in zip(source.meta_parameters(), target.meta_parameters()):
            old, new = opt.state.get(p_old, {}), new_opt.state.get(p_new, {})
            assert old.keys() == new.keys()
            for k in old:
                assert torch.equal(torch.as_tensor(old[k]).cpu().float(), torch.as_tensor(new[k]).cpu().float())
                if k == "step" and not new_opt.param_groups[0].get("capturable"):
                    assert new[k].device.type == "cpu"  # an eager Adam reads its step count on the host


def test_a_learning_rate_change_captures_the_whole_step_again():
    """The graph holds the learning rate it was captured with: a step decay re-captures it."""
    learner = make_learner("maml", "batched", make_net("maml", torch.float32))
    optimizer, scheduler = _optimizer("maml", learner, lr_decay=0.5, lr_decay_every=2)
    step = CapturedTrainingStep(learner, _source(), 2, optimizer, warmup=1, backend="eager")
    for _ in range(7):  # lr 1e-3 for steps 1-2, 5e-4 for 3-4, 2.5e-4 for 5-6, 1.25e-4 for 7
        step()
        scheduler.step()
    assert step.call.captures == 4  # at step 2 (after the warm-up), then at steps 3, 5 and 7


def test_a_whole_step_capture_refuses_the_l2l_sampler():
    maml = make_learner("maml", "batched", make_net("maml", torch.float32))
    l2l = build_task_source("l2l", make_tiny_split(num_classes=8, per_class=6, size=SIZE), WAYS, 1, 2, seed=0)
    with pytest.raises(ValueError, match="with the tensor sampler only, not L2LTaskSource; pass --sampler tensor"):
        CapturedTrainingStep(maml, l2l, 2, _optimizer("maml", maml)[0])


def test_the_tensor_sampler_draws_its_keys_then_gathers():
    """`sample` is `draw_keys` (the only random part) followed by `batch_from_keys`."""
    a, b = _source(seed=5), _source(seed=5)
    for _ in range(3):
        whole, parts = a.sample(3), b.batch_from_keys(**b.draw_keys(3))
        for name in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(whole, name), getattr(parts, name))


@pytest.mark.training
@pytest.mark.parametrize("algo,extra", [("maml", {}), ("reptile", {"train_ways": None})])
def test_the_trainer_with_a_captured_whole_step_writes_the_uncaptured_run(tmp_path, monkeypatch, algo, extra):
    """Training through `CapturedTrainingStep` (eager backend: the graph protocol without a GPU)
    logs the same rows and ends with the same weights as op-by-op training, and a run stopped at
    step 4 and resumed to 8 ends where the uninterrupted one does (Reptile: with its mini-batch
    schedules drawn outside the graph and its epsilon annealed every step)."""
    from l2l_app.trainer import Interrupted, Trainer, resume_config
    common = dict(algo=algo, engine="batched", sampler="tensor", val_every=4, checkpoint_every=4, grad_clip=1.0,
                  **extra)
    plain = Trainer(config(iterations=8, **common), tmp_path / "plain", progress=False)
    plain.fit()
    monkeypatch.setattr(experiment, "resolve_cuda_graph", lambda *args: True)
    held = Trainer(config(iterations=8, **common), tmp_path / "held", progress=False)
    assert held.captured_step is not None and held.captured is None
    held.fit()
    assert held.captured_step.captured
    run_info = json.loads((tmp_path / "held" / "run.json").read_text())
    assert run_info["graph_extent"] == "step" and "each whole step" in run_info["execution"]
    assert train_log(tmp_path / "held") == train_log(tmp_path / "plain")
    first = Trainer(config(iterations=8, **common), tmp_path / "resumed", progress=False)
    first.on_step = lambda step, _: setattr(first, "_stop_signal", 2) if step == 4 else None  # as a Ctrl-C
    with pytest.raises(Interrupted, match="after step 4"):
        first.fit()
    resumed = Trainer(resume_config(tmp_path / "resumed", {}), tmp_path / "resumed", resume=True, progress=False)
    resumed.fit()
    for name in ("held", "resumed"):
        for k, v in weights(tmp_path / name).items():
            assert torch.equal(v, weights(tmp_path / "plain")[k]), (name, k)


def test_the_graph_extent_follows_the_sampler_the_optimiser_and_skip_nonfinite(monkeypatch):
    monkeypatch.setattr(experiment, "resolve_cuda_graph", lambda *args: True)

    def extent(**kw):
        return experiment.Experiment.build(config(engine="batched", **kw), device="cpu",
                                           meta_batch=2).graph_extent
    assert extent(algo="maml", sampler="tensor") == "step"
    assert extent(algo="maml", sampler="l2l") == "meta-gradient"
    assert extent(algo="maml", sampler="tensor", skip_nonfinite=True) == "meta-gradient"
    assert extent(algo="reptile", sampler="tensor", train_ways=None) == "step"  # its schedule is copied in
