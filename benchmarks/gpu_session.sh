#!/usr/bin/env bash
# What a session with a lent GPU machine runs (the `device` tool), in stages that fit one call each:
#
#   bash benchmarks/gpu_session.sh setup      # install, build the CUDA extension
#   bash benchmarks/gpu_session.sh tests      # GPU tests: CUDA KL kernel, compiled Triton, engine vs reference
#   bash benchmarks/gpu_session.sh kernels    # bench_kl_op, bench_rollout
#   bash benchmarks/gpu_session.sh passes     # bench_kl_pass, bench_hvp on real shapes, random weights
#
# Stages can be chained in one call ("setup tests kernels"). The machine has no network and none of the
# checkpoints, so the benchmarks use random-weight models of real shapes (heta_fast.models.REAL_SHAPES).
# A transformers wheel matching this repo's pin may be carried in .whl/ (see the device tool's README).
# CSVs and logs go to $OUT when it is set (the device tool copies it back), else benchmarks/results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1 HETA_BENCH_RESULTS=$OUT
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
PY=python3

stage_setup() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import torch, transformers, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'triton', triton.__version__)"
    # No build isolation (no network); sm_90 for Hopper.
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 HETA_FAST_FORCE_CUDA=1 \
        $PY -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20
    $PY -m heta_fast.env
}

stage_tests() {
    HETA_FAST_REQUIRE_EXT=1 HETA_FAST_REQUIRE_CUDA=1 $PY -m pytest -q -p no:cacheprovider \
        tests/native/test_gpu.py tests/information/test_kl_op.py tests/gate/test_rollout.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
}

stage_kernels() {
    $PY benchmarks/bench_kl_op.py 2>&1 | tee "$OUT/bench_kl_op.log"
    $PY benchmarks/bench_rollout.py 2>&1 | tee "$OUT/bench_rollout.log"
}

stage_passes() {
    $PY benchmarks/bench_kl_pass.py --device cuda --model smollm2-135m --contexts 128 512 2>&1 | tee "$OUT/bench_kl_pass.log"
    $PY benchmarks/bench_kl_pass.py --device cuda --model llama-3.2-1b --contexts 512 2>&1 | tee -a "$OUT/bench_kl_pass.log"
    $PY benchmarks/bench_hvp.py --device cuda --model smollm2-135m --contexts 128 512 --loop-sample 16 \
        --max-memory-gib 40 2>&1 | tee "$OUT/bench_hvp.log"
}

for stage in "$@"; do
    echo "=== $stage"
    "stage_$stage"
done
