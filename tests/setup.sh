#!/bin/sh
# Installs the system tools the tests use beyond Python: strace (to see the journal's
# fsyncs) and GNU parallel (leanpool parallel's outputs are compared with its own). Safe to run again: it installs only what is missing, and only as
# root; otherwise it says what is missing, and those tests skip (outside CI) or fail
# (with CI=true).
set -eu
missing=""
command -v strace >/dev/null 2>&1 || missing="$missing strace"
command -v parallel >/dev/null 2>&1 || missing="$missing parallel"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "tests/setup.sh: not root, cannot install:$missing" >&2
    exit 0
fi
apt-get update -qq
# shellcheck disable=SC2086  # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
