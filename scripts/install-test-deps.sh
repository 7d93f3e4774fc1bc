#!/usr/bin/env bash
# Installs what the integration tests need on a fresh Debian 12 machine (run as root):
#   * real IRC servers ngircd and inspircd (two of each are linked per test), socat;
#   * a Python venv at ./venv with the real client libraries irc (jaraco) and pydle.
# Idempotent and quick (a few seconds) when everything is already there: apt and pip
# are only invoked for what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

IRC_VERSION=20.5.0
PYDLE_VERSION=1.2.0

log() { echo "install-test-deps: $*" >&2; }

# --- Debian packages -------------------------------------------------------
missing=()
command -v ngircd >/dev/null 2>&1 || [ -x /usr/sbin/ngircd ] || missing+=(ngircd)
command -v inspircd >/dev/null 2>&1 || [ -x /usr/sbin/inspircd ] || missing+=(inspircd)
command -v socat >/dev/null 2>&1 || missing+=(socat)
want_ok() {
    venv/bin/python - "$IRC_VERSION" "$PYDLE_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(0 if (version("irc"), version("pydle")) == (sys.argv[1], sys.argv[2]) else 1)
PY
}
# A venv without pip (e.g. made while python3-venv was missing) can't be repaired: remake it.
if [ -e venv ] && ! want_ok && ! venv/bin/python -m pip --version >/dev/null 2>&1; then
    log "removing broken ./venv (no working pip)"
    rm -rf venv
fi
PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
    PYTHON=/usr/bin/python3
elif [ ! -x venv/bin/python ] && ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian's python3 ships venv's ensurepip in a separate package.
    missing+=(python3-venv)
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        log "missing packages (${missing[*]}) and not root: install them with apt-get" && exit 1
    fi
    log "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- Python venv with the real client libraries ----------------------------
if [ ! -x venv/bin/python ]; then
    log "creating venv at ./venv"
    "$PYTHON" -m venv venv
fi
if ! want_ok; then
    log "installing irc==$IRC_VERSION pydle==$PYDLE_VERSION into ./venv"
    venv/bin/pip install -q --disable-pip-version-check "irc==$IRC_VERSION" "pydle==$PYDLE_VERSION"
    want_ok || { log "venv check failed after pip install"; exit 1; }
fi
log "ok (ngircd, inspircd, socat, venv with irc $IRC_VERSION + pydle $PYDLE_VERSION)"
