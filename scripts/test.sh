#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up, then the whole suite on the CPU.
#
#   bash scripts/test.sh [pytest args]            in .venv, the locked versions (requirements/lock.txt)
#   bash scripts/test.sh --latest [pytest args]   in .venv-latest, the newest versions the ranges allow
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
if [ "${1:-}" = "--latest" ]; then
  shift
  VENV=.venv-latest
  bash scripts/setup.sh --latest
else
  bash scripts/setup.sh
fi
# In CI a missing compiled extension must fail its tests, not skip them.
export HETA_FAST_REQUIRE_EXT=${HETA_FAST_REQUIRE_EXT:-1}
# Triton-marked tests are deselected here and run inside test_triton_interpreted_in_subprocess with
# TRITON_INTERPRET=1 (the interpreter must be chosen before any kernel is defined).
exec "$VENV/bin/python" -m pytest tests -m "not triton" "$@"
