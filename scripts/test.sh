#!/usr/bin/env bash
# The project's one test command (what CI runs via .ci/run): installs the real
# IRC servers and client libraries if missing, then format check, lints, and
# every test (unit + integration against real ngircd/inspircd networks).
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# rustup's cargo may not be on PATH in a non-login shell.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

step() { echo "==> $*" >&2; }

step "install test dependencies"
bash scripts/install-test-deps.sh
step "cargo fmt --check"
cargo fmt --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
step "cargo test"
cargo test
step "all checks passed"
