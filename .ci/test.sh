#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests start or build
# with, builds the binaries the end-to-end tests run, then runs every test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash .ci/install-tools.sh
# shellcheck source=/dev/null
source target/tools/env.sh

# The end-to-end tests start the real `latchkey` binary.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
