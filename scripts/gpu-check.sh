#!/usr/bin/env bash
# The GPU check: run the CUDA binary's op checks, train-step benchmarks and the quickstart sweep
# on one NVIDIA GPU, sample the GPU with nvidia-smi meanwhile, and print one table.
#
#   scripts/gpu-check.sh [BIN]     BIN: the CUDA build (default target/cuda/release/ranksweep,
#                                  from scripts/build-cuda.sh), run through scripts/cuda-run.sh
#
# For a machine with an NVIDIA GPU, no Rust and no network; under 8 minutes (GPU_CHECK_BUDGET_S,
# default 450 s, shared by the steps). Every step has a time limit; a failed step is reported in
# the table and the script goes on. Where `python3 -c "import torch"` works it also runs the
# PyTorch peer (shared/bench/torch_unet.py, or TORCH_UNET=path) at f32 and with --amp bf16 and
# prints the ratio ranksweep / PyTorch (< 1: ranksweep is faster).
# Output: the table on stdout; every step's log under GPU_CHECK_DIR (default a temp folder).
# Exit status: 0 when every step passed, 1 otherwise, 2 on bad arguments.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
BIN=${1:-$root/target/cuda/release/ranksweep}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
OUT=${GPU_CHECK_DIR:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$OUT"
T0=$SECONDS

if [[ ! -x $BIN ]]; then
    echo "gpu-check: $BIN is not an executable; build it with scripts/build-cuda.sh cudnn" >&2
    exit 2
fi
if ! command -v nvidia-smi >/dev/null; then
    echo "gpu-check: nvidia-smi not found: this script is for a machine with an NVIDIA GPU" >&2
    exit 2
fi
RUNNER=()
if [[ -f $here/cuda-run.sh ]]; then
    RUNNER=(bash "$here/cuda-run.sh")
else
    echo "gpu-check: scripts/cuda-run.sh missing; running $BIN directly" >&2
fi
RS=("${RUNNER[@]}" "$BIN") # `timeout` runs programs, not shell functions

ROWS=()   # "step|status|seconds|figure|gpu util|peak GPU MiB"
FAILED=0

# Seconds a step may take: its own limit, but never past the budget (10 s kept for the table).
limit() {
    local left=$((BUDGET_S - (SECONDS - T0) - 10))
    ((left < 5)) && left=5
    ((left < $1)) && echo "$left" || echo "$1"
}

SAMPLER_PID=
start_sampler() { # file
    nvidia-smi -i 0 --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits \
        -lms 250 >"$1" 2>/dev/null &
    SAMPLER_PID=$!
}
stop_sampler() {
    if [[ -n $SAMPLER_PID ]]; then
        kill "$SAMPLER_PID" 2>/dev/null
        wait "$SAMPLER_PID" 2>/dev/null
        SAMPLER_PID=
    fi
}
trap stop_sampler EXIT

# Mean utilization (%) and peak memory (MiB) of a sampler file: "util|mem".
gpu_stats() {
    awk -F', *' 'NF >= 2 && $1 ~ /^[0-9]+$/ { n++; u += $1; if ($2 > m) m = $2 }
        END { if (n) printf "%.0f%%|%d", u / n, m; else printf "-|-" }' "$1"
}

# A number field of a one-line JSON object: json_field FILE KEY.
json_field() {
    grep -oE "\"$2\":[-0-9.eE+]+" "$1" | head -n 1 | cut -d: -f2
}

# step NAME LIMIT_S CMD...: runs CMD with a time limit and the sampler, logs to $OUT/NAME.log.
# Sets STEP_OK (0/1), STEP_S and STEP_GPU ("util|mem").
step() {
    local name=$1 lim
    lim=$(limit "$2")
    shift 2
    local log=$OUT/$name.log smi=$OUT/$name.smi t=$SECONDS rc
    echo "gpu-check: $name (limit ${lim}s)" >&2
    start_sampler "$smi"
    timeout --kill-after=10 "$lim" "$@" >"$log" 2>&1
    rc=$?
    stop_sampler
    STEP_S=$((SECONDS - t))
    STEP_GPU=$(gpu_stats "$smi")
    if ((rc == 0)); then
        STEP_OK=1
    else
        STEP_OK=0
        FAILED=1
        ((rc == 124 || rc == 137)) && echo "gpu-check: $name ran past ${lim}s" >&2
        echo "gpu-check: $name failed (exit $rc); last lines of $log:" >&2
        tail -n 5 "$log" >&2
    fi
}
status_of() { ((STEP_OK)) && echo ok || echo FAILED; }

# 1. The CUDA op checks.
step selftest 120 "${RS[@]}" selftest --device cuda:0
ROWS+=("selftest --device cuda:0|$(status_of)|$STEP_S|-|${STEP_GPU%%|*}|${STEP_GPU##*|}")

# 2. Train steps: the README's config (features 16..128, batch 8, 128²), then wider Unets at 256².
declare -A OURS=()
bench() { # name args...
    local name=$1
    shift
    step "$name" 90 "${RS[@]}" bench train-step --device cuda:0 --steps 10 --json "$@"
    local med peak
    med=$(json_field "$OUT/$name.log" median_step_s)
    peak=$(json_field "$OUT/$name.log" peak_gpu_mb)
    [[ -n $med ]] && OURS[$name]=$med
    ROWS+=("$name|$(status_of)|$STEP_S|${med:--} s/step|${STEP_GPU%%|*}|${peak:-${STEP_GPU##*|}}")
}
ADAPT=(--kind conv-lora --module decoder --rank 16)
bench pretrain-128 --pretrain
bench conv-lora-r16-128 "${ADAPT[@]}"
for f in 32,64,128,256 32,64,128,256,512; do
    bench "pretrain-f${f##*,}-256" --pretrain --features "$f" --size 256
    bench "conv-lora-r16-f${f##*,}-256" "${ADAPT[@]}" --features "$f" --size 256
done

# 3. The quickstart sweep on one GPU, 8 jobs at once, in a scratch copy (data, results, db).
Q=$OUT/quickstart
mkdir -p "$Q/sweeps"
cp "$root/sweeps/quickstart.yaml" "$Q/sweeps/"
step quickstart 300 "${RS[@]}" run "$Q/sweeps/quickstart.yaml" --devices cuda:0 --slots-per-device 8 \
    --results "$Q/results" --db "$Q/ranksweep.db"
jobs=$(grep -oE '[0-9]+ ran \(' "$OUT/quickstart.log" | grep -oE '^[0-9]+' | head -n 1)
per_hour=-
if [[ -n $jobs ]] && ((STEP_S > 0)); then
    per_hour=$((jobs * 3600 / STEP_S))
fi
ROWS+=("quickstart --devices cuda:0 --slots-per-device 8|$(status_of)|$STEP_S|${jobs:-?} jobs, $per_hour jobs/h|${STEP_GPU%%|*}|${STEP_GPU##*|}")
"${RS[@]}" status quickstart --results "$Q/results" --db "$Q/ranksweep.db" 2>/dev/null | grep '^ran on' >"$OUT/ran_on.txt"

# 4. The PyTorch peer, where torch is installed.
TORCH_UNET=${TORCH_UNET:-}
for c in "$root/shared/bench/torch_unet.py" "$root/../shared/bench/torch_unet.py" /work/shared/bench/torch_unet.py; do
    [[ -z $TORCH_UNET && -f $c ]] && TORCH_UNET=$c
done
RATIOS=()
if [[ -n $TORCH_UNET ]] && timeout 60 python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    torch_bench() { # name ours-name args...
        local name=$1 ours=$2
        shift 2
        step "$name" 60 python3 "$TORCH_UNET" --device cuda --steps 10 "$@"
        local med
        med=$(json_field "$OUT/$name.log" median_step_s)
        ROWS+=("$name|$(status_of)|$STEP_S|${med:--} s/step|${STEP_GPU%%|*}|${STEP_GPU##*|}")
        if [[ -n $med && -n ${OURS[$ours]:-} ]]; then
            RATIOS+=("$ours / $name: $(awk -v a="${OURS[$ours]}" -v b="$med" 'BEGIN { printf "%.2f", a / b }')")
        fi
    }
    for amp in f32 bf16; do
        flag=()
        [[ $amp == bf16 ]] && flag=(--amp bf16)
        torch_bench "torch-pretrain-128-$amp" pretrain-128 --kind pretrain "${flag[@]}"
        torch_bench "torch-conv-lora-r16-128-$amp" conv-lora-r16-128 --kind conv-lora --module decoder --rank 16 "${flag[@]}"
        torch_bench "torch-pretrain-f512-256-$amp" pretrain-f512-256 --kind pretrain --features 32,64,128,256,512 --size 256 "${flag[@]}"
    done
else
    RATIOS+=("PyTorch with CUDA not available here: no side-by-side ratio")
fi

# The table.
gpu=$(nvidia-smi -i 0 --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)
echo
echo "GPU: ${gpu:-unknown}; binary: $BIN; logs: $OUT; total $((SECONDS - T0)) s"
printf '| %s | %s | %s | %s | %s | %s |\n' step status seconds figure "GPU util" "peak GPU MiB"
printf '|---|---|---|---|---|---|\n'
for r in "${ROWS[@]}"; do
    IFS='|' read -r a b c d e f <<<"$r"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$a" "$b" "$c" "$d" "$e" "$f"
done
echo
for r in "${RATIOS[@]}"; do echo "ratio (step time, ranksweep / PyTorch; < 1 is faster): $r"; done
[[ -s $OUT/ran_on.txt ]] && cat "$OUT/ran_on.txt"
exit "$FAILED"
