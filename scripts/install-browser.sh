#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/test_chat_browser.py drives it with
# Playwright through executable_path). Never `playwright install`: the tests must not depend on a
# browser downloaded from outside the distribution. Idempotent; prints the version.
set -euo pipefail

CHROMIUM=${SLIMLLM_CHROMIUM:-/usr/bin/chromium}

if [[ ! -x $CHROMIUM ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO=(sudo)
    else
      echo "install-browser: $CHROMIUM is missing and installing it needs root" >&2
      exit 1
    fi
  else
    SUDO=()
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q
  # fonts-liberation: pages render with real glyphs in screenshots instead of boxes.
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium fonts-liberation
fi

echo "[install-browser] $("$CHROMIUM" --version 2>/dev/null)" >&2
