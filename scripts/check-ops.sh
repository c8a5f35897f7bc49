#!/usr/bin/env bash
# The operations files: Prometheus rules and their tests, the example
# Prometheus configuration, the Grafana dashboards (scripts/check-ops.py).
# Needs python3 and promtool (scripts/setup.sh installs promtool).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/check-ops.py --self-test
python3 scripts/check-ops.py
