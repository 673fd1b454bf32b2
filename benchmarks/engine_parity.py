"""Meta-gradient agreement, batched engine vs the learn2learn loop, on any device.

    python benchmarks/engine_parity.py --device cuda --out benchmarks/results/engine_parity-h200.json

For MAML (1, 3 and 5 inner steps, second order; 1 and 3, first order), Reptile (SGD) and every other registered
algorithm with a batched engine (its default settings), on
Omniglot-shaped episodes (5-way 1-shot 15 queries, 8 tasks, Conv4 with 64 filters), it
reports the relative L2 difference of the meta-gradients in float64, in float32 with TF32
off, and in float32 with TF32 on (CUDA only).  The tests assert the CPU figures; this
script records what a GPU gives.

`captured` rows: the batched meta-gradient captured as one CUDA graph (`engine.graphs`) against
the same learner called eagerly, over 5 successive meta-batches (float32 and float64): the largest
absolute difference of any gradient element or metric.  The replayed kernels are the eager ones,
so 0 is expected (on a CPU the eager stand-in of the capture runs).

`whole_step` rows: the whole training step captured as one CUDA graph (`CapturedTrainingStep`:
the tensor sampler's gather, the meta-gradient, the optimiser step -- Adam, or Reptile's SGD with
its epsilon annealed over the 6 steps) against the same steps run eagerly with the same
graph-safe optimiser, over 6 steps in float32 from one sampler seed: the largest absolute
weight difference, and whether both samplers' generators end in the same state (the random
draws stay outside the graph, so they must).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import l2l_app.config  # noqa: E402,F401  (registers every algorithm)
from l2l_app.backbones import Classifier, Conv4  # noqa: E402
from l2l_app.data.types import EpisodeBatch  # noqa: E402
from l2l_app.bench.harness import synthetic_split  # noqa: E402
from l2l_app.data import build_task_source  # noqa: E402
from l2l_app.config import OptimConfig  # noqa: E402
from l2l_app.engine.graphs import CapturedMetaGradient, CapturedTrainingStep  # noqa: E402
from l2l_app.learner import apply_meta_gradient  # noqa: E402
from l2l_app.registry import ALGORITHMS  # noqa: E402
from l2l_app.runtime import environment, set_tf32  # noqa: E402

#: named variants worth their own row (algorithm, settings); every other registered algorithm with a
#: batched engine gets one row with its default settings
VARIANTS = {
    "maml-1step-2nd": ("maml", dict(inner_lr=0.4, inner_steps=1, first_order=False)),
    "maml-3step-2nd": ("maml", dict(inner_lr=0.4, inner_steps=3, first_order=False)),
    "maml-5step-2nd": ("maml", dict(inner_lr=0.4, inner_steps=5, first_order=False)),  # the 20-way recipes' steps
    "maml-1step-1st": ("maml", dict(inner_lr=0.4, inner_steps=1, first_order=True)),
    "maml-3step-1st": ("maml", dict(inner_lr=0.4, inner_steps=3, first_order=True)),
    "reptile-sgd-5step": ("reptile", dict(inner_lr=0.1, inner_steps=5, inner_batch=10, inner_optimizer="sgd")),
}
CASES = {**VARIANTS, **{name: (name, {}) for name, spec in ALGORITHMS.items()
                        if spec.batched is not None and not any(a == name for a, _ in VARIANTS.values())}}
#: shots per class of the episodes: 10 where the algorithm draws inner mini-batches of 10
SHOTS = {name: 10 if "inner_batch" in spec.setting_names() else 1 for name, spec in ALGORITHMS.items()}


def episodes(tasks: int, ways: int, shots: int, queries: int, device, dtype, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, ways * shots, 1, 28, 28, generator=g)
    qx = torch.rand(tasks, ways * queries, 1, 28, 28, generator=g)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return EpisodeBatch(sx, sy, qx, qy, ways, shots, queries).to(device, dtype)


def grads(learner, batch) -> torch.Tensor:
    learner.meta_step(batch)
    return torch.cat([p.grad.flatten() for p in learner.meta_parameters()])


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def compare(name: str, device: torch.device, dtype: torch.dtype, tf32: bool) -> float:
    algo, changes = CASES[name]
    spec = ALGORITHMS[algo]
    settings = spec.settings(**changes)
    torch.manual_seed(0)
    model = Classifier(Conv4(), 5) if spec.head else Conv4()
    model = model.to(device, dtype)
    batch = episodes(8, 5, SHOTS[algo], 15, device, dtype)
    set_tf32(tf32)
    try:
        reference = grads(spec.loop(copy.deepcopy(model), settings), batch)
        batched = grads(spec.batched(copy.deepcopy(model), settings), batch)
    finally:
        set_tf32(False)
    return relative_l2(batched, reference)


def captured_difference(name: str, device: torch.device, dtype: torch.dtype, steps: int = 5) -> float:
    """Largest |captured - eager| over the gradients and metrics of `steps` successive meta-batches."""
    algo, changes = CASES[name]
    spec = ALGORITHMS[algo]
    settings = spec.settings(**changes)
    torch.manual_seed(0)
    model = (Classifier(Conv4(), 5) if spec.head else Conv4()).to(device, dtype)
    eager = spec.batched(copy.deepcopy(model), settings)
    captured_learner = spec.batched(copy.deepcopy(model), settings)
    captured = CapturedMetaGradient(captured_learner, warmup=2)
    worst = 0.0
    for step in range(steps):
        batch = episodes(8, 5, SHOTS[algo], 15, device, dtype, seed=step)
        m_eager, m_captured = eager.meta_gradient(batch), captured(batch)
        for a, b in zip(eager.meta_parameters(), captured_learner.meta_parameters()):
            worst = max(worst, (a.grad - b.grad).abs().max().item())
        for k in m_eager:
            worst = max(worst, abs(m_eager[k].item() - m_captured[k].item()))
    if not captured.captured:
        raise RuntimeError("the step was never captured")
    return worst


#: the cases whose whole step is checked (Reptile: its schedule copied in, its epsilon annealed)
WHOLE_STEP_CASES = ("maml-1step-2nd", "protonet", "reptile-sgd-5step")
#: each algorithm's meta-learning rate in the whole-step rows
WHOLE_STEP_META_LR = {"reptile": 1.0}


def whole_step_difference(name: str, device: torch.device, steps: int = 6) -> dict:
    """Captured whole steps vs eager ones (float32): largest |weight difference|, sampler states equal."""
    algo, changes = CASES[name]
    spec = ALGORITHMS[algo]
    settings = spec.settings(**changes)
    split = synthetic_split("omniglot", 20, SHOTS[algo], 15, seed=0)  # 40 classes x (shots + 15) images
    torch.manual_seed(0)
    model = (Classifier(Conv4(), 5) if spec.head else Conv4()).to(device)
    learners = [spec.batched(copy.deepcopy(model), settings) for _ in range(2)]
    # the algorithm's optimiser and schedule as a captured training step builds them (graph-safe on
    # a GPU), for both: only the graph differs
    graph_safe = {"capturable": True} if device.type == "cuda" else {}
    optim = OptimConfig(meta_lr=WHOLE_STEP_META_LR.get(algo, 1e-3), iterations=steps)
    optimizers = [spec.optimizer.build(l.meta_parameters(), optim, settings, **graph_safe) for l in learners]
    sources = [build_task_source("tensor", split, 5, SHOTS[algo], 15, seed=3, device=device) for _ in range(2)]
    captured = CapturedTrainingStep(learners[1], sources[1], 8, optimizers[1][0], warmup=2)
    for _ in range(steps):
        learners[0].meta_gradient(sources[0].sample(8))
        apply_meta_gradient(learners[0], optimizers[0][0])
        captured()
        for _, scheduler in optimizers:
            scheduler.step()
    if not captured.captured:
        raise RuntimeError("the step was never captured")
    worst = max((a - b).abs().max().item() for a, b in zip(learners[0].meta_parameters(),
                                                           learners[1].meta_parameters()))
    same = torch.equal(sources[0].generator.get_state(), sources[1].generator.get_state())
    return {"max_abs_weight_difference": worst, "sampler_states_equal": same, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    settings = [("float64", torch.float64, False), ("float32, TF32 off", torch.float32, False)]
    if device.type == "cuda":
        settings.append(("float32, TF32 on", torch.float32, True))
    rows = []
    for name in CASES:
        for label, dtype, tf32 in settings:
            diff = compare(name, device, dtype, tf32)
            rows.append({"case": name, "precision": label, "relative_l2": diff})
            print(f"{name:20s} {label:18s} {diff:.3e}", flush=True)
    captured_rows = []
    for name in CASES:
        for label, dtype in (("float64", torch.float64), ("float32, TF32 off", torch.float32)):
            try:
                diff = captured_difference(name, device, dtype)
            except Exception as exc:  # recorded, not fatal: the other rows still count
                captured_rows.append({"case": name, "precision": label, "error": f"{type(exc).__name__}: {exc}"})
                print(f"captured {name:20s} {label:18s} error {exc}", flush=True)
                continue
            captured_rows.append({"case": name, "precision": label, "max_abs_difference": diff})
            print(f"captured {name:20s} {label:18s} {diff:.3e}", flush=True)
    whole_rows = []
    for name in WHOLE_STEP_CASES:
        try:
            row = {"case": name, "precision": "float32, TF32 off", **whole_step_difference(name, device)}
        except Exception as exc:  # recorded, not fatal
            row = {"case": name, "error": f"{type(exc).__name__}: {exc}"}
        whole_rows.append(row)
        print(f"whole step {name:20s} {row}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "device": str(device),
                                    "episodes": "5-way 1-shot (10-shot where inner mini-batches are drawn) "
                                                "15 queries, 8 tasks, Conv4-64",
                                    "rows": rows, "captured": captured_rows, "whole_step": whole_rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
