"""Train-to-accuracy benchmarks: train a named experiment with the CLI, evaluate it, record it.

    python benchmarks/accuracy_runs.py protonet-5w1s-ours protonet-anchor ...
    python benchmarks/accuracy_runs.py --list
    python benchmarks/accuracy_runs.py demo-3min --threads 2   # recorded as demo-3min-2threads

Each experiment trains with `l2l-app train` (usually under a wall-clock --time-budget),
then evaluates the best-validation checkpoint on the test split with `l2l-app eval`
(1000 fixed-seed episodes, 95% CI) for every listed episode shape.  The run directory
(config, metrics, evaluation JSON; checkpoints are not committed) lands in
benchmarks/results/runs/<name>/ and a summary row in benchmarks/results/accuracy.jsonl,
stamped with machine, versions, date and the load average seen during training.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "runs"
sys.path.insert(0, str(HERE.parent))

# name -> (train arguments, [(ways, shots)] to evaluate on the test split)
EXPERIMENTS = {
    # Issue 2 anchor: learn2learn-example-style ProtoNet (60-way 5-shot 5-query, Adam 1e-3,
    # TaskDataset sampling, per-episode loop), 10 minutes on 2 CPU cores.
    "protonet-anchor-10min": (
        ["--algo", "protonet", "--train-ways", "60", "--train-shots", "5", "--train-queries", "5",
         "--ways", "5", "--shots", "1", "--queries", "15", "--meta-lr", "1e-3", "--engine", "loop",
         "--sampler", "l2l", "--iterations", "100000", "--time-budget", "10", "--val-every", "100000"],
        [(5, 1), (5, 5), (20, 1)]),
    # Ours, same wall time: 1-shot training episodes as in the ProtoNet paper (cheaper per step),
    # on-device tensor sampler, validation-selected checkpoint.
    "protonet-5w1s-10min": (
        ["--recipe", "protonet-omniglot-5w1s", "--iterations", "100000", "--time-budget", "10",
         "--val-every", "200", "--val-episodes", "200"],
        [(5, 1), (5, 5), (20, 1)]),
    "protonet-5w1s-15min": (
        ["--recipe", "protonet-omniglot-5w1s", "--iterations", "100000", "--time-budget", "15",
         "--val-every", "250", "--val-episodes", "200"],
        [(5, 1), (5, 5), (20, 1)]),
    # `make demo` as it stands in the Makefile (3 minutes, then 5w1s and 5w5s).
    "demo-3min": (
        ["--recipe", "protonet-omniglot-5w1s", "--iterations", "100000", "--time-budget", "3",
         "--val-every", "100", "--val-episodes", "100"],
        [(5, 1), (5, 5)]),
    # Issue 3: MAML / FOMAML / Reptile on Omniglot 5-way 1-shot, as many steps as a CPU budget allows
    # (published recipes, except MAML's meta-batch 8 instead of 32 to get 4x the steps).
    "maml-5w1s-cpu": (
        ["--recipe", "maml-omniglot-5w1s", "--meta-batch", "8", "--iterations", "1000",
         "--val-every", "100", "--val-episodes", "100", "--engine", "loop"],
        [(5, 1)]),
    "fomaml-5w1s-cpu": (
        ["--recipe", "fomaml-omniglot-5w1s", "--meta-batch", "8", "--iterations", "1000",
         "--val-every", "100", "--val-episodes", "100", "--engine", "loop"],
        [(5, 1)]),
    "reptile-5w1s-cpu": (
        ["--recipe", "reptile-omniglot-5w1s", "--iterations", "500",
         "--val-every", "250", "--val-episodes", "50"],
        [(5, 1)]),
    # The same 500 steps with the epsilon of the recipe's first 500 of 100,000 iterations (1.0 down to
    # 0.995: what a run cut short by a time budget trains with): how much Reptile's annealing is worth.
    "reptile-5w1s-cpu-unannealed": (
        ["--recipe", "reptile-omniglot-5w1s", "--iterations", "500", "--meta-lr-final", "0.995",
         "--val-every", "250", "--val-episodes", "50"],
        [(5, 1)]),
    # Issue 10: ANIL and Meta-SGD with maml-5w1s-cpu's protocol (MAML's published Omniglot 5-way
    # 1-shot settings, meta-batch 8, 1000 steps, loop engine). ANIL has no 5w1s recipe (its paper
    # reports Omniglot 20-way), so its settings are written out.
    "anil-5w1s-cpu": (
        ["--algo", "anil", "--backbone", "conv4-strided", "--hidden", "64", "--ways", "5", "--shots", "1",
         "--queries", "15", "--train-queries", "1", "--meta-lr", "0.001", "--inner-lr", "0.4",
         "--inner-steps", "1", "--test-inner-steps", "3", "--meta-batch", "8", "--iterations", "1000",
         "--val-every", "100", "--val-episodes", "100", "--engine", "loop"],
        [(5, 1)]),
    "metasgd-5w1s-cpu": (
        ["--recipe", "metasgd-omniglot-5w1s", "--meta-batch", "8", "--iterations", "1000",
         "--val-every", "100", "--val-episodes", "100", "--engine", "loop"],
        [(5, 1)]),
    # Issue 4: the same MAML training on both engines (same seed, same steps, same tensor-sampler
    # episodes); only how the meta-batch is computed differs.
    "maml-5w1s-loop-engine": (
        ["--recipe", "maml-omniglot-5w1s", "--meta-batch", "4", "--iterations", "300", "--val-every", "150",
         "--val-episodes", "100", "--engine", "loop", "--sampler", "tensor"],
        [(5, 1)]),
    "maml-5w1s-batched-engine": (
        ["--recipe", "maml-omniglot-5w1s", "--meta-batch", "4", "--iterations", "300", "--val-every", "150",
         "--val-episodes", "100", "--engine", "batched", "--sampler", "tensor"],
        [(5, 1)]),
}


def l2l_app(*args: str) -> None:
    cmd = [sys.executable, "-m", "l2l_app.cli", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def run(name: str, episodes: int, threads: int | None = None) -> dict:
    """Train and evaluate experiment `name`; with `threads`, every process gets that many
    (OMP_NUM_THREADS) and the record and run directory are named `<name>-<threads>threads`."""
    from l2l_app.rundir import eval_file_name
    from l2l_app.runtime import environment
    train_args, shapes = EXPERIMENTS[name]
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch
        torch.set_num_threads(threads)  # so environment() below records it
        name = f"{name}-{threads}threads"
    run_dir = RUNS / name
    load_before = os.getloadavg()
    start = time.time()
    l2l_app("train", *train_args, "--seed", "0", "--out", str(run_dir), "--overwrite")
    train_seconds = time.time() - start
    load_after = os.getloadavg()
    results = {}
    seed = json.loads((run_dir / "config.json").read_text())["eval"]["eval_seed"]
    for ways, shots in shapes:
        l2l_app("eval", str(run_dir), "--episodes", str(episodes), "--ways", str(ways),
                "--shots", str(shots), "--queries", "15", "--quiet")
        eval_file = run_dir / eval_file_name("test", "best", ways, shots, 15, episodes, seed)
        ev = json.loads(eval_file.read_text())
        results[f"{ways}w{shots}s"] = {"mean": ev["mean"], "ci95": ev["ci95"], "episodes": ev["episodes"]}
    metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = max(m["step"] for m in metrics)
    row = {"name": name, "train_args": train_args, "steps": steps, "train_seconds": round(train_seconds, 1),
           "test": results, "loadavg_before": load_before, "loadavg_after": load_after,
           "environment": environment()}
    with open(RESULTS / "accuracy.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in ("name", "steps", "train_seconds", "test")}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for training and evaluation (default: the environment's)")
    args = parser.parse_args()
    if args.list or not args.names:
        for name, (train_args, shapes) in EXPERIMENTS.items():
            print(f"{name}: {' '.join(train_args)}")
        return
    RUNS.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        if name not in EXPERIMENTS:
            raise SystemExit(f"unknown experiment {name!r}; --list shows them")
        run(name, args.episodes, args.threads)


if __name__ == "__main__":
    main()
