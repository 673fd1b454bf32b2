#!/usr/bin/env bash
# Loop vs batched engine on a CPU, for the training step of every recipe that meta-batches
# (meta-batch >= 2): `l2l-app bench --recipe R --impl loop,batched --with-sampler`, each recipe one
# run (so each ratio is measured within one run), compute only and end to end (l2l sampler for
# the loop, tensor sampler for the batched engine, as training pairs them).  What `--engine auto`
# picks on a CPU (`AlgorithmSpec.cpu_batched_up_to_images`) follows these measurements;
# tests/test_config.py holds it to every one of them.  mini-ImageNet on synthetic images of the
# real size (the real images stay outside the repo).
#   THREADS=2 bash benchmarks/cpu_recipe_engines.sh      # results/cpu/recipe-engines-<N>threads/<recipe>/ (1thread)
#   RECIPES="maml-omniglot-5w1s ..." THREADS=1 bash ...   # some recipes; TABLE_ONLY=1: the README table only
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
OUT=${OUT:-benchmarks/results/cpu/recipe-engines-${THREADS}thread$([ "$THREADS" = 1 ] || echo s)}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
RECIPES=${RECIPES:-$($PY -c "
from l2l_app.bench.harness import recipe_workload
from l2l_app.recipes import recipe_names
names = [n for n in recipe_names() if recipe_workload(n)['meta_batch'] >= 2]
print(' '.join(sorted(names, key=lambda n: ('miniimagenet' in n, n))))  # Omniglot's first: the quick ones")}
mkdir -p "$OUT"
[ -n "${TABLE_ONLY:-}" ] && RECIPES=  # only the README table, from the benches already in $OUT
for recipe in $RECIPES; do
  extra=()
  case "$recipe" in *miniimagenet*) extra=(--synthetic) ;; esac
  echo "[$(date +%T)] $recipe"
  $PY -m l2l_app.cli bench --recipe "$recipe" --device cpu --impl loop,batched --with-sampler \
    --warmup 1 --repeats 3 --out "$OUT/$recipe" --overwrite "${extra[@]}" >>"$OUT/bench.log" 2>&1 \
    && grep "^| \(loop\|batched\) " "$OUT/$recipe/bench.md" || { echo "  $recipe: bench failed"; tail -3 "$OUT/bench.log"; }
done

# one table of every bench in $OUT, with what --engine auto picks for its workload
$PY - "$OUT" <<'PYEOF' > "$OUT/README.md"
import json, sys
from pathlib import Path
import torch
from l2l_app.config import ExperimentConfig, with_overrides
from l2l_app.experiment import auto_engine
out = Path(sys.argv[1])
print(f"# Loop vs batched engine on a CPU, per recipe ({out.name})\n")
print("`benchmarks/cpu_recipe_engines.sh`: `l2l-app bench --recipe R --impl loop,batched --with-sampler`, end to end "
      "(sampling included), median ms per meta-step; each row one run. `auto`: what `--engine auto` picks for the "
      "workload now.\n")
print("| bench | images/task | meta-batch | inner steps | loop ms | batched ms | batched vs loop | auto |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for path in sorted(out.glob("*/bench.json")):
    bench = json.loads(path.read_text())
    st = bench["settings"]
    rows = {r["impl"]: r for r in bench["results"] if r["mode"] == "end to end" and r["status"] == "ok"}
    if not {"loop", "batched"} <= set(rows):
        continue
    loop, batched = rows["loop"]["median_ms"], rows["batched"]["median_ms"]
    config = with_overrides(ExperimentConfig(), {"algo": st["algo"], "ways": st["ways"], "train_ways": st["ways"],
                                                 "shots": st["shots"], "queries": st["queries"]})
    pick = auto_engine(config, torch.device("cpu"), st["meta_batch"])[0]
    print(f"| `{path.parent.name}` | {st['ways'] * (st['shots'] + st['queries'])} | {st['meta_batch']} | "
          f"{st.get('inner_steps') or '-'} | {loop:.0f} | {batched:.0f} | {loop / batched:.2f}x | {pick} |")
PYEOF
echo "table: $OUT/README.md"
