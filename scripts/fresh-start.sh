#!/usr/bin/env bash
# The first minutes of a new user, measured: a clean clone of this repository and an
# empty image cache, `make run` until /readyz says ready, the README's example, then
# one program per language. Prints the time to ready, each language's first answer
# (time since the command started, and the request's own latency), and the make run
# step table. The clone and the cache are removed afterwards (KEEP=1 keeps them).
# The request bodies are built with python3; a language that answers anything but
# `completed` is shown with the status or error code it got.
# Cargo's registry and apt's archive are whatever this machine has (a fresh machine
# also downloads them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fresh-start.XXXXXX")"
PORT="${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 18099)}"
LISTEN="127.0.0.1:$PORT"
PID=""
cleanup() {
  [ -n "$PID" ] && { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; else echo "kept: $WORK"; fi
}
trap cleanup EXIT

now() { date +%s%3N; }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }

git clone -q "$ROOT" "$WORK/tvm"
mkdir -p "$WORK/cache"
cd "$WORK/tvm"
START=$(now)
echo "==> fresh start: clone $WORK/tvm, empty cache $WORK/cache, listening on $LISTEN"
make run LISTEN="$LISTEN" CACHE="$WORK/cache" > "$WORK/run.log" 2>&1 &
PID=$!

until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$LISTEN/readyz" 2>/dev/null)" = 200 ]; do
  if ! kill -0 "$PID" 2>/dev/null; then
    tail -n 40 "$WORK/run.log" >&2
    echo "make run ended before it was ready" >&2
    exit 1
  fi
  sleep 0.5
done
READY=$(( $(now) - START ))

# POST /v1/execute; prints "status latency_ms"
run() {
  local body="$1" t0 out
  t0=$(now)
  out=$(curl -s -m 300 "http://$LISTEN/v1/execute" -H 'content-type: application/json' -d "$body")
  local took=$(( $(now) - t0 ))
  local status; status=$(printf '%s' "$out" | sed -n 's/.*"status":"\([a-z_]*\)".*/\1/p')
  [ -n "$status" ] || status=$(printf '%s' "$out" | sed -n 's/.*"code":"\([a-z_]*\)".*/\1/p')
  echo "${status:-error} $took"
}

read -r s first < <(run '{"language":"python","code":"print(6*7)"}')
declare -a ROWS
# One "hello" per language of the table, as JSON request bodies (one per line).
python3 - > "$WORK/bodies" <<'PY'
import json
programs = {
    "python": 'print("hi")',
    "javascript": 'console.log("hi")',
    "bash": "echo hi",
    "c": '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n',
    "cpp": '#include <iostream>\nint main() { std::cout << "hi" << std::endl; }\n',
    "rust": 'fn main() { println!("hi"); }\n',
    "go": 'package main\nimport "fmt"\nfunc main() { fmt.Println("hi") }\n',
    "java": 'public class Main { public static void main(String[] a) { System.out.println("hi"); } }\n',
    "typescript": 'console.log("hi")',
    "ruby": 'puts "hi"',
    "php": '<?php echo "hi\\n";',
    "perl": 'print "hi\\n";',
    "lua": 'print("hi")',
}
for lang, code in programs.items():
    body = {"language": lang, "code": code.replace("\\n", "\n"), "limits": {"timeout_ms": 60000}}
    print(lang + "\t" + json.dumps(body))
PY
while IFS=$'\t' read -r lang body; do
  read -r st took < <(run "$body")
  ROWS+=("$lang|$st|$(secs $(( $(now) - START )))|$took")
done < "$WORK/bodies"

echo
echo "time to ready (make run, clean clone, empty cache): $(secs "$READY") s"
echo "first request (README example) after ready: ${first} ms ($s)"
printf '\n%-12s %-14s %22s %14s\n' language status "first answer at (s)" "latency (ms)"
for r in "${ROWS[@]}"; do
  IFS='|' read -r lang st at took <<< "$r"
  printf '%-12s %-14s %22s %14s\n' "$lang" "$st" "$at" "$took"
done
echo
echo "make run's own steps:"
sed -n '/^step /,/^total/p' "$WORK/run.log"
