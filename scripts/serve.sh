#!/usr/bin/env bash
# Sets up everything and starts the server on the shipped models with the embedded defaults
# (http://127.0.0.1:8000). Extra arguments go to `invariant serve` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --bin invariant
exec ./target/release/invariant serve "$@"
