#!/usr/bin/env bash
# One-go check of a lent GPU machine (issue 20), within about 6 minutes of wall time:
#   1. pytest -m gpu                       compiled Triton kernels vs the reference, on the device
#   2. bench/kernels.py                    Triton vs NVlabs' PyTorch paths at every 64 px generator layer,
#                                          fwd and fwd+bwd, fp32 and bf16; agreement checked, then timing
#   3. bench/train_step.py --device cuda   the paper-width training step, fp32 and bf16, Triton on and off
#   4. a 1-kimg run of +exp=baseline trainer=gpu, with its tick log (perf/* in csv/metrics.csv)
# and ends with one markdown table (gpu_check.md) ready for BENCHMARKS.md.
#
#   bash bench/gpu_check.sh [OUT_FOLDER]      (default: $OUT, else outputs/gpu_check)
#
# It installs nothing that `make install` does not: it runs `make install` only when no environment with torch,
# Lightning and Hydra is found. Every step has its own timeout (seconds below), so one failure or hang does not
# eat the device budget; each step's log is STEP.log. A kernel that falls back to the PyTorch reference is an
# error here (VOICE2FACE_STRICT_KERNELS=1). Without a CUDA device it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-outputs/gpu_check}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export VOICE2FACE_STRICT_KERNELS=1 TRITON_INTERPRET=0 PYTHONUNBUFFERED=1

if [ -n "${PY:-}" ]; then :
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
elif python3 -c "import torch, lightning, hydra" 2>/dev/null; then PY=python3
else
    echo "no environment found: make install"
    timeout 300 make install > "$out/install.log" 2>&1 || { echo "make install failed: $out/install.log"; exit 1; }
    PY=.venv/bin/python
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    printf '# GPU check\n\nno CUDA device on this machine (torch.cuda.is_available() is False): nothing measured.\n' \
        > "$out/gpu_check.md"
    echo "bench/gpu_check.sh: no CUDA device on this machine; nothing measured (note: $out/gpu_check.md)"
    exit 0
fi

: > "$out/steps.tsv"
step() {  # step NAME TIMEOUT_S COMMAND...: run with a time limit, log to NAME.log, record "name rc seconds limit"
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$out/steps.tsv"
    echo "   exit $rc after $((SECONDS - start)) s; log $out/$name.log"
}

step pytest_gpu 75 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/
step kernels 110 "$PY" bench/kernels.py --batch 32 --reps 20 --markdown "$out/kernels.md"
step train_step 100 "$PY" -m bench.train_step --device cuda --iters 8 --variant "paper=+exp=baseline" \
    --markdown "$out/train_step.md"
step train_1kimg 110 "$PY" -m experiments.run +exp=baseline trainer=gpu model.total_kimg=1 evaluate=false \
    logger=csv trainer.log_every_n_steps=2 metrics.callback.every_kimg=0 model.sample_every_kimg=0 \
    "hydra.run.dir=$out/run"

"$PY" bench/gpu_report.py "$out" > "$out/gpu_check.md"
cat "$out/gpu_check.md"
awk -F'\t' '$2 != 0 {bad = 1} END {exit bad}' "$out/steps.tsv"
