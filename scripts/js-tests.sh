#!/usr/bin/env bash
# Real-client tests: the official `phoenix` npm client (over the `ws` package) against
# `corecast serve`, with node's built-in test runner. Run from the repository root.
#
#   scripts/js-tests.sh
#
# Environment:
#   CORECAST_BIN       use this binary instead of `cargo build --release` (target/release/corecast)
#   JS_TESTS_TIMEOUT   seconds allowed for the node test run (default 300)
#
# Every test file starts its own server on 127.0.0.1:0 and kills it when done.
set -euo pipefail

cd "$(dirname "$0")/.."
JS_DIR=tests/js
TIMEOUT="${JS_TESTS_TIMEOUT:-300}"

command -v node >/dev/null || { echo "js-tests: node is not installed (need Node >= 20)" >&2; exit 1; }
command -v npm >/dev/null || { echo "js-tests: npm is not installed" >&2; exit 1; }
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$NODE_MAJOR" -lt 20 ]; then
  echo "js-tests: need Node >= 20, have $(node --version)" >&2
  exit 1
fi

# Install the pinned client packages when node_modules is missing or older than the lock file.
if [ ! -f "$JS_DIR/node_modules/.package-lock.json" ] ||
   [ "$JS_DIR/package-lock.json" -nt "$JS_DIR/node_modules/.package-lock.json" ] ||
   [ "$JS_DIR/package.json" -nt "$JS_DIR/node_modules/.package-lock.json" ]; then
  echo "js-tests: npm ci --prefix $JS_DIR"
  timeout 300 npm ci --prefix "$JS_DIR" --no-audit --no-fund
fi

if [ -z "${CORECAST_BIN:-}" ]; then
  echo "js-tests: cargo build --release"
  cargo build --release
  CORECAST_BIN="$PWD/target/release/corecast"
fi
case "$CORECAST_BIN" in
  /*) ;;
  *) CORECAST_BIN="$PWD/$CORECAST_BIN" ;;
esac
[ -x "$CORECAST_BIN" ] || { echo "js-tests: $CORECAST_BIN is not an executable" >&2; exit 1; }
export CORECAST_BIN

echo "js-tests: node --test $JS_DIR/ (server: $CORECAST_BIN, limit ${TIMEOUT}s)"
# --kill-after: a runner that ignores SIGTERM is killed; test files kill their own servers.
timeout --kill-after=10 "$TIMEOUT" node --test "$JS_DIR/"
