#!/usr/bin/env bash
# The GPU measurement of docs/performance.md ("The GPU at its limit"), in one run on a machine with
# one CUDA GPU: the CUDA-marked tests, then `search bench loop` (reference loop, eager, captured,
# fused K = 4, 8, 16 and --jobs auto at batch 64, 256 and 1024) and `search bench study --trials
# 100` on digits and MNIST-1D (eager, captured, captured and fused), then one table of it all.
#
#   bash benchmarks/gpu.sh            # about 6 minutes on one H100
#   SMALL=1 bash benchmarks/gpu.sh    # a dry run of the same steps in a minute, on any machine
#
# Results go to $OUT (or ./gpu-results): each command's JSON and log, and table.md. Packages the
# machine lacks can come as wheels in .whl/ (installed to /tmp/site first, where there is one).
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
search() { python3 -m search.cli "$@"; }

if [ -n "${SMALL:-}" ]; then
    examples=2000 trials=10 fuse=4,8 batches=64,256
else
    examples=20000 trials=100 fuse=4,8,16 batches=64,256,1024
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    | tee "$out/gpu.txt"

python3 -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py 2>&1 \
    | tee "$out/cuda-tests.log" | tail -4

search bench loop --task synthetic-mnist --examples "$examples" --batch-sizes "$batches" \
    --captured --fuse "$fuse" --auto --json "$out/loop.json" 2>&1 | tee "$out/loop.log"

study() {  # NAME SPACE FLAGS...: one `search bench study`, its JSON named NAME
    local name=$1 space=$2
    shift 2
    search bench study --space "$space" --trials "$trials" --json "$out/study-$name.json" "$@" \
        2>&1 | tee "$out/study-$name.log"
}
study digits-eager digits --step eager
study digits-captured digits --step captured --harness-only
study digits-fused digits --step captured --fuse 8 --harness-only
study mnist1d-eager mnist1d --step eager --harness-only
study mnist1d-captured mnist1d --step captured --harness-only
study mnist1d-fused mnist1d --step captured --fuse 8 --harness-only

python3 benchmarks/table.py "$out" | tee "$out/table.md"
