"""The per-task loop engine (l2l_app/algorithms) against hand-written references, in float64.

* MAML (on learn2learn's `l2l.algorithms.MAML`): meta-gradient equals plain
  `torch.autograd.grad(create_graph=True)` through the inner SGD steps (relative L2 < 1e-10).
* ProtoNet: prototypes are per-class means; logits are -cdist^2.
* Reptile: one SGD step on one task gives theta - (theta - lr * grad L) = lr * grad L.
* Batch norm keeps no buffers, so learn2learn clones share no running statistics.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from l2l_app.algorithms.maml import MAML, MAMLSettings
from l2l_app.algorithms.protonet import ProtoNet, episode_logits, prototypes, squared_euclidean_logits
from l2l_app.algorithms.reptile import Reptile, ReptileSettings, minibatch_schedule
from l2l_app.backbones import Classifier, Conv4
from l2l_app.data.types import EpisodeBatch
from conftest import random_episodes

WAYS, SHOTS, QUERIES, TASKS, SIZE, HIDDEN = 3, 2, 2, 3, 16, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(tasks=TASKS, seed=0) -> EpisodeBatch:
    return random_episodes(WAYS, SHOTS, QUERIES, tasks, SIZE, torch.float64, seed)


def make_classifier(seed=0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(Conv4(1, HIDDEN, SIZE), WAYS).double()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def reference_maml_meta_gradient(model, batch: EpisodeBatch, lr: float, steps: int, first_order: bool):
    """Mean query loss over tasks and its gradient w.r.t. the parameters, by plain autograd."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    total = 0.0
    for sx, sy, qx, qy in batch.tasks():
        fast = params
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), (sx,)), sy)
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [p - lr * g for p, g in zip(fast, grads)]
        total = total + F.cross_entropy(functional_call(model, dict(zip(names, fast)), (qx,)), qy)
    total = total / batch.num_tasks
    return total.item(), torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, params)])


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_equals_autograd_reference(steps, first_order):
    model, batch, lr = make_classifier(), make_batch(), 0.4
    ref_loss, ref_grad = reference_maml_meta_gradient(copy.deepcopy(model), batch, lr, steps, first_order)
    learner = MAML(model, MAMLSettings(inner_lr=lr, inner_steps=steps, first_order=first_order))
    metrics = learner.meta_step(batch)
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert rel_diff(grad, ref_grad) < 1e-10
    assert metrics["loss"] == pytest.approx(ref_loss, rel=1e-12)


def test_first_and_second_order_differ():
    """Guard against a reference that silently ignores create_graph."""
    model, batch = make_classifier(), make_batch()
    _, second = reference_maml_meta_gradient(model, batch, 0.4, 1, first_order=False)
    _, first = reference_maml_meta_gradient(model, batch, 0.4, 1, first_order=True)
    assert rel_diff(first, second) > 1e-6


def test_prototypes_are_class_means():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 0, 1, 0, 1]])
    protos = prototypes(emb, labels, 3)
    for t in range(2):
        for c in range(3):
            torch.testing.assert_close(protos[t, c], emb[t][labels[t] == c].mean(0), rtol=1e-12, atol=1e-12)


def test_protonet_logits_are_negative_squared_distances():
    torch.manual_seed(0)
    embed = Conv4(1, HIDDEN, SIZE).double()
    sx, sy, qx, _ = make_batch().task(0)
    logits = episode_logits(embed, sx, sy, qx, WAYS)
    with torch.no_grad():
        emb = embed(torch.cat([sx, qx]))     # one batch: batch-norm statistics of the whole episode
        support, query = emb[: sx.shape[0]], emb[sx.shape[0]:]
        protos = torch.stack([support[sy == c].mean(0) for c in range(WAYS)])
        expected = -torch.cdist(query, protos).pow(2)
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(squared_euclidean_logits(query, protos), expected, rtol=1e-10, atol=1e-10)


def test_protonet_meta_step_is_mean_episode_loss():
    torch.manual_seed(0)
    embed = Conv4(1, HIDDEN, SIZE).double()
    batch = make_batch()
    losses = [F.cross_entropy(episode_logits(embed, sx, sy, qx, WAYS), qy).item()
              for sx, sy, qx, qy in batch.tasks()]
    assert ProtoNet(embed).meta_step(batch)["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)


def test_reptile_one_sgd_step_on_one_task():
    model, lr = make_classifier(), 0.1
    batch = make_batch(tasks=1)
    sx, sy, _, _ = batch.task(0)
    schedule = torch.tensor([[[4, 0, 5]]])                     # [tasks=1, steps=1, inner_batch=3]
    idx = schedule[0, 0]
    theta = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(sx[idx]), sy[idx])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = torch.cat([(t - (t - lr * g)).reshape(-1) for t, g in zip(theta, grads)])
    Reptile(model, ReptileSettings(inner_lr=lr, inner_steps=1, inner_batch=3, inner_optimizer="sgd")).meta_step(
        batch, schedule=schedule)
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert rel_diff(got, expected) < 1e-10
    for p, t in zip(model.parameters(), theta):
        assert torch.equal(p.detach(), t)                       # meta_step never steps the weights


def test_batch_norm_has_no_buffers_so_clones_share_no_statistics():
    model = make_classifier()
    assert len(list(model.buffers())) == 0
    learner = MAML(model, MAMLSettings(inner_lr=0.4, inner_steps=1))
    clone = learner.maml.clone()
    assert len(list(clone.buffers())) == 0


def test_reptile_batch_larger_than_support_is_clamped_exactly():
    """Inner batch 10 on a 6-image support set equals batch 6: same schedule size, same update."""
    gen = torch.Generator().manual_seed(0)
    assert minibatch_schedule(2, 6, 10, 3, gen).shape == (2, 3, 6)
    batch = make_batch(tasks=2)
    grads = []
    for inner_batch in (10, WAYS * SHOTS):
        learner = Reptile(make_classifier(), ReptileSettings(inner_lr=0.1, inner_steps=2, inner_batch=inner_batch,
                                                             inner_optimizer="sgd"), seed=3)
        learner.meta_step(batch)
        grads.append(torch.cat([p.grad.flatten() for p in learner.model.parameters()]))
    assert torch.equal(grads[0], grads[1])
