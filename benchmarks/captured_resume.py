"""Training with the captured CUDA-graph step against training op by op, and a captured run
resumed halfway against one that was not stopped (a recipe's training step, 40 steps; MAML
Omniglot 5w1s unless --recipe names another).

    python benchmarks/captured_resume.py --device cuda --out results/gpu-h100/captured_resume.json
    python benchmarks/captured_resume.py --device cuda --recipe reptile-omniglot-5w1s --out ...

Four runs from the same seed: eager twice (`--no-cuda-graph`: the device's own run-to-run
floor, nonzero where a kernel sums with atomics), captured, and captured stopped by a SIGINT
(as a Ctrl-C) halfway and resumed to 40 (a new trainer: a fresh capture; the run keeps its 40
iterations, so a schedule over them -- Reptile's annealed epsilon -- is the uninterrupted
run's).  Reported: the largest absolute difference of
any final weight, and whether the logged losses agree, for each pair, and what the captured
runs' graph held (`graph_extent` from run.json: the whole step with the recipe's tensor sampler
and its optimiser built graph-safe).  On a CPU there is no
capture: the script checks the eager resume only.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2l_app.config import compose, with_overrides  # noqa: E402
from l2l_app.runtime import environment  # noqa: E402
from l2l_app.trainer import Interrupted, Trainer  # noqa: E402

STEPS = 40


def train(run_dir: Path, recipe: str, device: str, cuda_graph: bool, resume: bool = False,
          stop_at: int | None = None, meta_batch: int | None = None) -> Dict[str, torch.Tensor]:
    """STEPS steps of `recipe` (or, with `stop_at`, a SIGINT sent at that step: the trainer stops
    after it, saved); the final (or saved) weights."""
    overrides = dict(device=device, cuda_graph=cuda_graph, iterations=STEPS, val_every=1000,
                     checkpoint_every=1000, seed=0, engine="batched")
    if meta_batch is not None:  # a CPU dry run
        overrides.update(meta_batch=meta_batch, hidden=8, val_episodes=4)
    config = with_overrides(compose({}, recipe=recipe), overrides)

    def ctrl_c(step: int, _metrics) -> None:
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
    try:
        Trainer(config, run_dir, progress=False, resume=resume, on_step=ctrl_c if stop_at else None).fit()
    except Interrupted:
        if stop_at is None:
            raise
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
    parser.add_argument("--recipe", default="maml-omniglot-5w1s")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    small = None if cuda else 2  # a CPU dry run: a small meta-batch and model
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = args.recipe
        runs = {"eager": train(root / "eager", recipe, args.device, False, meta_batch=small),
                "eager again": train(root / "eager2", recipe, args.device, False, meta_batch=small)}
        if cuda:
            runs["captured"] = train(root / "captured", recipe, args.device, True)
        kind = "captured" if cuda else "eager"
        train(root / "resumed", recipe, args.device, cuda, stop_at=STEPS // 2, meta_batch=small)
        runs[f"{kind}, resumed at {STEPS // 2}"] = train(root / "resumed", recipe, args.device, cuda, resume=True,
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
                                    "workload": f"{args.recipe} recipe, batched engine",
                                    "graph_extent": extent, "pairs": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
