"""Per-step time of data-parallel meta-training on 1 and 2 ranks, and the all-reduce's share.

    python benchmarks/distributed_scaling.py [--out benchmarks/results/distributed-cpu] [--steps 4]
                                             [--warmup 1] [--workloads maml,protonet] [--device cpu]

For each workload (the training step `l2l-app train` runs: draw the global meta-batch, this rank's
meta-gradient, the all-reduce, the optimiser step) and each launch:

* `1 process, 1 thread` and `1 process, 2 threads`: `python` alone (no process group);
* `2 ranks x 1 thread`: `torchrun --standalone --nproc_per_node 2` (gloo on CPU, NCCL on CUDA),

it times `--steps` steps after `--warmup` untimed ones, split into drawing the batch, computing
(this rank's tasks), and the all-reduce (flatten, reduce, unflatten; it includes waiting for the
slower rank), then times the bare all-reduce of a buffer of the model's size (`--reduce-reps`
calls after a barrier): the transfer itself.  Medians over steps; per-rank figures in
`raw/`.  On CUDA, run it with one GPU per rank (`--device cuda`); the launches are the same.

The same measurement for any torchrun form: `torchrun --nproc_per_node N benchmarks/distributed_scaling.py
--worker WORKLOAD --out DIR` writes DIR/raw/WORKLOAD-<N>x<threads>-rank<R>.json.

Results: OUT/scaling.json and OUT/scaling.md, stamped with `runtime.environment()` and the load
average (the 2 cores may be shared with other work).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

#: workload -> `l2l-app train` flags (Omniglot 5-way 1-shot, 15 queries, Conv4 with 64 filters)
WORKLOADS: Dict[str, Dict[str, Any]] = {
    "maml": dict(algo="maml", hidden=64, ways=5, shots=1, queries=15, meta_batch=32, inner_steps=1, engine="loop"),
    "protonet": dict(algo="protonet", hidden=64, ways=5, shots=1, queries=15, meta_batch=8, engine="loop"),
}
#: (ranks, threads per rank) of each launch
LAUNCHES = ((1, 1), (1, 2), (2, 1))


def worker(name: str, out: Path, steps: int, warmup: int, device: str, reduce_reps: int) -> None:
    """One rank: build the workload as `train` does, time the steps and the bare all-reduce."""
    import torch

    from l2l_app import distributed
    from l2l_app.config import compose
    from l2l_app.data import Preprocessing
    from l2l_app.experiment import Experiment, build_optimizer, configured_dataset, load_config_split

    config = compose({**WORKLOADS[name], "device": device, "iterations": steps + warmup})
    world = distributed.join(device, config.optim.meta_batch)
    world.timed = True
    train = load_config_split(config, "train", progress=False)
    x = Experiment.build(config, device=world.device_name, meta_batch=config.optim.meta_batch,
                         preprocessing=Preprocessing.for_run(configured_dataset(config), train))
    source = x.task_source(train, x.train_shape, config.run.seed)
    optimizer, _ = build_optimizer(x.config, x.learner)

    def sync() -> float:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter()

    rows: List[Dict[str, float]] = []
    for step in range(warmup + steps):
        t0 = sync()
        batch = source.sample(config.optim.meta_batch)
        t1 = sync()
        before = world.reduce_seconds
        world.meta_step(x.learner, batch)
        optimizer.step()
        t2 = sync()
        reduce_s = world.reduce_seconds - before
        if step >= warmup:
            rows.append({"step_ms": 1e3 * (t2 - t0), "sample_ms": 1e3 * (t1 - t0),
                         "compute_ms": 1e3 * (t2 - t1 - reduce_s), "reduce_ms": 1e3 * reduce_s})
    numel = sum(p.numel() for p in x.learner.meta_parameters())
    bare = None
    if world.distributed:
        buf = torch.zeros(numel, device=x.device)
        torch.distributed.barrier()
        t0 = sync()
        for _ in range(reduce_reps):
            torch.distributed.all_reduce(buf)
        bare = 1e3 * (sync() - t0) / reduce_reps
    record = {"workload": name, "flags": WORKLOADS[name], "ranks": world.size, "rank": world.rank,
              "threads": torch.get_num_threads(), "device": str(x.device), "engine": x.engine, "sampler": x.sampler,
              "meta_parameters": numel, "bucket_mb": numel * 4 / 1e6, "steps": rows, "bare_all_reduce_ms": bare}
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"{name}-{world.size}x{torch.get_num_threads()}-rank{world.rank}.json").write_text(json.dumps(record))


def launch(name: str, ranks: int, threads: int, args: argparse.Namespace) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(REPO)}
    head = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                               "--nproc_per_node", str(ranks)]
    cmd = [*head, str(Path(__file__).resolve()), "--worker", name, "--out", str(args.out), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device, "--reduce-reps", str(args.reduce_reps)]
    print(f"{name}: {ranks} rank(s) x {threads} thread(s) ...", flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=REPO)


def median(rows: List[Dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def summarise(out: Path) -> Dict[str, Any]:
    from l2l_app import runtime

    results = []
    for path in sorted((out / "raw").glob("*.json")):
        r = json.loads(path.read_text())
        if r["rank"] != 0:
            continue
        steps = r["steps"]
        results.append({**{k: r[k] for k in ("workload", "flags", "ranks", "threads", "device", "engine", "sampler",
                                             "meta_parameters", "bucket_mb", "bare_all_reduce_ms")},
                        **{f"median_{k}": median(steps, k) for k in ("step_ms", "sample_ms", "compute_ms",
                                                                      "reduce_ms")},
                        "p10_step_ms": sorted(s["step_ms"] for s in steps)[len(steps) // 10],
                        "p90_step_ms": sorted(s["step_ms"] for s in steps)[-1 - len(steps) // 10],
                        "timed_steps": len(steps)})
    for r in results:
        base = next(b for b in results if b["workload"] == r["workload"] and b["ranks"] == 1 and b["threads"] == 1)
        r["speedup_vs_1x1"] = base["median_step_ms"] / r["median_step_ms"]
        r["reduce_share"] = r["median_reduce_ms"] / r["median_step_ms"]
    return {"environment": runtime.environment(), "load_average": os.getloadavg(), "results": results}


def markdown(summary: Dict[str, Any]) -> str:
    env = summary["environment"]
    lines = [f"## Data-parallel meta-training: 1 vs 2 ranks on {env['cpu']} ({env['cpu_count']} cores)", "",
             f"torch {env['torch']}, Python {env['python']}, git {env['git']}, {env['date']}; load average before "
             f"the summary {', '.join(f'{v:.2f}' for v in summary['load_average'])}.  Omniglot 5-way 1-shot, 15 "
             "queries, Conv4 64 filters; each step: draw the global meta-batch (every rank draws all of it), "
             "this rank's tasks' meta-gradient, the all-reduce, Adam.  Medians over the timed steps.", "",
             "| workload | launch | ms/step (p10-p90) | draw ms | compute ms | all-reduce ms (share) | "
             "bare all-reduce ms | speed-up vs 1x1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary["results"]:
        bare = "–" if r["bare_all_reduce_ms"] is None else f"{r['bare_all_reduce_ms']:.2f}"
        lines.append(f"| {r['workload']} (meta-batch {r['flags']['meta_batch']}, {r['engine']}) | {r['ranks']} rank(s)"
                     f" x {r['threads']} thread(s) | {r['median_step_ms']:.0f} ({r['p10_step_ms']:.0f}-"
                     f"{r['p90_step_ms']:.0f}) | {r['median_sample_ms']:.1f} | {r['median_compute_ms']:.0f} | "
                     f"{r['median_reduce_ms']:.1f} ({100 * r['reduce_share']:.1f}%) | {bare} | "
                     f"{r['speedup_vs_1x1']:.2f}x |")
    r = summary["results"][0]
    lines += ["", f"The all-reduce moves {r['meta_parameters']} floats ({r['bucket_mb']:.2f} MB) in one bucket per "
              "step; 'all-reduce ms' includes waiting for the slower rank, 'bare' is the transfer alone (gloo, "
              "loopback).  One process on 1 thread vs 2 threads shows what the second core gives without "
              "ranks."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "results" / "distributed-cpu")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--reduce-reps", type=int, default=50)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.out, args.steps, args.warmup, args.device, args.reduce_reps)
        return
    names = args.workloads.split(",")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"--workloads {','.join(unknown)}: choose from {', '.join(WORKLOADS)}")
    for stale in (args.out / "raw").glob("*.json"):
        stale.unlink()
    for name in names:
        for ranks, threads in LAUNCHES:
            launch(name, ranks, threads, args)
    summary = summarise(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(summary, indent=2))
    (args.out / "scaling.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
