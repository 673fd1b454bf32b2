#!/usr/bin/env bash
# Time one MAML meta-training step of every implementation (learn2learn loop, Torchmeta-style
# re-implementation, torch.func batched, batched + torch.compile) on Omniglot 5-way 1-shot,
# plus how cost and memory grow with the meta-batch and the inner steps.
# Results land in benchmarks/results/bench-<host>-<date>/ (bench.json, bench.md, sweep PNGs),
# stamped with machine, CPU/GPU name, torch/learn2learn versions and TF32 state.
#
#   benchmarks/bench_engines.sh                 # device auto (GPU if present)
#   DEVICE=cpu IMPLS=loop,torchmeta,batched benchmarks/bench_engines.sh
#   SWEEPS=0 benchmarks/bench_engines.sh        # headline numbers only
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-auto}
IMPLS=${IMPLS:-loop,torchmeta,batched,batched-compiled}
OUT=${OUT:-benchmarks/results/bench-$(hostname -s)-$(date +%Y%m%d-%H%M)}
args=(--algo maml --dataset omniglot --ways 5 --shots 1 --queries 15 --meta-batch 32 --inner-steps 1
      --impl "$IMPLS" --device "$DEVICE" --with-sampler --out "$OUT" --overwrite)
if [[ "${SWEEPS:-1}" != 0 ]]; then
  args+=(--sweep meta-batch=1,4,16,32,64 --sweep inner-steps=1,2,5,10)
fi
"$PY" -m l2l_app.cli bench "${args[@]}" "$@"
echo "results: $OUT"
