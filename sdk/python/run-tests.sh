#!/usr/bin/env bash
# Installs tvm-client into a throwaway venv, type-checks it with `mypy --strict`, runs
# its tests (unit tests, and integration tests against a real pyrovm when the binary
# and the guest image exist), and removes the venv.
#
#   PYTHON=python3.9 sdk/python/run-tests.sh [pytest args...]
#
# PYROVM_BIN (default: <repo>/target/release/pyrovm), TVM_IMAGE_DIR (default:
# ~/.cache/tvm/current) and TVM_REQUIRE_VM=1 (a missing binary or image fails instead
# of skipping) are passed through to the tests.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/sdkpy-venv.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "==> venv in $TMP ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m venv "$TMP/venv"
PY="$TMP/venv/bin/python"
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$PY" -m pip install --quiet --disable-pip-version-check "$HERE" pytest mypy
"$PY" -m pip list --disable-pip-version-check 2>/dev/null | grep -E '^(tvm-client|httpx|pytest|mypy) '

cd "$HERE"
echo "==> mypy --strict (the installed package, and the tests through its py.typed)"
"$PY" -m mypy --strict --cache-dir "$TMP/mypy-cache" -p tvm_client
"$PY" -m mypy --strict --cache-dir "$TMP/mypy-cache" tests

echo "==> pytest"
"$PY" -m pytest -p no:cacheprovider -rs "$@" tests
