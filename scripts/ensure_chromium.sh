#!/usr/bin/env bash
# Finds a Chromium for Playwright: $CHROMIUM_PATH, /usr/bin/chromium, else apt-get (as root),
# else Playwright's own download. Prints the path it settled on.
# As root with apt-get it also installs Debian's chromium-headless-shell, which the agents use when
# present (simpersona.sim.browser.chromium_executable: 2.3x the steps/s of full Chromium on 2 cores);
# without it they run on /usr/bin/chromium.
set -euo pipefail
apt_ok() { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; }
updated=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  # another install on the box (a second checkout's setup, unattended upgrades) holds dpkg's lock: wait
  local wait=(-o DPkg::Lock::Timeout=600)
  if [[ $updated -eq 0 ]]; then apt-get "${wait[@]}" update -qq; updated=1; fi
  apt-get "${wait[@]}" install -y -qq "$@" >/dev/null
}
if [[ ! -x /usr/lib/chromium/chromium-headless-shell ]] && apt_ok; then
  apt_install chromium-headless-shell || echo "chromium-headless-shell: not installed (apt-get failed); using chromium"
fi
if [[ -n "${CHROMIUM_PATH:-}" && -x "${CHROMIUM_PATH}" ]]; then echo "chromium: $CHROMIUM_PATH"; exit 0; fi
if [[ -x /usr/bin/chromium ]]; then echo "chromium: /usr/bin/chromium"; exit 0; fi
if apt_ok; then
  apt_install chromium
  echo "chromium: /usr/bin/chromium (installed with apt-get)"; exit 0
fi
.venv/bin/python -m playwright install chromium
echo "chromium: playwright's bundled build"
