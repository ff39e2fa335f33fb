#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests start or build
# with, builds the binaries the end-to-end tests run, then runs every test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash .ci/install-tools.sh
# shellcheck source=/dev/null
source target/tools/env.sh

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
cargo test --workspace --no-fail-fast "$@"
