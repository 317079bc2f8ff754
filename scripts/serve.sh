#!/usr/bin/env bash
# Sets up everything and starts the server on the shipped models with the embedded defaults
# (http://127.0.0.1:8000), with API-key authentication switched off (`--dev-no-auth`, accepted
# on loopback addresses only). Extra arguments go to `invariant serve` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --bin invariant
echo "Starting invariant on 127.0.0.1 with authentication OFF (--dev-no-auth): development only." >&2
echo "For a real deployment create keys with 'invariant keys create' and start 'invariant serve' without it." >&2
exec ./target/release/invariant serve --dev-no-auth "$@"
