#!/usr/bin/env bash
# `l2l-app bench` on a CPU for the workloads of the engine issue (Omniglot 5-way 1-shot,
# 15 queries, 32 tasks): MAML (1 step, second order), FOMAML, Reptile (5 Adam steps), ProtoNet,
# and ANIL and Meta-SGD (1 step, second order), then the three MAML-family algorithms compared
# on that workload in one process (benchmarks/compare_algorithms.py).
# Few repeats: a CPU meta-step takes seconds. Results: benchmarks/results/cpu/<workload>/.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/cpu}
common=(--device cpu --meta-batch 32 --warmup 1 --repeats 3 --overwrite)
$PY -m l2l_app.cli bench "${common[@]}" --algo maml --inner-steps 1 --impl loop,torchmeta,batched --out "$OUT/maml-omniglot-5w1s"
$PY -m l2l_app.cli bench "${common[@]}" --algo maml --first-order --inner-steps 1 --impl loop,torchmeta,batched --out "$OUT/fomaml-omniglot-5w1s"
$PY -m l2l_app.cli bench "${common[@]}" --algo reptile --inner-steps 5 --with-sampler --impl loop,batched --out "$OUT/reptile-omniglot-5w1s"
$PY -m l2l_app.cli bench "${common[@]}" --algo protonet --with-sampler --impl loop,batched --out "$OUT/protonet-omniglot-5w1s"
$PY -m l2l_app.cli bench "${common[@]}" --algo anil --inner-steps 1 --impl loop,batched --out "$OUT/anil-omniglot-5w1s"
$PY -m l2l_app.cli bench "${common[@]}" --algo metasgd --inner-steps 1 --impl loop,batched --out "$OUT/metasgd-omniglot-5w1s"
$PY benchmarks/compare_algorithms.py --device cpu --meta-batch 32 --warmup 1 --repeats 3 \
  --algos maml,anil,metasgd --baseline maml --out "$OUT/algorithms-omniglot-5w1s"
