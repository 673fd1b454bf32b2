"""Training with the captured CUDA-graph step against training op by op, and a captured run
resumed halfway against one that was not stopped (MAML Omniglot 5w1s recipe, 40 steps).

    python benchmarks/captured_resume.py --device cuda --out results/gpu-h100/captured_resume.json

Four runs from the same seed: eager twice (`--no-cuda-graph`: the device's own run-to-run
floor, nonzero where a kernel sums with atomics), captured, and captured stopped at step 20 and
resumed to 40 (a new trainer: a fresh capture).  Reported: the largest absolute difference of
any final weight, and whether the logged losses agree, for each pair, and what the captured
runs' graph held (`graph_extent` from run.json: the whole step with the recipe's tensor sampler
and Adam, whose captured form keeps its step count on the device).  On a CPU there is no
capture: the script checks the eager resume only.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2l_app.config import compose, with_overrides  # noqa: E402
from l2l_app.runtime import environment  # noqa: E402
from l2l_app.trainer import Trainer  # noqa: E402

STEPS = 40


def train(run_dir: Path, device: str, cuda_graph: bool, iterations: int, resume: bool = False,
          meta_batch: int | None = None) -> Dict[str, torch.Tensor]:
    overrides = dict(device=device, cuda_graph=cuda_graph, iterations=iterations, val_every=1000,
                     checkpoint_every=1000, seed=0, engine="batched")
    if meta_batch is not None:
        overrides.update(meta_batch=meta_batch, hidden=8)
    config = with_overrides(compose({}, recipe="maml-omniglot-5w1s"), overrides)
    Trainer(config, run_dir, progress=False, resume=resume).fit()
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return state["learner"]["model"]


def losses(run_dir: Path) -> list:
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(l)["kind"] == "train"]


def max_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    small = None if cuda else 2  # a CPU dry run: a small meta-batch and model
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = {"eager": train(root / "eager", args.device, False, STEPS, meta_batch=small),
                "eager again": train(root / "eager2", args.device, False, STEPS, meta_batch=small)}
        if cuda:
            runs["captured"] = train(root / "captured", args.device, True, STEPS)
        kind = "captured" if cuda else "eager"
        train(root / "resumed", args.device, cuda, STEPS // 2, meta_batch=small)
        runs[f"{kind}, resumed at {STEPS // 2}"] = train(root / "resumed", args.device, cuda, STEPS, resume=True,
                                                          meta_batch=small)
        logs = {"eager": losses(root / "eager"), "eager again": losses(root / "eager2"),
                f"{kind}, resumed at {STEPS // 2}": losses(root / "resumed")}
        extent = None
        if cuda:
            logs["captured"] = losses(root / "captured")
            extent = json.loads((root / "captured" / "run.json").read_text()).get("graph_extent")
        pairs = [("eager", "eager again"), ("eager", kind), (kind, f"{kind}, resumed at {STEPS // 2}")]
        for a, b in pairs:
            if a == b:
                continue
            rows[f"{a} vs {b}"] = {"max_abs_weight_difference": max_difference(runs[a], runs[b]),
                                   "losses_identical": logs[a] == logs[b]}
            print(f"{a} vs {b}: max |weight difference| {rows[f'{a} vs {b}']['max_abs_weight_difference']:.3e}, "
                  f"losses identical: {logs[a] == logs[b]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "device": args.device, "steps": STEPS,
                                    "workload": "maml-omniglot-5w1s recipe, batched engine",
                                    "graph_extent": extent, "pairs": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
