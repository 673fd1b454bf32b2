"""Every registered backbone (`l2l_app.registry.BACKBONES`) against the contract the engines rely on.

The tests are parametrised over `BACKBONES.names()`, so a new backbone module gets all of them
without new test code: shapes on Omniglot- and mini-ImageNet-sized inputs, no aliased
submodules, task batch norm only, native == primitive batch norm, per-task statistics with
tasks folded into the batch, and a second-order MAML step under `torch.func.vmap` equal to a
per-task loop with plain autograd.  All numerical checks run in float64 on tiny networks.
"""
from __future__ import annotations

from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from l2l_app.backbones import (CONV_IMPLS, Classifier, Conv4, TaskBatchNorm2d, assert_no_aliased_submodules,
                               batchnorm_mode, build_backbone, set_conv_impl)
from l2l_app.errors import ConfigError
from l2l_app.registry import BACKBONES

NAMES = BACKBONES.names()
HIDDEN = 4                       # tiny widths: every test here runs in well under a second per backbone
INPUTS = [(1, 28), (3, 84)]      # Omniglot, mini-ImageNet


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run faster on one intra-op thread of a small shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(name: str, in_channels: int = 1, size: int = 28, hidden: int = HIDDEN, seed: int = 0,
         dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone(name, (in_channels, size, size), hidden).to(dtype)


def images(n: int, in_channels: int = 1, size: int = 28, seed: int = 1,
           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, in_channels, size, size, generator=g, dtype=dtype)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ----------------------------------------------------------------------------------- registry
def test_registry_lists_the_backbones():
    assert {"conv4", "conv4-strided", "resnet12"} <= set(NAMES)
    for name, spec in BACKBONES.items():
        assert spec.name == name
        assert spec.help and "\n" not in spec.help


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ConfigError) as info:
        build_backbone("resnet13", (3, 84, 84), HIDDEN)
    message = str(info.value)
    assert "resnet13" in message
    for name in NAMES:
        assert name in message


# ----------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("in_channels,size", INPUTS)
@pytest.mark.parametrize("name", NAMES)
def test_builds_and_returns_feature_size(name, in_channels, size):
    model = make(name, in_channels, size, dtype=torch.float32)
    assert isinstance(model.feature_size, int) and model.feature_size > 0
    out = model(images(3, in_channels, size, dtype=torch.float32))
    assert out.shape == (3, model.feature_size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_no_aliased_submodules_and_only_task_batch_norm(name):
    backbone = make(name)
    model = Classifier(backbone, 5)
    assert_no_aliased_submodules(backbone)
    assert_no_aliased_submodules(model)
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"backbone", "head"}
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    modules = list(model.modules())
    assert not [m for m in modules if isinstance(m, norm_types)]
    # convolutional backbones normalise per task; the MLP has no normalisation at all
    assert any(isinstance(m, TaskBatchNorm2d) for m in modules) == (BACKBONES[name].inputs == "image")


def test_aliased_submodule_is_detected():
    model = Conv4(1, HIDDEN, 28)
    model.alias = model.blocks[0]
    with pytest.raises(ValueError, match="registered twice"):
        assert_no_aliased_submodules(model)


def test_conv4_parameter_names_are_unchanged():
    """Checkpoints on disk hold these names."""
    names = list(Classifier(build_backbone("conv4", (1, 28, 28), HIDDEN), 5).state_dict())
    expected = [f"backbone.blocks.{i}.{j}.{p}" for i in range(4) for j in (0, 1) for p in ("weight", "bias")]
    assert names == expected + ["head.weight", "head.bias"]
    assert list(build_backbone("conv4-strided", (1, 28, 28), HIDDEN).state_dict()) == [n[len("backbone."):]
                                                                                 for n in expected]


def test_conv4_feature_sizes():
    assert build_backbone("conv4", (1, 28, 28), 64).feature_size == 64
    assert build_backbone("conv4", (3, 84, 84), 32).feature_size == 800
    assert build_backbone("conv4-strided", (1, 28, 28), 64).feature_size == 64 * 2 * 2


def test_resnet12_is_the_standard_size():
    """64-160-320-640 and 12,424,320 parameters on 3-channel inputs; 640 features for both inputs."""
    # (on the CPU: a first use of the meta device costs ~1.5 s of lazy imports, these builds ~0.2 s)
    for in_channels, size in INPUTS:
        model = build_backbone("resnet12", (in_channels, size, size), 64)
        assert model.feature_size == 640
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert widths == [64, 160, 320, 640]
    assert sum(p.numel() for p in model.parameters()) == 12_424_320


def test_resnet12_rejects_too_small_images():
    with pytest.raises(ConfigError, match="at least 16x16"):
        build_backbone("resnet12", (1, 8, 8), HIDDEN)


# ----------------------------------------------------------------------------------- batch norm
# Native (ATen batch_norm) and primitive (mean, biased variance, rsqrt) batch norm compute the
# same function with different summation orders, so they differ by rounding only: float64's unit
# roundoff is 1.1e-16, a mean over n <= 3*84*84 terms errs by at most ~n*u relative in the worst
# case and ~sqrt(n)*u typically (~1e-14), and a dozen layers of well-conditioned
# conv/normalise/activate propagate that roughly additively.  1e-12 leaves two orders of margin
# over that estimate and is still nine orders below any real disagreement (a wrong statistic
# or formula moves the outputs by O(1e-3..1)).
BN_REL = 1e-12


@pytest.mark.parametrize("in_channels,size", INPUTS)
@pytest.mark.parametrize("name", NAMES)
def test_native_and_primitive_batch_norm_agree(name, in_channels, size):
    model = make(name, in_channels, size)
    x = images(4, in_channels, size)
    with batchnorm_mode(model, "native"):
        native = model(x)
    with batchnorm_mode(model, "primitive"):
        primitive = model(x)
    assert rel_diff(primitive, native) < BN_REL


@pytest.mark.parametrize("in_channels,size", INPUTS)
@pytest.mark.parametrize("name", NAMES)
def test_every_convolution_impl_agrees_with_native(name, in_channels, size):
    """im2col + matmul, and NHWC tensors, compute every backbone's convolutions (strided, padded,
    1x1, no bias) as cuDNN/native does: float64 rounding, the same bound as the batch-norm forms;
    their input gradients too."""
    model = make(name, in_channels, size)
    x = images(4, in_channels, size).requires_grad_()
    native = model(x)
    (native_grad,) = torch.autograd.grad(native.pow(2).sum(), x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for impl in CONV_IMPLS:
        out = set_conv_impl(model, impl)(x)
        (out_grad,) = torch.autograd.grad(out.pow(2).sum(), x)
        assert rel_diff(out, native) < BN_REL and rel_diff(out_grad, native_grad) < BN_REL, impl
    assert model.state_dict().keys() == state.keys()  # checkpoints do not depend on the impl
    with pytest.raises(ValueError, match="convolution impl must be one of native, channels-last, unfold, got 'fft'"):
        set_conv_impl(model, "fft")


def test_channels_last_convolutions_trace_in_one_graph():
    """`--conv-impl channels-last` with `--compile` (ProtoNet's batched engine): the check that
    keeps NHWC out of torch.func transforms must not break torch.compile's graph at every
    convolution (querying the tensor, `is_functorch_wrapped_tensor`, did: 5 breaks in conv4)."""
    model = set_conv_impl(make("conv4", dtype=torch.float32), "channels-last")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(images(4, dtype=torch.float32))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


#: the backbones with batch norm (per-task statistics); the MLP has none
NORMALISED = [n for n in NAMES if BACKBONES[n].inputs == "image"]


@pytest.mark.parametrize("impl", ["native", "primitive"])
@pytest.mark.parametrize("name", NORMALISED)
def test_tasks_folded_into_the_batch_use_per_task_statistics(name, impl):
    model = make(name)
    first, second = images(4, seed=1), images(4, seed=2) * 3 + 1   # different statistics per task
    separate = torch.cat([model(first), model(second)])
    with batchnorm_mode(model, impl, tasks=2):
        folded = model(torch.cat([first, second]))
    assert rel_diff(folded, separate) < BN_REL
    # the statistics really are per task: one shared statistic gives other features
    assert rel_diff(model(torch.cat([first, second])), separate) > 1e-3


# ----------------------------------------------------------------------------------- MAML under vmap
WAYS, SHOTS, QUERIES, TASKS = 2, 2, 2, 2
INNER_LR = 0.4


def episodes(seed: int = 3):
    """support [T, W*S, 1, 28, 28], labels [T, W*S]; query likewise (random images)."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(TASKS, WAYS * SHOTS, 1, 28, 28, generator=g, dtype=torch.float64)
    qx = torch.randn(TASKS, WAYS * QUERIES, 1, 28, 28, generator=g, dtype=torch.float64)
    sy = torch.arange(WAYS).repeat_interleave(SHOTS).expand(TASKS, -1).contiguous()
    qy = torch.arange(WAYS).repeat_interleave(QUERIES).expand(TASKS, -1).contiguous()
    return sx, sy, qx, qy


def loop_meta_gradients(model: nn.Module, sx, sy, qx, qy) -> List[Dict[str, torch.Tensor]]:
    """Per task: one second-order inner SGD step with plain autograd, then d(query loss)/d(params)."""
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    results = []
    for t in range(TASKS):
        support_loss = F.cross_entropy(model(sx[t]), sy[t])
        inner = torch.autograd.grad(support_loss, params, create_graph=True)
        fast = {n: p - INNER_LR * g for n, p, g in zip(names, params, inner)}
        query_loss = F.cross_entropy(functional_call(model, fast, (qx[t],)), qy[t])
        results.append(dict(zip(names, torch.autograd.grad(query_loss, params))))
    return results


@pytest.mark.parametrize("conv_impl", CONV_IMPLS)
@pytest.mark.parametrize("name", NAMES)
def test_second_order_maml_step_under_vmap_matches_loop(name, conv_impl):
    """What the batched MAML engine (`BatchedMAML.meta_step`) relies on, in its form: `vmap` over
    tasks of a `torch.func.grad` inner step through `functional_call` with the real parameters
    closed over, then ordinary autograd from the vmapped query losses to the parameters, under
    primitive batch norm.  Equal (to rounding, observed ~1e-14) to a per-task loop with plain
    autograd and native batch norm.  With native batch norm under vmap this form is off by
    ~5e-3 (pytorch/functorch#534), so a backbone whose norm layers ignored `batchnorm_mode`
    would fail here.  The same with the convolutions as im2col + matmul (`--conv-impl unfold`),
    whose second derivatives under vmap go through unfold/fold and batched matrix products."""
    model = Classifier(make(name), WAYS).to(torch.float64)
    sx, sy, qx, qy = episodes()
    reference = loop_meta_gradients(model, sx, sy, qx, qy)   # native batch norm and convolutions
    set_conv_impl(model, conv_impl)
    params = dict(model.named_parameters())

    def task_query_loss(sx, sy, qx, qy):
        def support_loss(p):
            return F.cross_entropy(functional_call(model, p, (sx,)), sy)
        inner = grad(support_loss)(params)
        fast = {k: params[k] - INNER_LR * inner[k] for k in params}
        return F.cross_entropy(functional_call(model, fast, (qx,)), qy)

    with batchnorm_mode(model, "primitive"):
        losses = vmap(task_query_loss)(sx, sy, qx, qy)
    assert losses.shape == (TASKS,)

    def flat(grads) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in grads])

    for t in range(TASKS):
        got = torch.autograd.grad(losses[t], list(params.values()), retain_graph=True)
        assert rel_diff(flat(got), flat(reference[t][k] for k in params)) < 1e-10, f"task {t}"
    model.zero_grad()
    (losses.sum() / TASKS).backward()                          # the engine's meta-gradient
    mean_reference = flat(sum(r[k] for r in reference) / TASKS for k in params)
    assert rel_diff(flat(p.grad for p in params.values()), mean_reference) < 1e-10
