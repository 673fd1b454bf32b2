#!/usr/bin/env bash
# The one prepared GPU session: install learn2learn from the carried sdist, check engine parity
# (and the captured CUDA-graph step) on the GPU, time the recipes' meta-steps with `l2l-app bench`,
# and reproduce the published Omniglot numbers with `benchmarks/reproduce.py`.
#
#   on the device machine, from the repo root, with .whl/ carried (learn2learn sdist, gym wheel):
#     OUT=/path bash benchmarks/gpu_session.sh                 # STEPS=all: everything (~14 min)
#     STEPS=timing OUT=/path bash benchmarks/gpu_session.sh    # parity, benches, captured resume,
#                                                              #   ProtoNet + MAML reproduction (~9 min)
#     STEPS=more OUT=/path bash benchmarks/gpu_session.sh      # Reptile, Meta-SGD, ANIL trained together (~3 min)
#   dry run here (tiny, CPU):  DRY=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_session.sh
#
# Everything lands in $OUT/gpu_results.tar.gz (re-packed after every step, so a timeout loses
# nothing measured); unpack it into benchmarks/results/gpu-<gpu>/.  Run directories are packed
# without their checkpoints.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
RES=/tmp/gpu_results
STEPS=${STEPS:-all}
mkdir -p "$OUT" "$RES"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

if [ -z "${DRY:-}" ]; then
  if [ ! -f /tmp/l2l/built ]; then  # a warm machine keeps /tmp between calls
    stamp "installing learn2learn 0.2.0 from the sdist"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gym-*.whl
    mkdir -p /tmp/l2l && tar xzf .whl/learn2learn-*.tar.gz -C /tmp/l2l
    (cd /tmp/l2l/learn2learn-0.2.0 && python3 setup.py build_ext --inplace >/tmp/l2l/build.log 2>&1) \
      || { tail -20 /tmp/l2l/build.log; exit 1; }
    touch /tmp/l2l/built
  fi
  export PYTHONPATH=/tmp/site:/tmp/l2l/learn2learn-0.2.0:$PWD
  DEVICE=cuda; PY=python3; TIMES=(--warmup 5 --repeats 20); SMALL=(); EPISODES=1000; MINUTES=()
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RES/nvidia-smi.txt"
else
  DEVICE=cpu; PY=.venv/bin/python; TIMES=(--warmup 3 --repeats 1); SMALL=(--meta-batch 2 --hidden 8)
  EPISODES=20; MINUTES=(--minutes 0.1)
fi
$PY -c "import torch, learn2learn; print('torch', torch.__version__, 'learn2learn', learn2learn.__version__)" 2>&1 | tail -1

pack() {
  (cd "$RES" && tar czf "$OUT/gpu_results.tar.gz" --exclude='*.pt' --exclude='checkpoints' .)
}
bench() {  # bench NAME TIMEOUT ARGS...
  local name=$1 limit=$2; shift 2
  stamp "bench $name"
  timeout "$limit" $PY -m l2l_app.cli bench --device "$DEVICE" "${TIMES[@]}" --out "$RES/$name" "$@" "${SMALL[@]}" \
    2>&1 | grep -v "^\s*$" | tail -16 || stamp "bench $name failed or timed out"
  pack
}
reproduce() {  # reproduce TIMEOUT ARGS...
  local limit=$1; shift
  stamp "reproduce $*"
  timeout "$limit" $PY benchmarks/reproduce.py --out "$RES" --episodes $EPISODES "${MINUTES[@]}" "$@" 2>&1 \
    | grep -v "^+ " | tail -12 || stamp "reproduce failed or timed out"
  pack
}

if [ "$STEPS" = all ] || [ "$STEPS" = timing ]; then
  stamp "engine parity on $DEVICE (loop vs batched; captured vs eager)"
  timeout 120 $PY benchmarks/engine_parity.py --device "$DEVICE" --out "$RES/engine_parity.json" 2>&1 | tail -40 \
    || stamp "parity failed or timed out"
  pack
  # the recipes' own training workloads: backbone, episode shape and meta-batch as trained
  bench maml-omniglot-5w1s 150 --recipe maml-omniglot-5w1s --with-sampler \
    --impl loop,batched,batched-captured,batched-compiled-captured
  bench protonet-omniglot-5w1s 90 --recipe protonet-omniglot-5w1s --with-sampler \
    --impl loop,batched,batched-captured,batched-compiled-captured
  stamp "captured training resumes bit for bit"
  timeout 90 $PY benchmarks/captured_resume.py --device "$DEVICE" --out "$RES/captured_resume.json" 2>&1 | tail -5 \
    || stamp "captured resume failed or timed out"
  pack
  # each recipe trains with --compile too where its bench measured the compiled capture 25% faster end to end
  COMPILE=$($PY benchmarks/reproduce.py --pick-compile "$RES/protonet-omniglot-5w1s/bench.json" 2>/dev/null)
  reproduce 150 protonet-omniglot-5w1s $COMPILE
  COMPILE=$($PY benchmarks/reproduce.py --pick-compile "$RES/maml-omniglot-5w1s/bench.json" 2>/dev/null)
  stamp "MAML reproduction: ${COMPILE:-eager kernels in the graph}"
  reproduce 220 maml-omniglot-5w1s $COMPILE
fi
if [ "$STEPS" = all ] || [ "$STEPS" = more ]; then
  reproduce 260 --together reptile-omniglot-5w1s metasgd-omniglot-5w1s anil-omniglot-20w1s
fi
stamp "done ($STEPS)"
