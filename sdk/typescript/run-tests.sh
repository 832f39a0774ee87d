#!/usr/bin/env bash
# The TypeScript SDK's checks, as `make test` runs them: a clean install from the
# lockfile into this directory, the build, the strict type check, then Node's own
# test runner: unit tests (a test double of fetch) and integration tests against a
# real pyrovm booting real microVMs. The integration tests use PYROVM_BIN (default:
# <repo>/target/release/pyrovm) and TVM_IMAGE_DIR (default: ~/.cache/tvm/current);
# without them they are skipped with the reason printed, unless TVM_REQUIRE_VM=1.
set -euo pipefail
cd "$(dirname "$0")"

major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt 20 ]; then
  echo "run-tests.sh: needs Node.js >= 20 for its test runner (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

echo "==> npm ci"
npm ci --no-audit --no-fund
echo "==> npm run build"
rm -rf dist dist-test
npm run build
echo "==> tsc --noEmit (strict)"
npx tsc --noEmit
echo "==> node --test"
npm run build:test
node --test --test-concurrency=1 dist-test/unit.test.js dist-test/integration.test.js
