#!/usr/bin/env bash
# Screenshots of the MLflow UI as an analyst sees it, in headless Chromium: see docs/screenshots.py.
#   bash docs/screenshot.sh [--out DIR] [--port N] [--chromium PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python docs/screenshots.py "$@"
