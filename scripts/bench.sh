#!/usr/bin/env bash
# The benchmark command (issue 5): handover against real haproxy, nginx (stream) and socat,
# and a direct connection, side by side in one run on this machine.
#
#   bash scripts/bench.sh            full run (about 15 minutes on 2 cores)
#   bash scripts/bench.sh --quick    smoke run, under a minute once built
#   bash scripts/bench.sh --only latency,memory --out DIR
#
# Measures throughput (iperf3, 1 and 8 streams) and CPU seconds per GB, small-message
# latency (native echo server and client), memory per idle session (raw and IRC, 1000 and
# 8000 sessions), accept rate, and drain time of IRC sessions between two linked ngircd.
# Writes results.json, results.md and PNG plots to --out (default ./bench-results).
# Everything listens on 127.0.0.1 only; every process started is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

bash scripts/install-bench-deps.sh
# One cargo invocation for both, so they share one feature resolution (no rebuild ping-pong).
cargo build --release --quiet --bin handover --example bench
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# Load programs hold up to 8000 sockets each: ask for the hard fd limit.
ulimit -n "$(ulimit -Hn)"
exec python3 bench/run.py --target-dir "$CARGO_TARGET_DIR" "$@"
