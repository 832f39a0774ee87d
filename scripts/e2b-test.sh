#!/usr/bin/env bash
# TVM's E2B door, exercised by the official E2B SDKs in throwaway environments: the
# Python SDK (`pip install e2b`) against a real pyrovm (real VMs) at /e2b and
# /e2b/envd and then through pyroshell (the front door, forward mode) to it, and the
# JavaScript SDK (`npm install e2b`) against the same pyrovm. PYROVM_BIN and
# PYROSHELL_BIN default to the release builds; TVM_IMAGE_DIR to ~/.cache/tvm/current.
# E2B_SDK_VERSION / E2B_JS_SDK_VERSION pin the SDKs (default: the newest 2.x).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYROVM_BIN="${PYROVM_BIN:-$ROOT/target/release/pyrovm}"
PYROSHELL_BIN="${PYROSHELL_BIN:-$ROOT/target/release/pyroshell}"
IMAGE="${TVM_IMAGE_DIR:-$HOME/.cache/tvm/current}"
SDK="${E2B_SDK_VERSION:-e2b>=2,<3}"
JS_SDK="${E2B_JS_SDK_VERSION:-e2b@2}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/e2b-test.XXXXXX")"
PID=""
GW=""
cleanup() {
  for p in $GW $PID; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

echo "==> venv with the E2B Python SDK in $TMP"
python3 -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install --quiet --disable-pip-version-check "$SDK"
"$TMP/venv/bin/pip" list --disable-pip-version-check 2>/dev/null | grep -E '^e2b '

echo "==> the E2B JavaScript SDK in $TMP/js"
mkdir -p "$TMP/js"
(cd "$TMP/js" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund "$JS_SDK" >/dev/null)
node -e 'console.log("e2b (npm) " + require(process.argv[1] + "/node_modules/e2b/package.json").version)' "$TMP/js"
cp "$ROOT/scripts/e2b-check.mjs" "$TMP/js/"

# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"
PORT="$(free_port)"
GW_PORT="$(free_port)"
rand() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
TOKEN="e2b-test-$(rand)"
OTHER="e2b-other-$(rand)"
printf '%s\n%s\n' "$TOKEN" "$OTHER" > "$TMP/tokens"
cat > "$TMP/pyrovm.toml" <<TOML
listen = "127.0.0.1:$PORT"
runtime_dir = "$TMP/run"
image_dir = "$IMAGE"
token_file = "$TMP/tokens"
[[pool]]
vcpus = 1
memory_mb = 256
size = 1
TOML
"$PYROVM_BIN" --config "$TMP/pyrovm.toml" 2> "$TMP/pyrovm.log" &
PID=$!
wait_healthy "$PORT"
echo "==> the E2B SDK against pyrovm"
if ! "$TMP/venv/bin/python" "$ROOT/scripts/e2b-check.py" "http://127.0.0.1:$PORT" "$TOKEN" "$OTHER"; then
  tail -n 40 "$TMP/pyrovm.log" >&2
  exit 1
fi

echo "==> the E2B JavaScript SDK against pyrovm"
if ! node "$TMP/js/e2b-check.mjs" "http://127.0.0.1:$PORT" "$TOKEN"; then
  tail -n 40 "$TMP/pyrovm.log" >&2
  exit 1
fi

cat > "$TMP/pyroshell.toml" <<TOML
listen = "127.0.0.1:$GW_PORT"
token_file = "$TMP/tokens"
[forward]
upstream = "http://127.0.0.1:$PORT"
TOML
"$PYROSHELL_BIN" --mode forward --config "$TMP/pyroshell.toml" 2> "$TMP/pyroshell.log" &
GW=$!
wait_healthy "$GW_PORT"
echo "==> the E2B SDK through pyroshell (forward) to that pyrovm"
if ! "$TMP/venv/bin/python" "$ROOT/scripts/e2b-check.py" "http://127.0.0.1:$GW_PORT" "$TOKEN" "$OTHER"; then
  tail -n 40 "$TMP/pyroshell.log" "$TMP/pyrovm.log" >&2
  exit 1
fi
