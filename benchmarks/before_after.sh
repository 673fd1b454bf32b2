#!/usr/bin/env bash
# The same `l2l-app bench` workloads on an earlier commit and on the working tree, back to back on
# one machine: a refactoring must leave the meta-step times of both engines unchanged within noise.
#
#   REV=34c532b bash benchmarks/before_after.sh    # -> benchmarks/results/cpu/before-after-<REV>/
set -eu
cd "$(dirname "$0")/.."
REV=${REV:?set REV to the commit to compare with}
PY=${PY:-$PWD/.venv/bin/python}
OUT=${OUT:-benchmarks/results/cpu/before-after-$REV}
OLD=$(mktemp -d)
trap 'git worktree remove --force "$OLD" >/dev/null 2>&1 || true' EXIT
git worktree add -q --detach "$OLD" "$REV"
common=(--device cpu --meta-batch 8 --warmup 1 --repeats 5 --impl loop,batched)
for workload in "maml --inner-steps 1" "protonet"; do
  name=${workload%% *}
  (cd "$OLD" && PYTHONPATH="$OLD" "$PY" -m l2l_app.cli bench "${common[@]}" --algo $workload \
    --out "$OLDPWD/$OUT/$name-before" | tail -3)
  PYTHONPATH="$PWD" "$PY" -m l2l_app.cli bench "${common[@]}" --algo $workload --out "$OUT/$name-after" --overwrite | tail -3
done
