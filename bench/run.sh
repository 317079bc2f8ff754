#!/usr/bin/env bash
# Runs the benchmarks: raw engine throughput per shipped model (batch 1 and 32) and served
# throughput/latency over HTTP at concurrency 1, 8, 32 with wrk, against /v2/health/live of
# the same server as the HTTP floor; the native kernels, the gate, routing, a 100 MB import, cache
# hits (L1 and Redis L2), dynamic batching, the feature store, HTTP JSON vs HTTP binary vs gRPC,
# the cost of corridor governance and the isolation harness (corridor B under load while
# corridor A is flooded, killed, frozen, cut off from Redis or failing), and what security costs
# (API keys on vs off, TLS vs plain text). Installs wrk, b3sum and h2load (nghttp2-client, the
# second gRPC load generator) when missing (redis-server too, for the L2 run). Extra arguments go to
# invariant-bench (see `cargo run --release -p invariant-bench -- --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if ! command -v wrk >/dev/null 2>&1 || ! command -v b3sum >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1 \
  || ! command -v h2load >/dev/null 2>&1; then
  echo "bench: installing wrk, b3sum, h2load and redis-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk b3sum nghttp2-client redis-server
fi
cargo build --release --bin invariant --bin invariant-bench
echo "bench: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores"
./target/release/invariant-bench --binary target/release/invariant "$@"
