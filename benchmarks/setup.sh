#!/bin/sh
# Installs what benchmarks/bench.py needs beyond the project itself:
# GNU parallel (one of the compared methods), a C compiler (for the ceiling driver)
# and matplotlib (for benchmarks/chart.py, through the project's "bench" extra).
# Safe to run again: it installs only what is missing.
set -eu
cd "$(dirname "$0")/.."

missing=""
command -v parallel >/dev/null 2>&1 || missing="$missing parallel"
command -v cc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup.sh: need root to apt-get install:$missing (or install them yourself)" >&2
        exit 1
    fi
    apt-get update -qq
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
# GNU parallel asks once for a citation notice; silence it for scripted runs.
if command -v parallel >/dev/null 2>&1; then
    mkdir -p "${HOME:-/root}/.parallel"
    touch "${HOME:-/root}/.parallel/will-cite"
fi

python="${PYTHON:-.venv/bin/python}"
if ! "$python" -c "import matplotlib" >/dev/null 2>&1; then
    "$python" -m pip install -q -e '.[bench]'
fi
echo "setup.sh: ready (parallel: $(command -v parallel), cc: $(command -v cc))"
