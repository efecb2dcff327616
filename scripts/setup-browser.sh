#!/usr/bin/env bash
# Opt-in: Debian's Chromium and its WebDriver for tests/service/test_demo_browser.py (needs root for apt-get).
# scripts/setup.sh does not call this; without a browser that test skips (or fails when
# HETA_FAST_REQUIRE_BROWSER=1). About 70 s and ~300 MB on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "chromium and chromedriver already installed: $(chromium --version 2>/dev/null)"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
fi
# selenium drives the browser; it is in requirements/service.txt, so scripts/setup.sh installs the locked
# version. Here only for a .venv made before that (held to the lock all the same).
if [ -x .venv/bin/python ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/lock.txt "selenium>=4.20"
fi
echo "browser ready: $(chromium --version 2>/dev/null) / $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
