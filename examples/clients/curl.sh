#!/usr/bin/env sh
# Fetch a secret from the local latchkey agent with curl over its Unix socket (mTLS).
# Usage: curl.sh PATH   (LATCHKEY_DIR defaults to .latchkey)
set -eu
dir=${LATCHKEY_DIR:-.latchkey}
exec curl --fail-with-body --silent --show-error \
  --unix-socket "${LATCHKEY_SOCKET:-$dir/run/latchkey.sock}" \
  --cacert "${LATCHKEY_CACERT:-$dir/ca/ca.pem}" \
  --cert "${LATCHKEY_CERT:-$dir/clients/admin.pem}" \
  --key "${LATCHKEY_KEY:-$dir/clients/admin.key}" \
  "https://localhost/v1/secrets/$1"
