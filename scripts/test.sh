#!/usr/bin/env bash
# Runs every test of the project, installing first what this machine lacks:
# the wasm32-wasip2 target (for the example plugins), Debian's Chromium and
# ChromeDriver (for the browser tests) and schemathesis (for the API
# check). Installing packages needs root or sudo; everything else runs as
# the current user.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if ! command -v schemathesis >/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check schemathesis==4.32.5
fi

# Unit, integration and browser tests. Screenshots of the browser tests
# land in target/ui-screenshots (or $CARGO_TARGET_DIR/ui-screenshots).
cargo test --release

# Each benchmark once, in its quick mode, only to prove it still runs.
cargo bench --bench processors -- --quick
cargo bench --bench plugin_call -- --quick
cargo bench --bench hub -- --quick
cargo run --release --example load -- --requests 500 --concurrency 16

# The API against its own OpenAPI document.
scripts/check-api.sh 25

# Each fuzz target for a few seconds from its committed corpus.
scripts/fuzz.sh 10
