#!/usr/bin/env bash
# Checks the hub's HTTP API against its own OpenAPI document with
# schemathesis (https://schemathesis.readthedocs.io), which generates
# requests for every route and fails on any 5xx or any response the
# document does not allow.
#
# `GET /ws` and `GET /api/events` are left out: one upgrades to the
# processor WebSocket protocol and the other streams events without end;
# the integration and browser tests exercise both with real clients.
#
# Usage: scripts/check-api.sh [EXAMPLES_PER_ROUTE]   (default 25)
# Needs: `pip install schemathesis`, and the release build of the hub
# (built here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${1:-25}"
binary="${CARGO_TARGET_DIR:-target}/release/taskhub"
if [ ! -x "$binary" ]; then
    cargo build --release
fi

work=$(mktemp -d)
# A user in the admin group, so every route is reached through a real
# token, and schemathesis checks that leaving the token out returns 401.
"$binary" user add api-check --db "$work/hub.db" >/dev/null
"$binary" group add admin --db "$work/hub.db" >/dev/null
"$binary" group add-member admin api-check --db "$work/hub.db" >/dev/null
token=$("$binary" token create api-check --db "$work/hub.db")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$binary" serve --listen "127.0.0.1:$port" --plugins plugins \
    --db "$work/hub.db" --cache-dir "$work/cache" \
    --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 \
    --auth-failures-per-min 1000000 >"$work/hub.log" 2>&1 &
hub=$!
trap 'kill "$hub" 2>/dev/null; wait "$hub" 2>/dev/null; rm -rf "$work"' EXIT

for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || {
    echo "the hub did not start; its log:" >&2
    cat "$work/hub.log" >&2
    exit 1
}

# One worker: with two, Python 3.11's `ast.parse` (which Hypothesis calls
# to describe strategies) failed about one run in eight with
# "AST constructor recursion depth mismatch" when both threads parsed at
# once.
status=0
schemathesis --config-file scripts/schemathesis.toml run \
    "http://127.0.0.1:$port/api/openapi.json" \
    --checks all \
    --max-examples "$examples" \
    --workers 1 \
    --header "Authorization: Bearer $token" \
    --exclude-path /ws \
    --exclude-path /api/events || status=$?

# The hub must still serve after the run.
if ! curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null; then
    echo "the hub stopped answering /healthz after the run; its log:" >&2
    tail -50 "$work/hub.log" >&2
    exit 1
fi
if grep -q "panicked" "$work/hub.log"; then
    echo "the hub panicked during the run:" >&2
    grep -A5 "panicked" "$work/hub.log" >&2
    exit 1
fi
exit "$status"
