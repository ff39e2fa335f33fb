#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests start or build
# with, builds the binaries the end-to-end tests run, then runs every test with
# cargo-nextest (one process per test, settings in .config/nextest.toml) and the doc
# tests with cargo, and prints a timing summary per group at the end.
#
# Arguments go to `cargo nextest run`, e.g. `bash .ci/test.sh -E 'test(/^sync::/)'`.
# LATCHKEY_KEEP_TEST_DIRS=1 keeps every test's temp folder (agent logs, configs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$(date +%s)

bash .ci/install-tools.sh
# shellcheck source=/dev/null
source "${LATCHKEY_TOOLS_DIR:-target/tools}/env.sh"

# PostgreSQL and MariaDB (plugin SQL capability, templates): start them if stopped.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if command -v mysqladmin >/dev/null && ! mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  for _ in $(seq 1 30); do mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 1; done
fi

# The end-to-end tests start the real `latchkey` binary.
cargo build --workspace --bins

# One pace measurement for the whole run, made by the first test that needs a
# deadline (tests/harness/pace.rs): every deadline of the run is scaled by it.
run_dir=$root/target/test-run
rm -rf "$run_dir"
mkdir -p "$run_dir"
export LATCHKEY_TEST_PACE_FILE=$run_dir/pace

status=0
cargo nextest run --workspace --no-fail-fast "$@" || status=$?
# nextest does not run doc tests.
if [ $# -eq 0 ]; then
  cargo test --workspace --doc --quiet || status=$?
fi

python3 .ci/timings.py target/nextest/default/junit.xml \
  --pace "$LATCHKEY_TEST_PACE_FILE" --wall $(( $(date +%s) - started ))
exit $status
