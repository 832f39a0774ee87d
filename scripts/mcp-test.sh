#!/usr/bin/env bash
# The MCP server, exercised by the official MCP Python SDK client (`pip install mcp`)
# in a throwaway venv: against a real pyrovm (real VMs) over streamable HTTP at /mcp,
# over stdio through `tvm mcp`, and through pyroshell (the front door, forward mode) to
# that pyrovm. PYROVM_BIN, PYROSHELL_BIN and TVM_BIN default to the release builds;
# TVM_IMAGE_DIR to ~/.cache/tvm/current.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYROVM_BIN="${PYROVM_BIN:-$ROOT/target/release/pyrovm}"
TVM_BIN="${TVM_BIN:-$ROOT/target/release/tvm}"
PYROSHELL_BIN="${PYROSHELL_BIN:-$ROOT/target/release/pyroshell}"
IMAGE="${TVM_IMAGE_DIR:-$HOME/.cache/tvm/current}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/mcp-test.XXXXXX")"
PID=""
GW=""
cleanup() {
  for p in $GW $PID; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

echo "==> venv with the MCP Python SDK in $TMP"
python3 -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install --quiet --disable-pip-version-check mcp
"$TMP/venv/bin/pip" list --disable-pip-version-check 2>/dev/null | grep -E '^mcp '

# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"
PORT="$(free_port)"
GW_PORT="$(free_port)"
TOKEN="mcp-test-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "$TOKEN" > "$TMP/tokens"
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
echo "==> MCP over HTTP and over stdio (tvm mcp)"
"$TMP/venv/bin/python" "$ROOT/scripts/mcp-check.py" "http://127.0.0.1:$PORT" "$TOKEN" "$TVM_BIN"

# The front door forwarding to that pyrovm: the client's token goes upstream.
cat > "$TMP/pyroshell.toml" <<TOML
listen = "127.0.0.1:$GW_PORT"
token_file = "$TMP/tokens"
[forward]
upstream = "http://127.0.0.1:$PORT"
TOML
"$PYROSHELL_BIN" --mode forward --config "$TMP/pyroshell.toml" 2> "$TMP/pyroshell.log" &
GW=$!
wait_healthy "$GW_PORT"
echo "==> MCP through pyroshell (forward) and tvm mcp pointed at it"
"$TMP/venv/bin/python" "$ROOT/scripts/mcp-check.py" "http://127.0.0.1:$GW_PORT" "$TOKEN" "$TVM_BIN"
