#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), one
# after the other, then prints: target | executions | result.
#
#   scripts/fuzz.sh [SECONDS]
#
# Exit status: 0 when no target found anything; 1 when a target crashed (the input is
# in fuzz/artifacts/<target>/; replay it in fuzz/ with `cargo fuzz run -s none <target>
# <file>`) or the targets did not build; 2 for a bad argument or a missing tool.
#
# Needs only a Rust toolchain and a C++ compiler (libFuzzer is C++): cargo-fuzz is
# installed from crates.io on first use. By default the targets are built without a
# sanitizer (`-s none`), which a stable toolchain builds as is: the coverage
# instrumentation uses only stable `-C` flags. FUZZ_SANITIZER=address (or another
# cargo-fuzz sanitizer) needs `-Zsanitizer`: the nightly toolchain if rustup has one,
# else stable with RUSTC_BOOTSTRAP=1 (checked with ASan on stable 1.95).
#
# Environment: FUZZ_SANITIZER (default none), FUZZ_TARGETS (space-separated subset),
# FUZZ_ARGS (extra libFuzzer flags, e.g. "-max_len=65536").
set -euo pipefail

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS]   (SECONDS: a positive whole number, default 60)" >&2
  exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_dir=$root/fuzz
sanitizer=${FUZZ_SANITIZER:-none}

if ! command -v cargo >/dev/null; then
  echo "fuzz: cargo not found; install a Rust toolchain with rustup (https://rustup.rs)" >&2
  exit 2
fi
if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
  echo "fuzz: no C++ compiler (libFuzzer is C++): apt-get install g++" >&2
  exit 2
fi

# The toolchain: whatever `cargo` is, unless a sanitizer needs nightly features.
cargo_cmd=(cargo)
if [[ $sanitizer != none ]]; then
  if rustc -V | grep -q nightly; then
    :
  elif rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo_cmd=(cargo +nightly)
  else
    echo "==> no nightly toolchain: building with RUSTC_BOOTSTRAP=1 on $(rustc -V)"
    export RUSTC_BOOTSTRAP=1
  fi
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (once; from crates.io)"
  cargo install cargo-fuzz --locked
fi

all_targets=$(cd "$fuzz_dir" && cargo fuzz list)
targets=${FUZZ_TARGETS:-$all_targets}
for t in $targets; do
  if ! grep -qx "$t" <<<"$all_targets"; then
    echo "fuzz: no target $t; the targets are:" $all_targets >&2
    exit 2
  fi
done
logs=$fuzz_dir/target/fuzz-logs
mkdir -p "$logs"

# shellcheck disable=SC2086 # empty when the default toolchain is used
echo "==> building fuzz targets (sanitizer: $sanitizer; $(rustc ${cargo_cmd[1]:-} -V))"
if ! (cd "$fuzz_dir" && "${cargo_cmd[@]}" fuzz build -s "$sanitizer") >"$logs/build.log" 2>&1; then
  tail -n 40 "$logs/build.log" >&2
  echo "fuzz: the fuzz targets did not build (full log: $logs/build.log)" >&2
  exit 1
fi

rows=()
failed=0
for t in $targets; do
  # New inputs go to a scratch corpus under target/; the committed seeds stay as they are.
  work=$fuzz_dir/target/fuzz-corpus/$t
  mkdir -p "$work" "$fuzz_dir/artifacts/$t"
  flags=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048)
  # A target's dictionary, or the one both agent_frames_* targets share.
  for d in "$t" "${t%_host_to_guest}" "${t%_guest_to_host}"; do
    if [[ -f $fuzz_dir/dicts/$d.dict ]]; then
      flags+=(-dict="$fuzz_dir/dicts/$d.dict")
      break
    fi
  done
  # shellcheck disable=SC2206 # FUZZ_ARGS is a list of flags
  flags+=(${FUZZ_ARGS:-})
  echo "==> $t for ${seconds}s"
  status=0
  (cd "$fuzz_dir" && "${cargo_cmd[@]}" fuzz run -s "$sanitizer" "$t" "$work" "corpus/$t" -- "${flags[@]}") \
    >"$logs/$t.log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$logs/$t.log" | tail -n 1)
  [[ -n $runs ]] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$logs/$t.log" | tail -n 1)
  [[ -n $runs ]] || runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$logs/$t.log" | tail -n 1)
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logs/$t.log" | tail -n 1)
  if [[ $status == 0 ]]; then
    result=ok
  else
    failed=1
    kind=$(grep -o -m1 'ERROR: libFuzzer: [a-z -]*\|panicked at [^ ]*' "$logs/$t.log" || true)
    result="FOUND (${kind:-exit $status}) ${artifact:-see $logs/$t.log}"
    grep -m1 -A3 'panicked at' "$logs/$t.log" >&2 || tail -n 20 "$logs/$t.log" >&2
  fi
  rows+=("$t|${runs:-?}|$result")
done

echo
printf '%-28s | %12s | %s\n' target executions result
printf '%-28s-+-%12s-+-%s\n' "$(printf -- '-%.0s' {1..28})" "------------" "------"
for r in "${rows[@]}"; do
  IFS='|' read -r t n res <<<"$r"
  printf '%-28s | %12s | %s\n' "$t" "$n" "$res"
done
echo "(logs: $logs)"
exit "$failed"
