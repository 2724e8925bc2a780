#!/usr/bin/env bash
# The face prior on a lent GPU: continue the shipped prior (init=face_prior_64) for a fixed wall time, then write
# the prior file, its curve and samples (docs/face_prior.md). Device time is short, so the budget is seconds, not kimg:
#
#   bash bench/face_prior_gpu.sh [OUT_FOLDER] [SECONDS] [OVERRIDE ...]
#        (defaults: $OUT/face_prior, else outputs/face_prior_gpu; 420 s; overrides go to experiments.face_prior)
#
# It renders the face set first (16 workers; cached in .cache/ for the next call on the same machine), trains with
# snapshots every SNAPSHOT_KIMG (default 50: last.pt, a curve row, a grid), stops at the time limit, and exports the
# last snapshot (a rerun with total_kimg=0 resumes last.pt and writes face_prior.pt). Ship the result with
# `cp OUT/face_prior.pt lightning_modules/weights/face_prior_64.pt && make sums`, then project the pull's targets
# into it again (`make latent-targets`). DEVICE=cpu runs the same steps on the CPU (a dry run of the script);
# without a CUDA device it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:+$OUT/face_prior}}
out=${out:-outputs/face_prior_gpu}
seconds=${2:-420}
shift $(($# < 2 ? $# : 2))
device=${DEVICE:-cuda}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { timeout 300 make install > /dev/null 2>&1 || { echo "make install failed"; exit 1; }; }
if [ "$device" != cpu ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/face_prior_gpu.sh: no CUDA device on this machine; nothing trained"
    exit 0
fi
mkdir -p "$out"
common=("device=$device" "out=$out" threads=8 workers=16 "snapshot_kimg=${SNAPSHOT_KIMG:-50}" "$@")
start=$SECONDS
timeout --signal=INT --kill-after=20 "$seconds" "$PY" -m experiments.face_prior "${common[@]}" init=face_prior_64 \
    total_kimg=100000 2>&1 | tee "$out/train.log"
echo "trained for $((SECONDS - start)) s, the face set's render included"
if [ ! -f "$out/last.pt" ]; then
    echo "no snapshot was written within $seconds s: nothing to export (lower SNAPSHOT_KIMG)"
    exit 1
fi
"$PY" -m experiments.face_prior "${common[@]}" total_kimg=0 2>&1 | tail -2
tail -3 "$out/curve.csv"
