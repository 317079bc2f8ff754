#!/usr/bin/env bash
# Sets up everything the tests need and runs the whole suite: formatting, lints, unit tests
# the black-box tests that start the real `invariant` binary, and the determinism gate on the
# shipped model repository.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# The real Triton and KServe clients for the conformance tests, in a project-local venv.
bash scripts/setup-python.sh
# The tests start their own redis-server on free loopback ports; install it when missing.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "test: installing redis-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
fi
command -v redis-server >/dev/null || { echo "test: redis-server is required and could not be installed" >&2; exit 1; }
# The portability tests run the gate under other CPU models with qemu user-mode emulation.
if ! command -v qemu-x86_64 >/dev/null 2>&1; then
  echo "test: installing qemu-user"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user
fi
command -v qemu-x86_64 >/dev/null || { echo "test: qemu-x86_64 is required and could not be installed" >&2; exit 1; }
# The Prometheus alerting rules are checked and unit-tested with promtool (Debian package prometheus).
if ! command -v promtool >/dev/null 2>&1; then
  echo "test: installing prometheus (for promtool)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus
fi
command -v promtool >/dev/null || { echo "test: promtool is required and could not be installed" >&2; exit 1; }
# The dashboard test drives Debian's chromium headless over the DevTools protocol.
if ! [ -x /usr/bin/chromium ]; then
  echo "test: installing chromium"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
[ -x /usr/bin/chromium ] || { echo "test: /usr/bin/chromium is required and could not be installed" >&2; exit 1; }

# Test processes that load ONNX Runtime themselves (the engine's tests, the Python clients'
# servers) keep it from writing a device id under ~/.cache and sending usage events; the
# server binary sets this for itself.
export ORT_DISABLE_TELEMETRY=1

echo "test: cargo fmt --check"
cargo fmt --all --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "test: building the invariant binary for the black-box tests"
cargo build --bin invariant
echo "test: determinism gate on the shipped repository"
./target/debug/invariant gate
echo "test: cargo test"
cargo test --workspace
