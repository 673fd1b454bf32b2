#!/usr/bin/env bash
# The one prepared GPU session: install learn2learn from the carried sdist, check engine
# parity on the GPU, and time every implementation with `l2l-app bench`.
#
#   on the device machine, from the repo root, with .whl/ carried (learn2learn sdist, gym wheel):
#     OUT=/path bash benchmarks/gpu_session.sh
#   dry run here (tiny, CPU):  DRY=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_session.sh
#   STEPS=cudagraphs: only the MAML step under torch.compile(mode="reduce-overhead")
#   STEPS=core: input and engine parity, the six Omniglot 5w1s benches and the algorithm comparison
#               (about 6 minutes: what fits a short device budget)
#
# Everything lands in $OUT/gpu_results.tar.gz (+ gpu_session.log); unpack it into benchmarks/results/.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
RES=/tmp/gpu_results
mkdir -p "$OUT"
rm -rf "$RES" && mkdir -p "$RES"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

if [ -z "${DRY:-}" ]; then
  stamp "installing learn2learn 0.2.0 from the sdist"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gym-*.whl
  mkdir -p /tmp/l2l && tar xzf .whl/learn2learn-*.tar.gz -C /tmp/l2l
  (cd /tmp/l2l/learn2learn-0.2.0 && python3 setup.py build_ext --inplace >/tmp/l2l/build.log 2>&1) \
    || { tail -20 /tmp/l2l/build.log; exit 1; }
  export PYTHONPATH=/tmp/site:/tmp/l2l/learn2learn-0.2.0:$PWD
  DEVICE=cuda; REPEATS=(--warmup 3 --repeats 15); PY=python3; HIDDEN=(); MB=32; SWEEP=1,4,16,32,64
  TIMES=(--warmup 3 --repeats 15)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RES/nvidia-smi.txt"
else
  DEVICE=cpu; REPEATS=(--warmup 0 --repeats 1 --synthetic); PY=.venv/bin/python; HIDDEN=(--hidden 8); MB=2; SWEEP=1,2
  TIMES=(--warmup 0 --repeats 1)
fi
$PY -c "import torch, learn2learn; print('torch', torch.__version__, 'learn2learn', learn2learn.__version__)" 2>&1 | tail -1

bench() {  # bench NAME TIMEOUT ARGS...
  local name=$1 limit=$2; shift 2
  stamp "bench $name"
  timeout "$limit" $PY -m l2l_app.cli bench --device "$DEVICE" "${REPEATS[@]}" "${HIDDEN[@]}" \
    --out "$RES/$name" "$@" 2>&1 | grep -v "^\s*$" | tail -25 || stamp "bench $name failed or timed out"
  pack
}
pack() {  # re-packed after every step, so a timeout later loses nothing
  tar czf "$OUT/gpu_results.tar.gz" -C "$RES" .
}

if [ "${STEPS:-all}" = cudagraphs ]; then  # second session: CUDA graphs for the batched MAML step
  bench maml-omniglot-5w1s-cudagraphs 170 --algo maml --meta-batch $MB --inner-steps 1 --with-sampler \
    --impl loop,batched-compiled,batched-cudagraphs
  stamp "done"; exit 0
fi

stamp "model inputs on $DEVICE vs the CPU (pixel tables, normalisation, tensor sampler)"
timeout 60 $PY benchmarks/input_parity.py --device "$DEVICE" --out "$RES/input_parity.json" \
  || stamp "input parity failed or timed out"
pack

stamp "engine parity on $DEVICE"
timeout 60 $PY benchmarks/engine_parity.py --device "$DEVICE" --out "$RES/engine_parity.json" \
  || stamp "parity failed or timed out"
pack

bench maml-omniglot-5w1s 200 --algo maml --meta-batch $MB --inner-steps 1 --with-sampler \
  --impl loop,torchmeta,batched,batched-compiled
bench fomaml-omniglot-5w1s 60 --algo maml --first-order --meta-batch $MB --inner-steps 1 \
  --impl loop,torchmeta,batched
bench reptile-omniglot-5w1s 70 --algo reptile --meta-batch $MB --inner-steps 5 --with-sampler \
  --impl loop,batched
bench protonet-omniglot-5w1s 40 --algo protonet --meta-batch $MB --with-sampler --impl loop,batched
bench anil-omniglot-5w1s 40 --algo anil --meta-batch $MB --inner-steps 1 --impl loop,batched
bench metasgd-omniglot-5w1s 60 --algo metasgd --meta-batch $MB --inner-steps 1 --impl loop,batched
stamp "MAML, ANIL and Meta-SGD on one workload, in one process"
timeout 120 $PY benchmarks/compare_algorithms.py --device "$DEVICE" --meta-batch $MB "${TIMES[@]}" \
  "${HIDDEN[@]}" --out "$RES/algorithms-omniglot-5w1s" 2>&1 | tail -12 || stamp "compare failed or timed out"
pack
if [ "${STEPS:-all}" = core ]; then stamp "done (core)"; exit 0; fi
bench maml-sweep-meta-batch 90 --algo maml --inner-steps 1 --impl loop,batched --sweep meta-batch=$SWEEP
bench maml-miniimagenet-5w1s 80 --algo maml --dataset miniimagenet --synthetic --hidden 32 \
  --meta-batch $MB --inner-steps 5 --impl loop,batched

stamp "done"
