"""Meta-gradient agreement, batched engine vs the learn2learn loop, on any device.

    python benchmarks/engine_parity.py --device cuda --out benchmarks/results/engine_parity-h200.json

For MAML (1 and 3 inner steps, second and first order), Reptile (Adam) and ProtoNet on
Omniglot-shaped episodes (5-way 1-shot 15 queries, 8 tasks, Conv4 with 64 filters), it
reports the relative L2 difference of the meta-gradients in float64, in float32 with TF32
off, and in float32 with TF32 on (CUDA only).  The tests assert the CPU figures; this
script records what a GPU gives.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2l_app.algorithms.maml import MAML  # noqa: E402
from l2l_app.algorithms.protonet import ProtoNet  # noqa: E402
from l2l_app.algorithms.reptile import Reptile  # noqa: E402
from l2l_app.backbones import Classifier, Conv4  # noqa: E402
from l2l_app.batched import BatchedMAML, BatchedProtoNet, BatchedReptile  # noqa: E402
from l2l_app.runtime import environment, set_tf32  # noqa: E402
from l2l_app.tasks import EpisodeBatch  # noqa: E402

CASES = {
    "maml-1step-2nd": (MAML, BatchedMAML, dict(inner_lr=0.4, inner_steps=1, first_order=False)),
    "maml-3step-2nd": (MAML, BatchedMAML, dict(inner_lr=0.4, inner_steps=3, first_order=False)),
    "maml-1step-1st": (MAML, BatchedMAML, dict(inner_lr=0.4, inner_steps=1, first_order=True)),
    "maml-3step-1st": (MAML, BatchedMAML, dict(inner_lr=0.4, inner_steps=3, first_order=True)),
    "reptile-sgd-5step": (Reptile, BatchedReptile, dict(inner_lr=0.1, inner_steps=5, inner_batch=10,
                                                        inner_optimizer="sgd")),
    "protonet": (ProtoNet, BatchedProtoNet, {}),
}


def episodes(tasks: int, ways: int, shots: int, queries: int, device, dtype, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, ways * shots, 1, 28, 28, generator=g)
    qx = torch.rand(tasks, ways * queries, 1, 28, 28, generator=g)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return EpisodeBatch(sx, sy, qx, qy, ways, shots, queries).to(device, dtype)


def grads(learner, batch) -> torch.Tensor:
    learner.meta_step(batch)
    return torch.cat([p.grad.flatten() for p in learner.model.parameters()])


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def compare(name: str, device: torch.device, dtype: torch.dtype, tf32: bool) -> float:
    loop_cls, batched_cls, kwargs = CASES[name]
    torch.manual_seed(0)
    model = Conv4() if loop_cls is ProtoNet else Classifier(Conv4(), 5)
    model = model.to(device, dtype)
    shots = 10 if loop_cls is Reptile else 1
    batch = episodes(8, 5, shots, 15, device, dtype)
    set_tf32(tf32)
    try:
        reference = grads(loop_cls(copy.deepcopy(model), **kwargs), batch)
        batched = grads(batched_cls(copy.deepcopy(model), **kwargs), batch)
    finally:
        set_tf32(False)
    return relative_l2(batched, reference)


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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "device": str(device),
                                    "episodes": "5-way 1-shot (Reptile: 10-shot) 15 queries, 8 tasks, Conv4-64",
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
