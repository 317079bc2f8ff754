#!/usr/bin/env bash
# Fuzzes every input the server parses from the outside (V2 JSON bodies, binary tensor bodies,
# gRPC ModelInferRequest messages, manifests, golden vector files, feature definitions) with
# cargo-fuzz (libFuzzer, AddressSanitizer, nightly), SECONDS each (default 60):
#     bench/fuzz.sh [SECONDS] [TARGET...]
# Seeds come from the shipped files and fuzz/regressions/. Every crash, leak or timeout found
# is copied into fuzz/regressions/<target>/, where `cargo test -p invariant-server --test
# fuzz_regressions` (part of the test suite) replays it; the script exits 1 when any was found.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(v2_json binary_tensors grpc_request manifest golden_file feature_definitions)
fi

bash scripts/setup.sh
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

seed() { # target, files...
  local dir="fuzz/corpus/$1"
  shift
  mkdir -p "$dir"
  for f in "$@"; do
    [ -f "$f" ] && cp "$f" "$dir/seed-$(echo "$f" | tr '/' '_')"
  done
  cp fuzz/regressions/"$(basename "$dir")"/* "$dir/" 2>/dev/null || true
}
seed v2_json
printf '%s' '{"id":"a","inputs":[{"name":"features","shape":[1,8],"datatype":"FP32","data":[420,57,0.02,4.6,3.5,2,1,0]}],"outputs":[{"name":"trust_score"}],"parameters":{"corridor":"UAE-SA"}}' \
  > fuzz/corpus/v2_json/seed-trust
seed binary_tensors
seed grpc_request
seed manifest models/*/*/manifest.toml
seed golden_file golden-vectors/*/*.jsonl
seed feature_definitions features/*.toml

found=0
echo "fuzz: $(date -u +%Y-%m-%dT%H:%M:%SZ), ${seconds} s per target on $(nproc) cores"
for t in "${targets[@]}"; do
  echo "fuzz: $t"
  if ! (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1); then
    found=1
  fi
  if compgen -G "fuzz/artifacts/$t/*" >/dev/null; then
    mkdir -p "fuzz/regressions/$t"
    cp fuzz/artifacts/"$t"/* "fuzz/regressions/$t/"
    echo "fuzz: $t found inputs, kept in fuzz/regressions/$t/:" && ls "fuzz/artifacts/$t"
    found=1
  fi
done
exit "$found"
