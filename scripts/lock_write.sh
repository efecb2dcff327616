#!/usr/bin/env bash
# Write the exact versions of a tested environment as a lock: bash scripts/lock_write.sh VENV LOCKFILE.
# Called by scripts/lock.sh after the suite passed in VENV; not meant to be run on an untested environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$1
LOCK=$2
TMP=$(mktemp)
{
  echo "# The locked, tested set of heta_fast's environment: every package scripts/setup.sh installs."
  echo "# Written by scripts/lock.sh after the whole suite passed on these versions; do not edit by hand."
  "$VENV/bin/python" scripts/lock_check.py --environment  # python and platform, as lock_check compares them
  echo "# written: $(date -u +%Y-%m-%d)"
  # heta_fast itself (editable) and pip are not part of the lock.
  "$VENV/bin/python" -m pip freeze --all --disable-pip-version-check --exclude-editable | grep -v -i -E '^(pip|heta[-_]fast)==' | LC_ALL=C sort -f
} > "$TMP"
mv "$TMP" "$LOCK"
echo "wrote $LOCK ($(grep -c '==' "$LOCK") packages; $(grep -E '^# (python|platform):' "$LOCK" | tr '\n' ' '))"
