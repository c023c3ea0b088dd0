#!/usr/bin/env bash
# Install the headless browser the browser tests drive: Debian's chromium (test tools' own
# browser downloads cannot reach the network here). Idempotent and quiet; prints the
# browser version, or apt's output when the install fails.
set -euo pipefail

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! log=$($SUDO apt-get update -qq 2>&1 && $SUDO apt-get install -y -qq \
            --no-install-recommends chromium chromium-driver fonts-dejavu-core 2>&1); then
        echo "$log" >&2
        echo "install-browser: apt-get could not install chromium" >&2
        exit 1
    fi
fi
# The Debian wrapper script prints a harmless shell warning on stderr; keep only the version.
/usr/bin/chromium --version 2>/dev/null || true
