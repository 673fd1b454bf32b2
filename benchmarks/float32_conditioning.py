"""How far a float32 MAML meta-gradient is from the float64 one, for each engine, on the
mini-ImageNet recipe's network (Conv4 with 32 filters, 3x84x84 inputs, 5-way 1-shot, 15 queries,
5 second-order inner steps), at the recipe's inner rate (0.01) and at MAML's Omniglot rate (0.4).

    python benchmarks/float32_conditioning.py --out benchmarks/results/cpu/float32_conditioning.json

An old H200 bench (`results/gpu-h200/maml-miniimagenet-5w1s`: synthetic images, 5 inner steps,
the default inner rate 0.4) found the two engines' float32 meta-gradients 0.45 apart (relative L2).
This script separates the two possible causes: an engine computing something else (then float64
loop and batched differ) or a computation float32 cannot hold (then each float32 engine is as far
from float64 as the other).  Images are uniform random pixels, as in that bench; 4 tasks.
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
from l2l_app.registry import ALGORITHMS  # noqa: E402
from l2l_app.runtime import environment  # noqa: E402

INNER_RATES = (0.01, 0.4)  # the mini-ImageNet recipe's, and MAML's default (Omniglot's)
TASKS, WAYS, QUERIES, STEPS = 4, 5, 15, 5


def episodes(dtype: torch.dtype, device: torch.device) -> EpisodeBatch:
    """TASKS 5-way 1-shot episodes of uniform random 3x84x84 images (seed 0)."""
    g = torch.Generator().manual_seed(0)
    sx = torch.rand(TASKS, WAYS, 3, 84, 84, generator=g)
    qx = torch.rand(TASKS, WAYS * QUERIES, 3, 84, 84, generator=g)
    sy = torch.arange(WAYS).expand(TASKS, -1).contiguous()
    qy = torch.arange(WAYS).repeat_interleave(QUERIES).expand(TASKS, -1).contiguous()
    return EpisodeBatch(sx, sy, qx, qy, WAYS, 1, QUERIES).to(device, dtype)


def meta_gradient(engine: str, model: torch.nn.Module, inner_lr: float, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """The flattened meta-gradient of one meta-batch, in float64 for comparison."""
    spec = ALGORITHMS["maml"]
    settings = spec.settings(inner_lr=inner_lr, inner_steps=STEPS, first_order=False)
    learner = getattr(spec, engine)(copy.deepcopy(model).to(device, dtype), settings)
    learner.meta_step(episodes(dtype, device))
    return torch.cat([p.grad.flatten() for p in learner.meta_parameters()]).double().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Classifier(Conv4(3, 32, 84), WAYS)
    rows = []
    for rate in INNER_RATES:
        reference = meta_gradient("loop", model, rate, torch.float64, device)
        row = {"inner_lr": rate}
        for engine, dtype in (("batched", torch.float64), ("loop", torch.float32), ("batched", torch.float32)):
            g = meta_gradient(engine, model, rate, dtype, device)
            key = f"{engine}_{str(dtype).split('.')[-1]}_vs_loop_float64"
            row[key] = ((g - reference).norm() / reference.norm()).item()
            print(f"inner_lr {rate}: {key} {row[key]:.3g}", flush=True)
        rows.append(row)
    record = {"workload": {"algo": "maml", "backbone": "conv4", "hidden": 32, "input": [3, 84, 84], "ways": WAYS,
                           "shots": 1, "queries": QUERIES, "tasks": TASKS, "inner_steps": STEPS,
                           "first_order": False, "images": "uniform random"},
              "metric": "relative L2 distance of the meta-gradient to the float64 loop engine's",
              "device": str(device), "environment": environment(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
