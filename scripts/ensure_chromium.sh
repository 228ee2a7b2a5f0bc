#!/usr/bin/env bash
# Finds a Chromium for Playwright: $CHROMIUM_PATH, /usr/bin/chromium, else apt-get (as root),
# else Playwright's own download. Prints the path it settled on.
set -euo pipefail
if [[ -n "${CHROMIUM_PATH:-}" && -x "${CHROMIUM_PATH}" ]]; then echo "chromium: $CHROMIUM_PATH"; exit 0; fi
if [[ -x /usr/bin/chromium ]]; then echo "chromium: /usr/bin/chromium"; exit 0; fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  echo "chromium: /usr/bin/chromium (installed with apt-get)"; exit 0
fi
.venv/bin/python -m playwright install chromium
echo "chromium: playwright's bundled build"
