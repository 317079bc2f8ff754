#!/usr/bin/env bash
# Sets up everything the tests need and runs the whole suite: formatting, lints, unit tests
# and the black-box tests that start the real `invariant` binary.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "test: cargo fmt --check"
cargo fmt --all --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "test: building the invariant binary for the black-box tests"
cargo build --bin invariant
echo "test: cargo test"
cargo test --workspace
