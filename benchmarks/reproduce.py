"""Published Omniglot numbers reproduced on one GPU in minutes: `l2l-app train --recipe X` under a
wall-clock budget, then `l2l-app eval` of the best-validation checkpoint (1000 fixed-seed test
episodes, 95% CI), recorded in OUT/reproduction.json (one record per recipe and episode shape).

    python benchmarks/reproduce.py --out DIR maml-omniglot-5w1s protonet-omniglot-5w1s
    python benchmarks/reproduce.py --out DIR --together metasgd-omniglot-5w1s anil-omniglot-20w1s
    python benchmarks/reproduce.py --list

Every run uses the defaults a user gets on a GPU (`--engine auto`: the batched engine, the
tensor sampler, the meta-step captured as one CUDA graph; run.json records the choice), the
recipe's iterations under a wall-clock `--time-budget` (whichever ends first), validation every
500 steps on 200 episodes and a checkpoint every 2000 steps.  `--together`
trains the named recipes at the same time on the one GPU (each record says so: its minutes were
shared); without it they run one after another.  Run directories land in OUT/runs/<recipe>; copy
them without their checkpoints next to the JSON.

A recipe whose schedule spans its iterations (Reptile's epsilon anneals linearly to 0 over 100,000)
would, cut off by the budget, never anneal.  Such a recipe first trains CALIBRATION_STEPS steps
with the same flags (OUT/runs/<recipe>-calibration), and the reproduction then trains the
iterations its budget holds (`--iterations N`, in the record's command), so its schedule ends.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

class Reproduction(NamedTuple):
    minutes: float  # training budget (--time-budget)
    shapes: List[Tuple[int, int, float]]  # (ways, shots, the paper's accuracy) evaluated on the test split
    extra: List[str]  # more `l2l-app train` arguments
    #: the recipe's schedule spans --iterations (Reptile anneals epsilon linearly to 0 over them): train the
    #: iterations the budget holds, measured by a calibration run (`fit_iterations`), so the schedule ends
    fit_iterations: bool = False


REPRODUCTIONS: Dict[str, Reproduction] = {
    "maml-omniglot-5w1s": Reproduction(6.0, [(5, 1, 98.7)], []),
    "protonet-omniglot-5w1s": Reproduction(2.0, [(5, 1, 98.8), (20, 1, 96.0)], []),
    "reptile-omniglot-5w1s": Reproduction(4.0, [(5, 1, 97.68)], [], fit_iterations=True),
    "metasgd-omniglot-5w1s": Reproduction(1.5, [(5, 1, 99.53)], []),
    "anil-omniglot-20w1s": Reproduction(1.5, [(20, 1, 96.2)], []),
}
COMMON = ["--val-every", "500", "--val-episodes", "200", "--checkpoint-every", "2000",
          "--seed", "0", "--overwrite"]
#: test episodes per evaluation (--episodes: fewer for a dry run)
EPISODES = 1000


def command(*args: str) -> List[str]:
    return [sys.executable, "-m", "l2l_app.cli", *args]


def train_args(recipe: str, minutes: float, run_dir: Path, more: Sequence[str] = ()) -> List[str]:
    extra = REPRODUCTIONS[recipe].extra
    # `more` last but --out: a --train-arg overrides COMMON (a dry run's --val-episodes)
    return ["train", "--recipe", recipe, *extra, "--time-budget", f"{minutes:g}", *COMMON, *more, "--out", str(run_dir)]


def evaluate(recipe: str, run_dir: Path, minutes: float, together: List[str], gpu: str,
             episodes: int = EPISODES, more: Sequence[str] = (), calibration: Optional[dict] = None) -> List[dict]:
    from l2l_app.rundir import eval_file_name, load_config
    from l2l_app.run_records import read_metrics
    shapes = REPRODUCTIONS[recipe].shapes
    config = load_config(run_dir)
    seed = config.eval.eval_seed
    train_rows, _ = read_metrics(run_dir / "metrics.jsonl", accuracy_scale=1.0)
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
            "iterations": config.optim.iterations, "iterations_fitted_to_budget": calibration,
            "command": " && ".join(["l2l-app " + " ".join(train_args(recipe, minutes, Path(f"runs/{recipe}"), more)),
                                    "l2l-app " + " ".join(args[:1] + [f"runs/{recipe}"] + args[2:])]),
        })
    return records


#: how the README's reproduction table names an algorithm and a dataset
DISPLAY_NAMES = {"protonet": "ProtoNet", "maml": "MAML", "fomaml": "FOMAML", "metasgd": "Meta-SGD",
                 "reptile": "Reptile", "anil": "ANIL", "omniglot": "Omniglot", "miniimagenet": "mini-ImageNet"}
#: the picked speed flags a record's command may carry, shown next to the recipe's name
SPEED_FLAGS = ("--compile", "--cudnn-benchmark", "--conv-impl")


def table_rows(records: Sequence[dict]) -> List[str]:
    """The README's reproduction-table rows (recipe, minutes, steps, ms/step, test accuracy,
    published, short by) of reproduction.json's records, one per record, in their order; a
    recipe's second shape is marked "(same run)", a run trained beside others "(\\*)"."""
    from l2l_app.recipes import load_recipe
    rows, seen = [], set()
    for r in records:
        recipe = load_recipe(r["recipe"])
        algo, dataset = recipe.settings["algo"], recipe.settings["dataset"]
        train = r["command"].split(" && ")[0].split()
        flags = [f for f in train if f.split("=")[0] in SPEED_FLAGS]
        name = f"{DISPLAY_NAMES[algo]} {DISPLAY_NAMES[dataset]} {r['shape']}"
        name += "".join([f" (`{' '.join(flags)}`)" if flags else "", " (\\*)" if r["trained_together_with"] else ""])
        published = str(r["paper"])
        if r["shape"] == f"{recipe.settings['ways']}w{recipe.settings['shots']}s" and recipe.reported_ci95:
            published += f" ± {recipe.reported_ci95:g}"
        short = f"{r['shortfall']:.2f}" if r["shortfall"] > 0 else "none"
        measured = f"{r['accuracy']:.2f} ± {r['ci95']:.2f}"
        if r["recipe"] in seen:
            rows.append(f"| {name} (same run) | | | | {measured} | {published} | {short} |")
            continue
        seen.add(r["recipe"])
        fitted = r.get("iterations_fitted_to_budget")
        of = (f"{fitted['iterations']:,} fitted to the budget" if fitted
              else f"{recipe.settings['iterations']:,}")
        rows.append(f"| {name} | {r['minutes']:.1f} | {r['steps']:,} (of {of}) | {r['ms_per_step']:.1f} | "
                    f"{measured} | {published} | {short} |")
    return rows


#: a calibration run's steps: one validation (every 500, COMMON's) and the steps after it
CALIBRATION_STEPS = 600
#: ... or this long, if sooner (a step slower than 50 ms is timed without a validation)
CALIBRATION_MINUTES = 0.5
#: the share of the budget a fitted run plans to use: the rest absorbs its final validation and save
#: and the GPU's step-to-step variance, so that the time budget does not end the schedule first
BUDGET_SHARE = 0.9


def fit_iterations(rows: Sequence[dict], budget_seconds: float, val_every: int, most: int) -> dict:
    """The iterations a run ends within its budget, from a calibration run's metrics.jsonl rows.

    A train row's `time` is the run's seconds after that step (before any validation), so a step's
    cost is the median gap between consecutive train rows, and a validation's is the gap across it
    less one step.  A run of N steps then takes  first + (N - 1) * step + (N // val_every) * validation
    seconds, planned at BUDGET_SHARE of the budget and capped at the recipe's own iterations (`most`).
    Returns {"iterations", "step_seconds", "validation_seconds", "first_step_seconds", "calibration_steps"}
    (validation_seconds None when the calibration ended before its first validation: counted as 0).
    """
    times = {r["step"]: r["time"] for r in rows if r["kind"] == "train"}
    validated = {r["step"] for r in rows if r["kind"] == "val"}
    steps = sorted(times)
    if len(steps) < 3:
        raise SystemExit(f"the calibration run made {len(steps)} steps: too few to time one (give it more minutes)")
    gaps = [times[b] - times[a] for a, b in zip(steps, steps[1:]) if b == a + 1 and a not in validated]
    step = statistics.median(gaps)
    across = [times[v + 1] - times[v] - step for v in sorted(validated) if v + 1 in times]
    validation = statistics.mean(across) if across else None
    per_step = step + (validation or 0.0) / val_every
    fitted = int((BUDGET_SHARE * budget_seconds - times[steps[0]]) // per_step) + 1
    return {"iterations": max(1, min(fitted, most)), "step_seconds": round(step, 6),
            "validation_seconds": None if validation is None else round(validation, 3),
            "first_step_seconds": round(times[steps[0]], 3), "calibration_steps": steps[-1]}


def calibrate(recipe: str, minutes: float, runs: Path, more: Sequence[str]) -> dict:
    """Time `recipe` as it will train (same flags, validation included) for CALIBRATION_STEPS steps
    (or CALIBRATION_MINUTES at most) in runs/<recipe>-calibration, and fit its iterations to `minutes`."""
    run_dir = runs / f"{recipe}-calibration"
    cmd = command(*train_args(recipe, min(CALIBRATION_MINUTES, minutes), run_dir,
                              [*more, "--iterations", str(CALIBRATION_STEPS)]))
    print("+", " ".join(cmd), flush=True)
    with open(runs / f"{recipe}-calibration.train.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    from l2l_app.recipes import load_recipe
    from l2l_app.rundir import load_config
    from l2l_app.run_records import read_metrics
    train_rows, val_rows = read_metrics(run_dir / "metrics.jsonl", accuracy_scale=1.0)
    fit = fit_iterations(train_rows + val_rows, 60 * minutes, load_config(run_dir).run.val_every,
                         load_recipe(recipe).settings["iterations"])
    print(f"{recipe}: {fit['step_seconds'] * 1000:.2f} ms/step, validation {fit['validation_seconds']} s: "
          f"{fit['iterations']} iterations fit {minutes:g} min", flush=True)
    return fit


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
    parser.add_argument("--table", type=Path, metavar="REPRODUCTION_JSON",
                        help="print the README table's rows of a reproduction.json")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the runs already in OUT/runs")
    parser.add_argument("--pick", type=Path, nargs="+", metavar="BENCH_JSON",
                        help="print the --train-arg flags of the fastest end-to-end captured configuration these "
                             "benches measured (compile only when 25%% faster; cuDNN autotuning when its bench won)")
    args = parser.parse_args()
    if args.table:
        if not args.table.is_file():
            parser.error(f"--table {args.table}: no such file; pass a reproduction.json (benchmarks/results/gpu-*/)")
        print("\n".join(table_rows(json.loads(args.table.read_text()))))
        return
    if args.pick:
        benches = [json.loads(p.read_text()) for p in args.pick if p.is_file()]
        print(" ".join(f"--train-arg={flag}" for flag in pick_train_args(benches)))  # e.g. --train-arg=--compile
        return
    if args.list or not args.recipes:
        for name, plan in REPRODUCTIONS.items():
            fitted = " (iterations fitted to it)" if plan.fit_iterations else ""
            print(f"{name}: {plan.minutes:g} min{fitted}, "
                  + ", ".join(f"{w}w{s}s (paper {p})" for w, s, p in plan.shapes))
        return
    unknown = [r for r in args.recipes if r not in REPRODUCTIONS]
    if unknown or args.out is None:
        parser.error(f"unknown recipe(s) {unknown}; --list shows them" if unknown else "--out DIR is needed")
    fitted_together = [r for r in args.recipes if REPRODUCTIONS[r].fit_iterations] if args.together else []
    if fitted_together:
        parser.error(f"{', '.join(fitted_together)} fits its iterations to its budget by timing a run alone: "
                         "train it without --together")
    from l2l_app.runtime import environment
    env = environment()
    gpu = env.get("cuda") or env.get("cpu")
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    minutes = {r: args.minutes if args.minutes is not None else REPRODUCTIONS[r].minutes for r in args.recipes}
    together = list(args.recipes) if args.together else []
    groups = [args.recipes] if args.together else [[r] for r in args.recipes]
    path = args.out / "reproduction.json"
    records = json.loads(path.read_text()) if path.is_file() else []
    fitted: Dict[str, dict] = {}  # recipe -> its calibration (fit_iterations)

    def more(recipe: str) -> List[str]:
        """The train arguments beyond the recipe's: --train-arg's, and the fitted iterations."""
        fit = fitted.get(recipe)
        return [*args.train_arg, *(["--iterations", str(fit["iterations"])] if fit else [])]

    for group in groups:
        procs = []
        for recipe in group if not args.eval_only else []:
            if REPRODUCTIONS[recipe].fit_iterations:
                fitted[recipe] = calibrate(recipe, minutes[recipe], runs, args.train_arg)
            cmd = command(*train_args(recipe, minutes[recipe], runs / recipe, more(recipe)))
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
            new = evaluate(recipe, runs / recipe, minutes[recipe], together, gpu, args.episodes, more(recipe),
                           fitted.get(recipe))
            records = [r for r in records if not (r["recipe"] == recipe and r["shape"] in {n["shape"] for n in new})]
            records.extend(new)
            path.write_text(json.dumps(records, indent=2) + "\n")
            for r in new:
                print(f"{recipe} {r['shape']}: {r['accuracy']:.2f} ± {r['ci95']:.2f} (paper {r['paper']}), "
                      f"{r['steps']} steps in {r['train_seconds']:.0f}s ({r['ms_per_step']} ms/step)", flush=True)


if __name__ == "__main__":
    main()
