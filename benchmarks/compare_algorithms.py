"""Meta-step time of several algorithms on one workload, in one process: ratios between algorithms.

    python benchmarks/compare_algorithms.py --algos maml,anil,metasgd --baseline maml \
        --out benchmarks/results/cpu/algorithms-omniglot-5w1s

`l2l-app bench` compares the implementations of one algorithm; this compares algorithms: each is
timed by the same harness (`l2l_app.bench.Bench`) on the same workload (backbone, episode shape,
meta-batch and inner steps), from the same initial weights (one seed: every algorithm with an
output layer builds the same Classifier) and the same meta-batch of episodes, one after the other
in one process.  Each algorithm's learners are measured on every impl it has (loop, batched); the
ratio of each to the baseline algorithm's same impl is reported (e.g. ANIL batched vs MAML
batched).  Writes compare.json and compare.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from l2l_app.bench import Bench, BenchSettings  # noqa: E402
from l2l_app.registry import ALGORITHMS  # noqa: E402
from l2l_app.runtime import environment  # noqa: E402


def measure(algos: List[str], impls: List[str], s: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for algo in algos:
        spec = ALGORITHMS[algo]
        own = {k: v for k, v in s["algorithm"].items() if k in spec.setting_names()}
        bench = Bench(BenchSettings(algo=algo, algorithm=own, **{k: v for k, v in s.items() if k != "algorithm"}))
        for impl in impls:
            r = bench.measure(impl, bench.config)
            r.pop("_grads", None)
            rows.append({"algo": algo, **r})
    return rows


def ratios(rows: List[Dict[str, Any]], baseline: str) -> None:
    """speedup_vs_<baseline>: the baseline algorithm's median for the same impl / this median."""
    base = {r["impl"]: r.get("median_ms") for r in rows if r["algo"] == baseline and r.get("status") == "ok"}
    for r in rows:
        if r.get("status") == "ok" and base.get(r["impl"]):
            r[f"speedup_vs_{baseline}"] = base[r["impl"]] / r["median_ms"]


def markdown(report: Dict[str, Any]) -> str:
    s, baseline = report["settings"], report["baseline"]
    lines = [f"## Meta-step time by algorithm: {s['dataset']} {s['ways']}-way {s['shots']}-shot, "
             f"{s['queries']} queries, meta-batch {s['meta_batch']}, {s['backbone']} ({s['hidden']} filters), "
             f"algorithm settings {s['algorithm']}", "",
             f"Device {report['device_name']}; torch {report['environment']['torch']}, "
             f"{report['environment']['torch_threads']} threads; {s['warmup']} warm-up + {s['repeats']} timed steps; "
             f"git {report['environment'].get('git')}, {report['environment']['date']}.", "",
             f"| algorithm | impl | median ms/step | p10–p90 ms | speed-up vs {baseline} (same impl) |",
             "|---|---|---:|---:|---:|"]
    for r in report["results"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['algo']} | {r['impl']} | {r.get('status')}: {r.get('note')} | | |")
            continue
        up = r.get(f"speedup_vs_{baseline}")
        lines.append(f"| {r['algo']} | {r['impl']} | {r['median_ms']:.1f} | {r['p10_ms']:.1f}–{r['p90_ms']:.1f} | "
                     f"{'' if up is None else f'{up:.2f}x'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default="maml,anil,metasgd")
    p.add_argument("--baseline", default="maml")
    p.add_argument("--impls", default="loop,batched")
    p.add_argument("--device", default="cpu")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--backbone", default="conv4")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    algos = [x for x in a.algos.split(",") if x]
    for algo in algos:
        ALGORITHMS[algo]  # an unknown name: the registry's one-line error
    settings = dict(dataset="omniglot", ways=5, shots=1, queries=15, meta_batch=a.meta_batch, hidden=a.hidden,
                    backbone=a.backbone, device=a.device, warmup=a.warmup, repeats=a.repeats, seed=0,
                    algorithm={"inner_steps": a.inner_steps})
    rows = measure(algos, [x for x in a.impls.split(",") if x], settings)
    ratios(rows, a.baseline)
    env = environment()
    report = {"settings": settings, "baseline": a.baseline, "device": a.device,
              "device_name": env["cuda"] if a.device.startswith("cuda") else env["cpu"],
              "environment": env, "results": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "compare.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (a.out / "compare.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
