#!/usr/bin/env bash
# Screenshot of the MLflow UI showing the comparison runs, taken with headless Chromium.
#   bash docs/screenshot.sh [URL-fragment]   (needs: apt-get install chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-5055}
.venv/bin/mlflow ui --backend-store-uri "sqlite:///$PWD/mlflow.db" --host 127.0.0.1 --port "$PORT" >/tmp/cadence-ui.log 2>&1 &
UI=$!
trap 'kill $UI' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
  --window-size=1700,1000 --virtual-time-budget=20000 --screenshot="$PWD/docs/mlflow_ui.png" \
  "http://127.0.0.1:$PORT/${1:-#/experiments/1/runs?orderByKey=metrics.%60eval%2Fnormalized_value%60&orderByAsc=false}"
echo "wrote docs/mlflow_ui.png"
