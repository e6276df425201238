#!/usr/bin/env bash
# Issue 23's GPU runs, as one script of at most 570 s (one device command may run 600 s, of a 15-minute budget).
# Run from the repository root, with the project's .venv; OUT is where the logs and JSON go (default ./gpu-out):
#   1. 5 hospitals, ResNet-50 at 224 px, 2,000 SYNTHETIC images each (1,600 train), one SGD epoch a round:
#      plaintext, then secure with the encryption precomputed while training: the round ratio and critical path;
#   2. the services' default recipe (10 local epochs, AdamW, head refit) at 224 px for 3 rounds, secure.
# Each run has its own time limit, so a slow one cannot eat the next one's time; every run's output is kept.
set -uo pipefail
OUT="${OUT:-gpu-out}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$OUT"
run() {  # name, limit in seconds, arguments
    local name="$1" limit="$2"
    shift 2
    mkdir -p "$OUT/$name"
    echo "== $name (limit ${limit} s): $*"
    timeout "$limit" "$PY" -m experiments.gpu_consortium --out "$OUT/$name" --timeout "$((limit - 20))" "$@" \
        2>&1 | tee "$OUT/$name/output.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
run plaintext 120 --plaintext --rounds 2 --images-per-node 2000
run secure 150 --precompute on --rounds 2 --images-per-node 2000
run recipe 300 --recipe --rounds 3 --images-per-node 2000
