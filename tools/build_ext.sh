#!/usr/bin/env bash
# Rebuild the C extensions (device_model._chip, protocol._framing_c) in place, for working on
# cext/ without reinstalling.
# Serialised with flock so that parallel rebuilds do not clobber each other.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
exec flock .build.lock "$PY" setup.py -q build_ext --inplace
