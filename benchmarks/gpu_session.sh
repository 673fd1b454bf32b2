#!/usr/bin/env bash
# The one prepared GPU session: install learn2learn from the carried sdist, check engine parity
# (the captured meta-gradient and the captured whole training step too) on the GPU, profile the
# recipes' steps kernel by kernel (benchmarks/profile_step.py), time the
# recipes' training steps with `l2l-app bench` in every configuration training can pick (eager
# or compiled kernels in the graph; cuDNN autotuning off/on; native, NHWC or unfold convolutions), and
# reproduce the published Omniglot numbers with `benchmarks/reproduce.py`, each recipe training
# with the flags its bench measured fastest (`reproduce.py --pick`).
#
#   on the device machine, from the repo root, with .whl/ carried (learn2learn sdist, gym wheel):
#     STEPS=timing OUT=/path bash benchmarks/gpu_session.sh     # parity, benches, captured resume (~7 min)
#     STEPS=essential OUT=/path bash benchmarks/gpu_session.sh  # parity and the MAML and ProtoNet recipe
#                                                               #   benches only (ProtoNet's also autotuned
#                                                               #   over NHWC tensors; ~3.5 min)
#     STEPS=reproduce OUT=/path bash benchmarks/gpu_session.sh  # ProtoNet (2 min) then MAML (6 min or the
#                                                               #   recipe's 60,000 steps) + evals (<= 10 min)
#     STEPS=more OUT=/path bash benchmarks/gpu_session.sh       # Reptile (calibration, 4 min, eval), then
#                                                               #   Meta-SGD and ANIL together (1.5 min + evals):
#                                                               #   <= 9.5 min
#     STEPS=explore OUT=/path bash benchmarks/gpu_session.sh    # parity; both recipes' benches in every
#                                                               #   configuration training can pick (plain and
#                                                               #   compiled; cuDNN autotuning; unfold, with the
#                                                               #   loop for its parity column; ProtoNet NHWC);
#                                                               #   kernel profiles (~9 min: a call of its own)
#     STEPS=maml MAML_MINUTES=N OUT=/path bash ...              # MAML's reproduction alone, N minutes, with the
#                                                               #   flags explore's benches pick (none: --engine
#                                                               #   auto's tuning)
#   Since 2026-11-27 `--engine auto` trains MAML and ProtoNet with the configurations explore measured
#   fastest, so `reproduce` needs no benches first: a session's 15 minutes hold `reproduce` (ProtoNet's
#   20,000 steps end before its 2 minutes, MAML's 60,000 before its 6) and then part of `more`.
#     STEPS=all: timing, reproduce and more (over one call's 10 minutes: only where calls may be longer)
#   `essential` and `reproduce` fit one session back to back on one warm machine (the second call reads
#   the first one's benches from /tmp); `timing` adds the TF32 bench, Reptile's bench and the
#   captured-resume checks to explore's variants.
#   MAML_ARGS / PROTONET_ARGS (e.g. "--train-arg=--compile") replace the picked flags, for a call on a
#   fresh machine that no longer holds the timing step's benches.
#   dry run here (tiny, CPU):  DRY=1 STEPS=all OUT=/tmp/gpu_dry bash benchmarks/gpu_session.sh
#
# Everything lands in $OUT/gpu_results.tar.gz (re-packed after every step, so a timeout loses
# nothing measured); unpack it into benchmarks/results/gpu-<gpu>/.  Run directories are packed
# without their checkpoints.  `python benchmarks/reproduce.py --table benchmarks/results/gpu-<gpu>/reproduction.json`
# then prints the README table's rows (tests/test_gpu_options.py holds the README to them).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
RES=/tmp/gpu_results
STEPS=${STEPS:-all}
case "$STEPS" in all|timing|essential|reproduce|more|explore|maml) ;;
  *) echo "error: STEPS=$STEPS: choose essential, timing, reproduce, more, explore, maml or all" >&2; exit 2 ;; esac
if [ "$STEPS" = maml ] && [ -z "${MAML_MINUTES:-}" ]; then
  echo "error: STEPS=maml needs MAML_MINUTES (the training budget in minutes, e.g. MAML_MINUTES=3)" >&2; exit 2
fi
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
  DEVICE=cuda; PY=python3; TIMES=(--warmup 5 --repeats 20); SMALL=(); EPISODES=1000; SHORT=()
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RES/nvidia-smi.txt"
else
  DEVICE=cpu; PY=.venv/bin/python; TIMES=(--warmup 3 --repeats 1); SMALL=(--meta-batch 2 --hidden 8)
  EPISODES=20; SHORT=(--minutes 0.1 --train-arg=--val-episodes=20)  # 200 validation episodes take minutes on a CPU
fi
$PY -c "import torch, learn2learn; print('torch', torch.__version__, 'learn2learn', learn2learn.__version__)" 2>&1 | tail -1

pack() {
  (cd "$RES" && tar czf "$OUT/gpu_results.tar.gz" --exclude='*.pt' --exclude='checkpoints' .)
}
bench() {  # bench NAME TIMEOUT ARGS...
  local name=$1 limit=$2; shift 2
  stamp "bench $name"
  timeout "$limit" $PY -m l2l_app.cli bench --device "$DEVICE" "${TIMES[@]}" --out "$RES/$name" --overwrite \
    "$@" "${SMALL[@]}" \
    2>&1 | grep -v "^\s*$" | tail -16 || stamp "bench $name failed or timed out"
  pack
}
reproduce() {  # reproduce TIMEOUT ARGS...
  local limit=$1; shift
  stamp "reproduce $*"
  timeout "$limit" $PY benchmarks/reproduce.py --out "$RES" --episodes $EPISODES "${SHORT[@]}" "$@" 2>&1 \
    | grep -v "^+ " | tail -12 || stamp "reproduce failed or timed out"
  pack
}

# the flags of the fastest configuration the benches of a recipe measured (empty: the defaults)
picked() {  # picked RECIPE
  $PY benchmarks/reproduce.py --pick "$RES"/bench-"$1"*/bench.json 2>/dev/null
}
parity() {  # parity TIMEOUT
  stamp "engine parity on $DEVICE (loop vs batched; captured meta-gradient and whole step vs eager)"
  timeout "$1" $PY benchmarks/engine_parity.py --device "$DEVICE" --out "$RES/engine_parity.json" 2>&1 | tail -45 \
    || stamp "parity failed or timed out"
  pack
}
profile() {  # profile TIMEOUT ARGS... (recipes, --compiled)
  local limit=$1; shift
  stamp "where the steps' device time goes (kernels by family)"
  timeout "$limit" $PY benchmarks/profile_step.py --device "$DEVICE" --out "$RES/profile" "$@" \
    ${DRY:+--steps 1 --warmup 1} 2>&1 | grep -v "^\(USDT\|ERROR\|STAGE\)" | tail -12 || stamp "profile failed or timed out"
  pack
}
CAPTURED=batched-captured-step,batched-compiled-captured-step
if [ "$STEPS" = all ] || [ "$STEPS" = timing ] || [ "$STEPS" = essential ]; then
  parity 150
  # the recipes' own training workloads (backbone, episode shape and meta-batch as trained), end to end
  # as training runs them on a GPU (the whole step one CUDA graph), in each configuration --pick weighs
  bench bench-maml-omniglot-5w1s 150 --recipe maml-omniglot-5w1s --with-sampler \
    --impl loop,batched-captured,$CAPTURED
  bench bench-protonet-omniglot-5w1s 80 --recipe protonet-omniglot-5w1s --with-sampler \
    --impl loop,batched-captured,$CAPTURED
  # ProtoNet's step is fp32 convolution time (2.9 ms of it on the H200): cuDNN autotuning over NHWC
  # tensors is its likeliest saving, measured here (~25 s) so that `reproduce` can pick it
  if [ "$STEPS" = essential ]; then
    bench bench-protonet-omniglot-5w1s-cudnn-benchmark-channels-last 60 --recipe protonet-omniglot-5w1s \
      --with-sampler --impl $CAPTURED --cudnn-benchmark --conv-impl channels-last
  fi
fi
if [ "$STEPS" = explore ]; then
  parity 90
  # every configuration a training run can pick, on each recipe's own workload, end to end as training runs
  # it (the whole step one CUDA graph); the loop in the first bench of each gives the parity column
  bench bench-maml-omniglot-5w1s 120 --recipe maml-omniglot-5w1s --with-sampler --impl loop,batched-captured,$CAPTURED
  bench bench-maml-omniglot-5w1s-cudnn-benchmark 75 --recipe maml-omniglot-5w1s --with-sampler --impl $CAPTURED \
    --cudnn-benchmark
  bench bench-maml-omniglot-5w1s-unfold 120 --recipe maml-omniglot-5w1s --with-sampler --impl loop,$CAPTURED \
    --conv-impl unfold
  bench bench-protonet-omniglot-5w1s 60 --recipe protonet-omniglot-5w1s --with-sampler --impl loop,batched-captured,$CAPTURED
  bench bench-protonet-omniglot-5w1s-cudnn-benchmark 45 --recipe protonet-omniglot-5w1s --with-sampler --impl $CAPTURED \
    --cudnn-benchmark
  bench bench-protonet-omniglot-5w1s-cudnn-benchmark-channels-last 45 --recipe protonet-omniglot-5w1s --with-sampler \
    --impl $CAPTURED --cudnn-benchmark --conv-impl channels-last
  bench bench-protonet-omniglot-5w1s-unfold 60 --recipe protonet-omniglot-5w1s --with-sampler --impl $CAPTURED \
    --conv-impl unfold
  profile 75 --compiled maml-omniglot-5w1s protonet-omniglot-5w1s
fi
if [ "$STEPS" = maml ]; then
  ARGS=${MAML_ARGS-$(picked maml-omniglot-5w1s)}
  stamp "MAML reproduction, $MAML_MINUTES min, with: ${ARGS:-the defaults}"
  reproduce "$(awk "BEGIN { print int($MAML_MINUTES * 60) + 90 }")" maml-omniglot-5w1s --minutes "$MAML_MINUTES" $ARGS
fi
if [ "$STEPS" = all ] || [ "$STEPS" = timing ]; then
  bench bench-maml-omniglot-5w1s-cudnn-benchmark 90 --recipe maml-omniglot-5w1s --with-sampler \
    --impl $CAPTURED --cudnn-benchmark
  bench bench-maml-omniglot-5w1s-unfold 90 --recipe maml-omniglot-5w1s --with-sampler \
    --impl $CAPTURED --conv-impl unfold
  bench bench-protonet-omniglot-5w1s-cudnn-benchmark 60 --recipe protonet-omniglot-5w1s --with-sampler \
    --impl $CAPTURED --cudnn-benchmark
  bench bench-protonet-omniglot-5w1s-channels-last 60 --recipe protonet-omniglot-5w1s --with-sampler \
    --impl $CAPTURED --conv-impl channels-last
  bench bench-protonet-omniglot-5w1s-unfold 60 --recipe protonet-omniglot-5w1s --with-sampler \
    --impl $CAPTURED --conv-impl unfold
  # for the record, never picked (--pick skips TF32 benches): what TF32 convolutions would give ProtoNet
  bench bench-protonet-omniglot-5w1s-tf32 60 --recipe protonet-omniglot-5w1s --with-sampler \
    --impl $CAPTURED --tf32
  # Reptile: the meta-gradient graph against the whole step (its schedule copied in, epsilon a tensor)
  bench bench-reptile-omniglot-5w1s 60 --recipe reptile-omniglot-5w1s --with-sampler \
    --impl loop,batched-captured,batched-captured-step
  profile 90 maml-omniglot-5w1s protonet-omniglot-5w1s reptile-omniglot-5w1s
  stamp "captured training resumes"
  timeout 60 $PY benchmarks/captured_resume.py --device "$DEVICE" --out "$RES/captured_resume.json" 2>&1 | tail -5 \
    || stamp "captured resume failed or timed out"
  timeout 60 $PY benchmarks/captured_resume.py --device "$DEVICE" --recipe reptile-omniglot-5w1s \
    --out "$RES/captured_resume-reptile.json" 2>&1 | tail -5 || stamp "Reptile's captured resume failed or timed out"
  pack
fi
if [ "$STEPS" = all ] || [ "$STEPS" = reproduce ]; then
  ARGS=${PROTONET_ARGS-$(picked protonet-omniglot-5w1s)}
  stamp "ProtoNet reproduction with: ${ARGS:-the defaults}"
  reproduce 170 protonet-omniglot-5w1s $ARGS
  ARGS=${MAML_ARGS-$(picked maml-omniglot-5w1s)}
  stamp "MAML reproduction with: ${ARGS:-the defaults}"
  reproduce 405 maml-omniglot-5w1s $ARGS
fi
if [ "$STEPS" = all ] || [ "$STEPS" = more ]; then
  reproduce 360 reptile-omniglot-5w1s  # a calibration run (<= 0.5 min) fits its iterations to 4 min
  reproduce 200 --together metasgd-omniglot-5w1s anil-omniglot-20w1s
fi
stamp "done ($STEPS)"
