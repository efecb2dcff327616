#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up, then the whole suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# In CI a missing compiled extension must fail its tests, not skip them.
export HETA_FAST_REQUIRE_EXT=${HETA_FAST_REQUIRE_EXT:-1}
# Triton-marked tests are deselected here and run inside test_triton_interpreted_in_subprocess with
# TRITON_INTERPRET=1 (the interpreter must be chosen before any kernel is defined).
exec .venv/bin/python -m pytest tests -m "not triton" "$@"
