#!/usr/bin/env bash
# Step time, images/s, MFU and peak memory of each method's train step on this host's accelerator
# (benchmarks/accelerator.py; --dry_run: tiny shapes on the CPU). Uses .venv when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec timeout 480 "$PY" benchmarks/accelerator.py "$@"
