"""Which engine scores evaluation episodes faster: the loop or the batched engine, per algorithm.

    python benchmarks/eval_engines.py --device cpu --out benchmarks/results/cpu/eval_engines.json

For each algorithm's Omniglot 5-way 1-shot recipe (its test-time adaptation as published; ANIL's
20-way recipe at 5 ways), on 50 validation episodes of 15 queries per class: the best of 3 timed
`query_accuracy` calls of each engine, alternating, in one process, on one initialised model (the
time does not depend on the weights).  `AlgorithmSpec.eval_engine` follows these figures, and
tests/test_evaluation.py checks that it does.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2l_app.config import compose, resolve, with_overrides  # noqa: E402
from l2l_app.experiment import Experiment  # noqa: E402
from l2l_app.registry import ALGORITHMS  # noqa: E402
from l2l_app.runtime import environment  # noqa: E402

RECIPES = {name: f"{name}-omniglot-5w1s" for name in ALGORITHMS.names()}
RECIPES["anil"] = "anil-omniglot-20w1s"
EPISODES, REPEATS = 50, 3


def measure(algo: str, device: str) -> dict:
    config = resolve(with_overrides(compose({}, recipe=RECIPES[algo]), {"ways": 5, "shots": 1, "queries": 15}))
    x = Experiment.build(config, device=device, engine="loop")
    batch = x.task_source(x.load_split("val", progress=False), x.eval_shape, 1234, sampler="l2l").sample(EPISODES)
    learners = {engine: x.evaluation_learner(engine) for engine in config.spec.engines}
    times = {engine: [] for engine in learners}
    for _ in range(REPEATS):
        for engine, learner in learners.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            learner.query_accuracy(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[engine].append(time.perf_counter() - start)
    ms = {engine: round(1000 * min(t) / EPISODES, 2) for engine, t in times.items()}
    print(f"{algo:10s} {RECIPES[algo]:24s} " + "  ".join(f"{e} {v:8.2f} ms/episode" for e, v in ms.items()),
          flush=True)
    return {"algo": algo, "recipe": RECIPES[algo], "ms_per_episode": ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [measure(algo, args.device) for algo in ALGORITHMS.names()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "device": args.device,
                                    "threads": torch.get_num_threads(), "episodes": EPISODES,
                                    "timing": f"best of {REPEATS} query_accuracy calls on {EPISODES} episodes",
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
