#!/usr/bin/env bash
# Installs what scripts/bench.sh needs on a fresh Debian 12 machine (run as root): the peers
# it compares against (haproxy, nginx with the stream module, socat), iperf3, ngircd for the
# drain, gnuplot for the plots, python3 to orchestrate. Optional profilers: linux-perf,
# valgrind (BENCH_PROFILERS=1). Idempotent: apt-get runs only for what is missing.
set -euo pipefail

log() { echo "install-bench-deps: $*" >&2; }

missing=()
need() { # need COMMAND-OR-PATH PACKAGE
    command -v "$1" >/dev/null 2>&1 || [ -e "$1" ] || missing+=("$2")
}
need haproxy haproxy
need nginx nginx
need /usr/lib/nginx/modules/ngx_stream_module.so libnginx-mod-stream
need socat socat
need iperf3 iperf3
need ngircd ngircd
need gnuplot gnuplot-nox
need python3 python3
if [ "${BENCH_PROFILERS:-0}" = 1 ]; then
    need perf linux-perf
    need valgrind valgrind
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        log "missing packages (${missing[*]}) and not root: install them with apt-get"
        exit 1
    fi
    log "installing ${missing[*]}"
    apt-get update -q
    # Debian's server packages must not start services here (policy-rc.d may forbid it anyway).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
log "ok (haproxy, nginx stream, socat, iperf3, ngircd, gnuplot, python3)"
