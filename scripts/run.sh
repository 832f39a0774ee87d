#!/usr/bin/env bash
# `make run`: installs what is missing, builds, makes the guest image, starts the
# front door (pyroshell, embedded) and reports each step with its time, then — once
# /readyz says the default class serves from its warm path — a timing table. The
# service keeps running in the foreground; Ctrl-C stops it (and removes everything
# it made at run time).
#
# LISTEN (default 127.0.0.1:8080), CACHE (the image cache dir) and SUDO come from make.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LISTEN="${LISTEN:-127.0.0.1:8080}"
CACHE="${CACHE:-$HOME/.cache/tvm}"
SUDO="${SUDO:-}"
MAKE="${MAKE:-make}"

STEPS=()
now() { date +%s%3N; }   # milliseconds
since() { local d=$(( $(now) - $1 )); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }
START=$(now)
step() {
  local name="$1"; shift
  local t0; t0=$(now)
  printf '\n==> [%6ss] %s\n' "$(since "$START")" "$name"
  "$@"
  local took; took=$(since "$t0")
  STEPS+=("$name|$took")
  printf '==> [%6ss] %s done in %s s\n' "$(since "$START")" "$name" "$took"
}

step "packages" "$MAKE" --no-print-directory deps
step "build (agent, binaries)" bash -c "$MAKE --no-print-directory agent && $MAKE --no-print-directory build"
step "guest image" $SUDO env TVM_CACHE_DIR="$CACHE" ./target/release/tvm image build --agent "target/x86_64-unknown-linux-gnu/release/tvm-agent"

# The image's own parts, as its build measured them (0.0 s when cached).
MANIFEST="$CACHE/current/manifest.json"
parts=""
if [ -f "$MANIFEST" ]; then
  for p in kernel rootfs initramfs; do
    block=$(tr -d '\n ' < "$MANIFEST" | grep -o "\"$p\":{[^}]*}" || true)
    secs=$(printf '%s' "$block" | sed -n 's/.*"seconds":\([0-9.e-]*\).*/\1/p')
    how=built
    case "$block" in *'"cached":true'*) how=cached ;; esac
    parts+=$(printf '  %s|%.1f|%s' "$p" "${secs:-0}" "$how")$'\n'
  done
fi

printf '\n==> [%6ss] pyroshell (embedded) on http://%s\n' "$(since "$START")" "$LISTEN"
SERVE_T0=$(now)
TVM_IMAGE_DIR="$CACHE/current" ./target/release/pyroshell --mode embedded --listen "$LISTEN" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; exit 0' INT TERM

# Follow /readyz: what it waits for, as it changes, until it is ready.
last=""
template_at=""
while kill -0 "$PID" 2>/dev/null; do
  body=$(curl -s -m 2 "http://$LISTEN/readyz" || true)
  if [ "$body" != "$last" ] && [ -n "$body" ]; then
    msg=$(printf '%s' "$body" | sed -n 's/.*"message":"\([^"]*\)".*/\1/p')
    [ -n "$msg" ] || msg=$(printf '%s' "$body" | tr -d '\n')
    printf '==> [%6ss] %s\n' "$(since "$START")" "$msg"
    case "$msg" in *"warm pool"*) [ -z "$template_at" ] && template_at=$(since "$SERVE_T0") ;; esac
    last="$body"
  fi
  [ "$body" = "ready" ] && break
  sleep 0.2
done
if ! kill -0 "$PID" 2>/dev/null; then
  wait "$PID"
  exit 1
fi
ready_in=$(since "$SERVE_T0")
STEPS+=("start to ready (template${template_at:+ $template_at s}, warm pool)|$ready_in")

printf '\n%-48s %8s\n' "step" "seconds"
for s in "${STEPS[@]}"; do
  printf '%-48s %8s\n' "${s%%|*}" "${s##*|}"
  if [ "${s%%|*}" = "guest image" ] && [ -n "$parts" ]; then
    while IFS='|' read -r name secs how; do
      [ -n "$name" ] && printf '%-48s %8s\n' "$name ($how)" "$secs"
    done <<< "$parts"
  fi
done
printf '%-48s %8s\n' "total: command to ready" "$(since "$START")"
printf "\nready: curl -s %s/v1/execute -H 'content-type: application/json' -d '{\"language\":\"python\",\"code\":\"print(6*7)\"}'\n\n" "$LISTEN"
wait "$PID"
