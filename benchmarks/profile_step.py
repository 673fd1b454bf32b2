"""Where a recipe's batched training step spends its device time, kernel by kernel.

    python benchmarks/profile_step.py --device cuda --out DIR maml-omniglot-5w1s protonet-omniglot-5w1s

For each recipe, on its own training workload (backbone, episode shape, meta-batch; synthetic
images of the dataset's size, as `l2l-app bench --recipe NAME --synthetic`), `torch.profiler`
records a few steps after a warm-up, in two forms:

* `eager`: the batched meta-gradient and the optimiser step launched op by op;
* `captured step`: the whole step replayed as one CUDA graph (`CapturedTrainingStep`), the form
  training uses on a GPU (the profiler sees the graph's kernels where CUPTI reports them);
* `compiled captured step` (with --compiled): the same with torch.compile's kernels in the graph,
  the form `train --compile` uses.

DIR/profile-<recipe>.json holds, per form and per step: the number of device kernels, their
summed device time, the wall time, and the kernels with the most device time (name, calls,
microseconds, share), plus the same time grouped by family (convolution, matrix product,
normalisation and reductions, elementwise, copies, other), and the convolution calls
(`aten::convolution`: the forwards, and those a double backward issues) by group count (1:
ordinary, over every task's images at once where the weights are shared -- vmap folds the first
inner step this way; the number of tasks: grouped, where the weights are per task).  It says what the remaining
milliseconds of a step are made of -- launch-bound (many cheap kernels) or compute-bound (a
few slow ones, e.g. vmap's grouped convolutions) -- so the next optimisation is chosen from a
measurement.  On a CPU (dry run) the rows are CPU operators.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2l_app.bench.harness import Bench, BenchSettings, build_impl, recipe_workload  # noqa: E402
from l2l_app.data import build_task_source  # noqa: E402
from l2l_app.engine.graphs import CapturedTrainingStep  # noqa: E402
from l2l_app.experiment import build_optimizer  # noqa: E402
from l2l_app.learner import apply_meta_gradient  # noqa: E402
from l2l_app.runtime import environment  # noqa: E402

#: kernel-name fragments -> family (first match wins; lower case)
FAMILIES = (
    ("convolution", ("conv", "cudnn", "implicit_gemm", "wgrad", "dgrad", "fprop", "im2col", "col2im")),
    ("matrix product", ("gemm", "bmm", "cutlass", "matmul", "addmm", "mm_")),
    ("normalisation and reductions", ("batch_norm", "var_mean", "welford", "reduce", "norm", "softmax", "sum")),
    ("copies", ("copy", "memcpy", "memset", "cat", "index", "gather", "scatter")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "foreach", "fused_", "mul", "add", "relu", "where")),
)
TOP = 25


def family(name: str) -> str:
    low = name.lower()
    return next((fam for fam, parts in FAMILIES if any(p in low for p in parts)), "other")


def profile_steps(step: Callable[[], Any], steps: int, device: torch.device) -> Dict[str, Any]:
    """Profile `steps` calls of `step`; per-step kernel count, device time, wall time and top kernels."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync()
    with profile(activities=activities, record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = time.perf_counter() - start
    rows = []
    for evt in prof.key_averages():
        if cuda:
            us = evt.self_device_time_total
            if evt.device_type != torch.autograd.DeviceType.CUDA or us <= 0:
                continue
        else:
            us = evt.self_cpu_time_total
            if us <= 0 or not evt.key.startswith("aten::"):
                continue
        rows.append({"name": evt.key, "calls_per_step": evt.count / steps, "us_per_step": us / steps})
    convolutions: Dict[str, float] = {}  # convolution calls by group count (vmap's per-task weights: > 1)
    for evt in prof.events():
        if evt.name == "aten::convolution" and evt.concrete_inputs:
            groups = f"groups={evt.concrete_inputs[-1]}"
            convolutions[groups] = convolutions.get(groups, 0) + 1 / steps
    total = sum(r["us_per_step"] for r in rows)
    rows.sort(key=lambda r: -r["us_per_step"])
    families: Dict[str, float] = {}
    for r in rows:
        r["share"] = r["us_per_step"] / total if total else 0.0
        families[family(r["name"])] = families.get(family(r["name"]), 0.0) + r["us_per_step"]
    return {"steps": steps, "wall_ms_per_step": 1000 * wall / steps,
            "kernels_per_step" if cuda else "ops_per_step": sum(r["calls_per_step"] for r in rows),
            "device_ms_per_step" if cuda else "cpu_ms_per_step": total / 1000,
            "families_ms_per_step": {k: round(v / 1000, 4) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
            "convolution_calls_per_step": convolutions,
            "top": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows[:TOP]]}


def profile_recipe(recipe: str, device: str, steps: int, warmup: int, compiled: bool = False) -> Dict[str, Any]:
    workload = recipe_workload(recipe)
    bench = Bench(BenchSettings(**workload, device=device, synthetic=True), progress=lambda _: None)
    config, dev = bench.config, bench.device
    out: Dict[str, Any] = {"recipe": recipe, "workload": dict(workload)}
    forms: Dict[str, Callable[[], Callable[[], Any]]] = {}

    def eager() -> Callable[[], Any]:
        learner, _ = build_impl("batched", config, bench.model)
        optimizer, _ = build_optimizer(config, learner)
        batch = bench.batch(config.optim.meta_batch)

        def step() -> None:
            learner.meta_gradient(batch)
            apply_meta_gradient(learner, optimizer, config.optim.grad_clip)
        return step

    def captured(impl: str) -> Callable[[], Callable[[], Any]]:
        def make() -> Callable[[], Any]:
            learner, _ = build_impl(impl, config, bench.model)
            optimizer, _ = build_optimizer(config, learner, capturable=dev.type == "cuda")
            source = build_task_source("tensor", bench.split, bench.s.ways, bench.s.shots, bench.s.queries,
                                       seed=0, device=dev)
            return CapturedTrainingStep(learner, source, config.optim.meta_batch, optimizer, config.optim.grad_clip)
        return make

    forms["eager"], forms["captured step"] = eager, captured("batched-captured-step")
    if compiled:
        forms["compiled captured step"] = captured("batched-compiled-captured-step")
    for name, make in forms.items():
        try:
            step = make()
            for _ in range(warmup):
                step()
            out[name] = profile_steps(step, steps, dev)
        except Exception as exc:  # recorded, not fatal: the other form still counts
            out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        summary = {k: v for k, v in out[name].items() if k not in ("top", "families_ms_per_step")}
        print(f"{recipe} {name}: {summary}", flush=True)
        if "families_ms_per_step" in out[name]:
            print(f"  by family (ms/step): {out[name]['families_ms_per_step']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="profiled steps per form")
    parser.add_argument("--warmup", type=int, default=5, help="unprofiled steps first (the capture among them)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compiled", action="store_true", help="also profile the step with torch.compile's kernels")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for recipe in args.recipes:
        profiled = profile_recipe(recipe, args.device, args.steps, args.warmup, args.compiled)
        result = {"environment": environment(), **profiled}
        (args.out / f"profile-{recipe}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
