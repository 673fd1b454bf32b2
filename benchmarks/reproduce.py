"""Published Omniglot numbers reproduced on one GPU in minutes: `l2l-app train --recipe X` under a
wall-clock budget, then `l2l-app eval` of the best-validation checkpoint (1000 fixed-seed test
episodes, 95% CI), recorded in OUT/reproduction.json (one record per recipe and episode shape).

    python benchmarks/reproduce.py --out DIR maml-omniglot-5w1s protonet-omniglot-5w1s
    python benchmarks/reproduce.py --out DIR --together reptile-omniglot-5w1s anil-omniglot-20w1s
    python benchmarks/reproduce.py --list

Every run uses the defaults a user gets on a GPU (`--engine auto`: the batched engine, the
tensor sampler, the meta-step captured as one CUDA graph; run.json records the choice), the
recipe's iterations under a wall-clock `--time-budget` (whichever ends first), validation every
500 steps on 200 episodes and a checkpoint every 2000 steps.  `--together`
trains the named recipes at the same time on the one GPU (each record says so: its minutes were
shared); without it they run one after another.  Run directories land in OUT/runs/<recipe>; copy
them without their checkpoints next to the JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

#: recipe -> (training minutes, [(ways, shots, the paper's accuracy)], extra train arguments)
REPRODUCTIONS: Dict[str, Tuple[float, List[Tuple[int, int, float]], List[str]]] = {
    "maml-omniglot-5w1s": (6.0, [(5, 1, 98.7)], []),
    "protonet-omniglot-5w1s": (2.0, [(5, 1, 98.8), (20, 1, 96.0)], []),
    "reptile-omniglot-5w1s": (4.0, [(5, 1, 97.68)], []),
    "metasgd-omniglot-5w1s": (1.5, [(5, 1, 99.53)], []),
    "anil-omniglot-20w1s": (1.5, [(20, 1, 96.2)], []),
}
COMMON = ["--val-every", "500", "--val-episodes", "200", "--checkpoint-every", "2000",
          "--seed", "0", "--overwrite"]
#: test episodes per evaluation (--episodes: fewer for a dry run)
EPISODES = 1000


def command(*args: str) -> List[str]:
    return [sys.executable, "-m", "l2l_app.cli", *args]


def train_args(recipe: str, minutes: float, run_dir: Path, more: List[str] = ()) -> List[str]:
    _, _, extra = REPRODUCTIONS[recipe]
    return ["train", "--recipe", recipe, *extra, *more, "--time-budget", f"{minutes:g}", *COMMON, "--out", str(run_dir)]


def evaluate(recipe: str, run_dir: Path, minutes: float, together: List[str], gpu: str,
             episodes: int = EPISODES, more: List[str] = ()) -> List[dict]:
    from l2l_app.rundir import eval_file_name
    _, shapes, _ = REPRODUCTIONS[recipe]
    config = json.loads((run_dir / "config.json").read_text())
    seed = config["eval"]["eval_seed"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [m for m in metrics if m["kind"] == "train"]
    steps, seconds = train_rows[-1]["step"], train_rows[-1]["time"]
    info = json.loads((run_dir / "run.json").read_text())
    records = []
    for ways, shots, paper in shapes:
        args = ["eval", str(run_dir), "--episodes", str(episodes), "--ways", str(ways), "--shots", str(shots),
                "--queries", "15", "--quiet"]
        start = time.perf_counter()
        subprocess.run(command(*args), check=True)
        eval_seconds = time.perf_counter() - start
        ev = json.loads((run_dir / eval_file_name("test", "best", ways, shots, 15, episodes, seed)).read_text())
        records.append({
            "recipe": recipe, "shape": f"{ways}w{shots}s", "accuracy": round(ev["mean"], 2),
            "ci95": round(ev["ci95"], 2), "episodes": ev["episodes"], "paper": paper,
            "shortfall": round(max(0.0, paper - ev["mean"]), 2), "minutes": minutes, "steps": steps,
            "train_seconds": seconds, "ms_per_step": round(1000 * seconds / steps, 3),
            "eval_seconds": round(eval_seconds, 1), "gpu": gpu, "execution": info.get("execution"),
            "trained_together_with": [r for r in together if r != recipe],
            "command": " && ".join(["l2l-app " + " ".join(train_args(recipe, minutes, Path(f"runs/{recipe}"), more)),
                                    "l2l-app " + " ".join(args[:1] + [f"runs/{recipe}"] + args[2:])]),
        })
    return records


#: torch.compile must be this much faster to be picked (it costs its compilation, ~15-30 s, once)
COMPILE_MUST_SAVE = 0.25


def pick_train_args(benches: List[dict]) -> List[str]:
    """The `l2l-app train` flags of the fastest end-to-end configuration the benches measured.

    Each bench.json ran with one cuDNN setting and one convolution impl (`settings.cudnn_benchmark`,
    `settings.conv_impl`); its captured impls are compiled or not.  The fastest uncompiled row is
    the baseline; a compiled row is picked only when it is COMPILE_MUST_SAVE faster than that.
    A bench with TF32 on is measured for the record, never picked: the reproductions run in fp32.
    Returns e.g. ['--compile', '--cudnn-benchmark', '--conv-impl=unfold'].
    """
    from l2l_app.bench.harness import CAPTURED, WHOLE_STEP
    trainable = WHOLE_STEP + CAPTURED  # what a training run on a GPU can be: one CUDA graph per step or meta-gradient
    rows = []  # (ms, compiled, cudnn autotuned, conv impl)
    for bench in benches:
        settings = bench.get("settings", {})
        if settings.get("tf32"):
            continue
        autotuned, conv = bool(settings.get("cudnn_benchmark", False)), settings.get("conv_impl", "native")
        for r in bench["results"]:
            if r.get("mode") == "end to end" and r.get("status") == "ok" and r["impl"] in trainable:
                rows.append((r["median_ms"], "compiled" in r["impl"], autotuned, conv))
    if not rows:
        return []
    plain = min((r for r in rows if not r[1]), default=None)
    compiled = min((r for r in rows if r[1]), default=None)
    best = plain or compiled
    if compiled is not None and plain is not None and compiled[0] < (1 - COMPILE_MUST_SAVE) * plain[0]:
        best = compiled
    return ((["--compile"] if best[1] else []) + (["--cudnn-benchmark"] if best[2] else [])
            + ([f"--conv-impl={best[3]}"] if best[3] != "native" else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--together", action="store_true", help="train the recipes at the same time")
    parser.add_argument("--minutes", type=float, default=None, help="override every recipe's training minutes")
    parser.add_argument("--episodes", type=int, default=EPISODES, help="test episodes per evaluation")
    parser.add_argument("--train-arg", action="append", default=[], help="one more `l2l-app train` argument")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the runs already in OUT/runs")
    parser.add_argument("--pick", type=Path, nargs="+", metavar="BENCH_JSON",
                        help="print the --train-arg flags of the fastest end-to-end captured configuration these "
                             "benches measured (compile only when 25%% faster; cuDNN autotuning when its bench won)")
    args = parser.parse_args()
    if args.pick:
        benches = [json.loads(p.read_text()) for p in args.pick if p.is_file()]
        print(" ".join(f"--train-arg={flag}" for flag in pick_train_args(benches)))  # e.g. --train-arg=--compile
        return
    if args.list or not args.recipes:
        for name, (minutes, shapes, _) in REPRODUCTIONS.items():
            print(f"{name}: {minutes:g} min, " + ", ".join(f"{w}w{s}s (paper {p})" for w, s, p in shapes))
        return
    unknown = [r for r in args.recipes if r not in REPRODUCTIONS]
    if unknown or args.out is None:
        raise SystemExit(f"unknown recipe(s) {unknown}; --list shows them" if unknown else "--out DIR is needed")
    from l2l_app.runtime import environment
    env = environment()
    gpu = env.get("cuda") or env.get("cpu")
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    minutes = {r: args.minutes if args.minutes is not None else REPRODUCTIONS[r][0] for r in args.recipes}
    together = list(args.recipes) if args.together else []
    groups = [args.recipes] if args.together else [[r] for r in args.recipes]
    path = args.out / "reproduction.json"
    records = json.loads(path.read_text()) if path.is_file() else []
    for group in groups:
        procs = []
        for recipe in group if not args.eval_only else []:
            cmd = command(*train_args(recipe, minutes[recipe], runs / recipe, args.train_arg))
            print("+", " ".join(cmd), flush=True)
            log = open(runs / f"{recipe}.train.log", "w")
            procs.append((recipe, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        for recipe, proc, log in procs:
            proc.wait()
            log.close()
            print(f"{recipe}: train exit {proc.returncode}; " +
                  (runs / f"{recipe}.train.log").read_text().strip().splitlines()[-1], flush=True)
        done = [recipe for recipe, proc, _ in procs if proc.returncode == 0] if not args.eval_only else group
        for recipe in done:
            new = evaluate(recipe, runs / recipe, minutes[recipe], together, gpu, args.episodes, args.train_arg)
            records = [r for r in records if not (r["recipe"] == recipe and r["shape"] in {n["shape"] for n in new})]
            records.extend(new)
            path.write_text(json.dumps(records, indent=2) + "\n")
            for r in new:
                print(f"{recipe} {r['shape']}: {r['accuracy']:.2f} ± {r['ci95']:.2f} (paper {r['paper']}), "
                      f"{r['steps']} steps in {r['train_seconds']:.0f}s ({r['ms_per_step']} ms/step)", flush=True)


if __name__ == "__main__":
    main()
