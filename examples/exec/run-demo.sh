#!/usr/bin/env sh
# Demo of `latchkey exec` against a local dev agent (`latchkey dev` in another shell,
# which initialises .latchkey/ and serves it). Changes the secret after a few seconds:
# the child prints its pid and value, and is restarted with the new one.
set -eu
latchkey put demo/db password=first-password user=demo
( sleep 3; latchkey put demo/db password=first-password user=demo note=unrelated;  # no restart
  sleep 3; latchkey put demo/db password=second-password user=demo ) &            # restart
exec latchkey exec --env DB_PASSWORD=demo/db#password --grace 2s -- \
  sh -c 'echo "child $$ has a ${#DB_PASSWORD}-character password"; trap "exit 0" TERM; while :; do sleep 1; done'
