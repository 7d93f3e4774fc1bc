#!/usr/bin/env bash
# Installs what the integration tests need on a fresh Debian 12 machine (run as root):
#   * real IRC servers ngircd and inspircd (two of each are linked per test), socat;
#   * tshark, to decode handover's OSCAR output independently of our own parser;
#   * a Python venv at ./venv with the real client libraries irc (jaraco) and pydle, and
#     PyYAML + kubernetes-validate (offline OpenAPI schemas) for deploy/kubernetes/;
#   * prometheus + promtool (a real Prometheus scrapes handover in tests/prometheus.rs and
#     checks deploy/prometheus/), systemd-analyze (verifies deploy/systemd/handover.service).
# Idempotent and quick (a few seconds) when everything is already there: apt and pip
# are only invoked for what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

IRC_VERSION=20.5.0
PYDLE_VERSION=1.2.0
PYYAML_VERSION=6.0.3
K8S_VALIDATE_VERSION=1.37.0

log() { echo "install-test-deps: $*" >&2; }

# --- Debian packages -------------------------------------------------------
missing=()
command -v ngircd >/dev/null 2>&1 || [ -x /usr/sbin/ngircd ] || missing+=(ngircd)
command -v inspircd >/dev/null 2>&1 || [ -x /usr/sbin/inspircd ] || missing+=(inspircd)
command -v socat >/dev/null 2>&1 || missing+=(socat)
# tshark: an independent FLAP/SNAC decoder for what handover sends (tests/oscar_migration.rs).
command -v tshark >/dev/null 2>&1 || missing+=(tshark)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# `man`, which systemd-analyze verify runs for the unit's Documentation=man:handover(1).
command -v man >/dev/null 2>&1 || missing+=(man-db)
want_ok() {
    venv/bin/python - "$IRC_VERSION" "$PYDLE_VERSION" "$PYYAML_VERSION" "$K8S_VALIDATE_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
have = tuple(version(p) for p in ("irc", "pydle", "PyYAML", "kubernetes-validate"))
sys.exit(0 if have == tuple(sys.argv[1:5]) else 1)
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
    log "installing irc==$IRC_VERSION pydle==$PYDLE_VERSION PyYAML==$PYYAML_VERSION kubernetes-validate==$K8S_VALIDATE_VERSION into ./venv"
    venv/bin/pip install -q --disable-pip-version-check "irc==$IRC_VERSION" \
        "pydle==$PYDLE_VERSION" "PyYAML==$PYYAML_VERSION" \
        "kubernetes-validate==$K8S_VALIDATE_VERSION"
    want_ok || { log "venv check failed after pip install"; exit 1; }
fi
log "ok (ngircd, inspircd, socat, tshark, prometheus, systemd-analyze, venv with irc $IRC_VERSION + pydle $PYDLE_VERSION + PyYAML $PYYAML_VERSION + kubernetes-validate $K8S_VALIDATE_VERSION)"
