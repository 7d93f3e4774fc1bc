#!/usr/bin/env bash
# Redraws docs/dashboard.png: runs handover in-process with echo backends under a real
# Prometheus for about 90 s (drains, operator moves, aborted moves, a backend killed, clients
# leaving; see `dashboard_snapshot` in tests/prometheus.rs), then draws every panel of
# deploy/grafana/handover.json from Prometheus' query_range answers with matplotlib.
# Grafana is not packaged for Debian 12, hence the stand-in renderer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
MATPLOTLIB_VERSION=3.10.9
if ! venv/bin/python -c "import matplotlib, sys; sys.exit(matplotlib.__version__ != '$MATPLOTLIB_VERSION')" 2>/dev/null; then
    venv/bin/pip install -q --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION"
fi
out=$(mktemp -d)
HANDOVER_SNAPSHOT_DIR="$out" cargo test --test prometheus dashboard_snapshot -- --ignored --nocapture
venv/bin/python scripts/render-dashboard.py "$out/panels.json" deploy/grafana/handover.json docs/dashboard.png
cp "$out/panels.json" docs/dashboard-data.json
rm -rf "$out"
