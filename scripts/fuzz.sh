#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (seconds per target, default 10)
# from its committed corpus, with cargo-fuzz on the stable toolchain (no
# sanitizer). Installs cargo-fuzz when missing. A crash fails the script
# and leaves the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-10}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi
for target in merge template command; do
    # New inputs go to a scratch folder, so the committed corpus only
    # changes on purpose (`cargo fuzz cmin`).
    scratch=$(mktemp -d)
    status=0
    cargo fuzz run "$target" -s none "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" >"$scratch.log" 2>&1 || status=$?
    echo "$target: $(grep -E '^Done' "$scratch.log" || echo 'no summary')"
    if [ "$status" != 0 ]; then
        tail -40 "$scratch.log" >&2
        if [ -d "artifacts/$target" ] && [ -n "$(ls -A "artifacts/$target")" ]; then
            echo "fuzz target $target failed; the input is under fuzz/artifacts/$target" >&2
        else
            echo "fuzz target $target failed to build or run; see the log above" >&2
        fi
        rm -rf "$scratch" "$scratch.log"
        exit "$status"
    fi
    rm -rf "$scratch" "$scratch.log"
done
