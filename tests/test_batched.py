"""Parity of the batched torch.func engine (l2l_app/batched.py) with the per-task loop engine.

float64 on CPU: meta-gradients agree to a relative L2 difference < 1e-10; float32 to 1e-5
(TF32 does not exist on CPU, so it plays no part here; on CUDA call `set_tf32(False)`).
Episodes are random tensors (3-way 2-shot 2-query, B=3) on a small Conv4 (8 filters, 16x16).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from l2l_app.algorithms.maml import MAML
from l2l_app.algorithms.protonet import ProtoNet
from l2l_app.algorithms.reptile import Reptile
from l2l_app.backbones import Classifier, Conv4, TaskBatchNorm2d
from l2l_app.batched import (BATCHED, BatchedMAML, BatchedProtoNet, BatchedReptile, choose_chunk_size,
                             set_tf32)
from l2l_app.tasks import EpisodeBatch
from conftest import random_episodes

WAYS, SHOTS, QUERIES, TASKS, SIZE, HIDDEN = 3, 2, 2, 3, 16, 8
INNER_LR = 0.4


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(dtype=torch.float64, tasks=TASKS, seed=0) -> EpisodeBatch:
    return random_episodes(WAYS, SHOTS, QUERIES, tasks, SIZE, dtype, seed)


def make_net(algo: str, dtype=torch.float64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    backbone = Conv4(1, HIDDEN, SIZE)
    net = backbone if algo == "protonet" else Classifier(backbone, WAYS)
    return net.to(dtype)


def make_pair(algo: str, dtype=torch.float64, **kwargs):
    """(loop learner, batched learner) on two identical copies of one network."""
    net = make_net(algo, dtype)
    engine_opts = {k: kwargs.pop(k) for k in ("chunk_size", "compile", "bn_impl") if k in kwargs}
    loop_cls = {"protonet": ProtoNet, "maml": MAML, "reptile": Reptile}[algo]
    return loop_cls(copy.deepcopy(net), **kwargs), BATCHED[algo](copy.deepcopy(net), **kwargs, **engine_opts)


ALGO_KWARGS = {
    "protonet": {},
    "maml": {"inner_lr": INNER_LR, "inner_steps": 2},
    "reptile": {"inner_lr": 0.01, "inner_steps": 2, "inner_batch": 3, "inner_optimizer": "adam"},
}


def flat_grads(model: nn.Module, skip=frozenset()) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for n, p in model.named_parameters() if n not in skip])


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def bn_invariant_biases(model: nn.Module) -> set:
    """Names of conv biases followed directly by batch norm: their exact gradient is zero."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (name, a), (_, b) in zip(children, children[1:]):
                if isinstance(a, nn.Conv2d) and a.bias is not None and isinstance(b, TaskBatchNorm2d):
                    names.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return names


# --------------------------------------------------------------------------------------------- MAML
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_matches_loop(steps, first_order):
    loop, batched = make_pair("maml", inner_lr=INNER_LR, inner_steps=steps, first_order=first_order)
    batch = make_batch()
    m_loop, m_batched = loop.meta_step(batch), batched.meta_step(batch)
    assert rel_diff(flat_grads(batched.model), flat_grads(loop.model)) < 1e-10
    assert m_batched["loss"] == pytest.approx(m_loop["loss"], rel=1e-12)
    assert m_batched["accuracy"] == pytest.approx(m_loop["accuracy"], abs=1e-12)


def test_native_batch_norm_under_vmap_gives_wrong_second_order_gradient():
    """Why BatchedMAML uses the primitive batch norm: pytorch/functorch#534."""
    loop, native = make_pair("maml", inner_lr=INNER_LR, inner_steps=1, bn_impl="native")
    batch = make_batch()
    loop.meta_step(batch)
    native.meta_step(batch)
    diff = rel_diff(flat_grads(native.model), flat_grads(loop.model))
    if diff <= 1e-6:
        pytest.skip(f"functorch#534 does not reproduce on torch {torch.__version__} (rel diff {diff:.1e})")
    assert diff > 1e-6


# ------------------------------------------------------------------------------------------ Reptile
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("steps", [1, 3])
def test_reptile_update_matches_loop(optimizer, steps):
    loop, batched = make_pair("reptile", inner_lr=0.01, inner_steps=steps, inner_batch=3,
                              inner_optimizer=optimizer, seed=7)
    batch = make_batch()
    m_loop, m_batched = loop.meta_step(batch), batched.meta_step(batch)
    # Conv biases before batch norm have a zero gradient in exact arithmetic; Adam turns the
    # rounding noise g ~ 1e-17 into steps of lr * g / (|g| + eps), different in each engine.
    # Those parameters are compared separately, as noise of the expected size.
    skip = bn_invariant_biases(loop.model) if optimizer == "adam" else set()
    assert rel_diff(flat_grads(batched.model, skip), flat_grads(loop.model, skip)) < 1e-10
    for name in skip:
        for learner in (loop, batched):
            assert dict(learner.model.named_parameters())[name].grad.abs().max() < 1e-6
    assert m_batched["loss"] == pytest.approx(m_loop["loss"], rel=1e-12)
    assert m_batched["accuracy"] == pytest.approx(m_loop["accuracy"], abs=1e-12)
    # same generator consumption: the next schedules are the same too
    assert torch.equal(loop.generator.get_state(), batched.generator.get_state())


def test_reptile_non_transductive_metrics_match_loop():
    loop, batched = make_pair("reptile", inner_lr=0.01, inner_steps=2, inner_batch=3,
                              inner_optimizer="sgd", transductive=False)
    batch = make_batch()
    m_loop, m_batched = loop.meta_step(batch), batched.meta_step(batch)
    assert m_batched["loss"] == pytest.approx(m_loop["loss"], rel=1e-12)
    assert torch.equal(loop.query_accuracy(batch), batched.query_accuracy(batch))


def test_reptile_explicit_schedule_is_used():
    loop, batched = make_pair("reptile", inner_lr=0.01, inner_steps=2, inner_batch=3, inner_optimizer="sgd")
    batch = make_batch()
    schedule = torch.stack([torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[5, 4, 3], [2, 1, 0]]),
                            torch.tensor([[1, 1, 1], [2, 2, 2]])])
    loop.meta_step(batch, schedule=schedule)
    batched.meta_step(batch, schedule=schedule)
    assert rel_diff(flat_grads(batched.model), flat_grads(loop.model)) < 1e-10


# ----------------------------------------------------------------------------------------- ProtoNet
@pytest.mark.parametrize("bn_impl", ["primitive", "native"])
def test_protonet_loss_and_gradient_match_loop(bn_impl):
    loop, batched = make_pair("protonet", bn_impl=bn_impl)
    batch = make_batch()
    m_loop, m_batched = loop.meta_step(batch), batched.meta_step(batch)
    assert rel_diff(flat_grads(batched.model), flat_grads(loop.model)) < 1e-10
    assert m_batched["loss"] == pytest.approx(m_loop["loss"], rel=1e-12)
    assert m_batched["accuracy"] == pytest.approx(m_loop["accuracy"], abs=1e-12)


# ---------------------------------------------------------------------------------------- all three
@pytest.mark.parametrize("algo", ["protonet", "maml", "reptile"])
def test_float32_parity(algo):
    loop, batched = make_pair(algo, dtype=torch.float32, **ALGO_KWARGS[algo])
    batch = make_batch(torch.float32)
    m_loop, m_batched = loop.meta_step(batch), batched.meta_step(batch)
    # float32 rounding noise in the (exactly zero) conv-bias gradients is amplified by Adam; see above.
    skip = bn_invariant_biases(loop.model) if algo == "reptile" else set()
    assert rel_diff(flat_grads(batched.model, skip), flat_grads(loop.model, skip)) < 1e-5
    assert m_batched["loss"] == pytest.approx(m_loop["loss"], rel=1e-5)


@pytest.mark.parametrize("algo", ["protonet", "maml", "reptile"])
def test_chunking_gives_the_same_gradients(algo):
    batch = make_batch()
    net = make_net(algo)
    results = []
    for chunk_size in (None, 1, 2):
        learner = BATCHED[algo](copy.deepcopy(net), chunk_size=chunk_size, **ALGO_KWARGS[algo])
        metrics = learner.meta_step(batch)
        results.append((flat_grads(learner.model), metrics["loss"]))
    for grads, loss in results[1:]:
        assert rel_diff(grads, results[0][0]) < 1e-12
        assert loss == pytest.approx(results[0][1], rel=1e-12)


@pytest.mark.parametrize("algo", ["protonet", "maml", "reptile"])
def test_parameters_stay_unchanged_leaves(algo):
    learner = BATCHED[algo](make_net(algo), **ALGO_KWARGS[algo])
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    ids = {n: id(p) for n, p in learner.model.named_parameters()}
    learner.meta_step(make_batch())
    learner.query_accuracy(make_batch(seed=1))
    for name, p in learner.model.named_parameters():
        assert isinstance(p, nn.Parameter) and p.is_leaf and p.requires_grad, name
        assert id(p) == ids[name], name
        assert torch.equal(p.detach(), before[name]), name
        assert p.grad is not None and p.grad.shape == p.shape, name
    assert len(list(learner.model.buffers())) == 0


@pytest.mark.parametrize("algo", ["protonet", "maml", "reptile"])
def test_query_accuracy_and_predict_match_loop(algo):
    loop, batched = make_pair(algo, **ALGO_KWARGS[algo])
    batch = make_batch(seed=3)
    assert torch.equal(batched.query_accuracy(batch), loop.query_accuracy(batch))
    sx, sy, qx, _ = batch.task(1)
    expected = loop.predict(sx, sy, qx, WAYS)
    got = batched.predict(sx, sy, qx, WAYS)
    assert got.shape == (WAYS * QUERIES, WAYS)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_aliased_submodule_is_rejected():
    net = Classifier(Conv4(1, HIDDEN, SIZE), WAYS)
    net.alias = net.head   # registered twice, like learn2learn's OmniglotCNN
    with pytest.raises(ValueError, match="registered twice"):
        BatchedMAML(net, inner_lr=0.1, inner_steps=1)


def test_invalid_chunk_size_is_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        BatchedProtoNet(make_net("protonet"), chunk_size=0)


@pytest.mark.parametrize("algo", ["protonet", "maml", "reptile"])
def test_choose_chunk_size_is_within_bounds_and_monotone(algo):
    learner = BATCHED[algo](make_net(algo), **ALGO_KWARGS[algo])
    batch = make_batch()
    assert choose_chunk_size(learner, batch, 1) == 1
    assert choose_chunk_size(learner, batch, 1 << 40) == batch.num_tasks
    sizes = [choose_chunk_size(learner, batch, budget) for budget in (10**5, 10**6, 10**7, 10**8)]
    assert sizes == sorted(sizes) and all(1 <= s <= batch.num_tasks for s in sizes)


def test_set_tf32_switches_both_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["protonet", "maml", "reptile"])
def test_compile_smoke(algo):
    """torch.compile of the batched function (30-70 s per algorithm on a 2-core CPU: marked slow)."""
    kwargs = dict(ALGO_KWARGS[algo], **({"inner_steps": 1} if algo != "protonet" else {}))
    loop, compiled = make_pair(algo, dtype=torch.float32, compile=True, **kwargs)
    batch = make_batch(torch.float32)
    loop.meta_step(batch)
    compiled.meta_step(batch)
    assert compiled.compile_seconds is not None and compiled.compile_seconds > 0
    skip = bn_invariant_biases(loop.model) if algo == "reptile" else set()
    assert rel_diff(flat_grads(compiled.model, skip), flat_grads(loop.model, skip)) < 1e-4


def test_compile_modes():
    """compile=True is torch.compile's default mode; a string picks the mode (e.g. CUDA graphs)."""
    model = make_net("maml")
    assert BatchedMAML(model, INNER_LR, 1).compile_mode is None
    assert BatchedMAML(model, INNER_LR, 1, compile=True).compile_mode == "default"
    learner = BatchedMAML(model, INNER_LR, 1, compile="reduce-overhead")
    assert learner.compile and learner.compile_mode == "reduce-overhead"


def test_learn2learn_omniglotcnn_is_rejected():
    """learn2learn's OmniglotCNN registers its ConvBase as `.base` and `.features`: functional_call
    would leave adapted tensors in it, so the batched engine refuses it up front."""
    import learn2learn as l2l
    with pytest.raises(ValueError, match="registered twice"):
        BatchedMAML(l2l.vision.models.OmniglotCNN(WAYS), INNER_LR, 1)
