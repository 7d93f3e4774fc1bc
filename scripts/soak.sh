#!/usr/bin/env bash
# Soak and chaos run (a command, not a CI test): 200 IRC clients through handover on three
# linked real ngircd servers exchange numbered messages while backends are drained back and
# forth, one is killed with SIGKILL and restarted, and single sessions move. Writes the
# figures to docs/SOAK.md (or --report FILE) and exits 1 if anything was lost, duplicated,
# reordered or disconnected that a SIGKILL does not explain, or a metric disagrees.
#
#   bash scripts/soak.sh                # 10 minutes
#   bash scripts/soak.sh --minutes 2    # the short run
#   bash scripts/soak.sh --help         # every option (clients, channels, rate, ...)
#
# Needs ngircd (bash scripts/install-test-deps.sh). Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
cargo build --release --bin handover --example soak
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/examples/soak" "$@"
