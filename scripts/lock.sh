#!/usr/bin/env bash
# Refresh requirements/lock.txt: run the whole suite on the newest versions the ranges allow
# (scripts/test.sh --latest), and only if it passes, write that environment's exact versions as the lock.
#
#   bash scripts/lock.sh [pytest args]
#
# Review the diff of requirements/lock.txt, then commit it: from then on scripts/setup.sh and CI install it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test.sh --latest "$@"
bash scripts/lock_write.sh .venv-latest requirements/lock.txt
