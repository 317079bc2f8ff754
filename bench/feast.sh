#!/usr/bin/env bash
# Invariant's feature server vs Feast's (`feast serve`, 2 workers), same sitting, same Redis,
# same 10 000 users x 20 FP32 features, same load generator (wrk, keep-alive, POST
# /get-online-features for 1 and 10 entities at 1, 8 and 32 connections), and materialization
# of the same Parquet file (`feast materialize` vs `invariant features materialize`).
# Also the embedded store (redb) against the server's own health-check floor.
#
#   bash bench/feast.sh [SECONDS_PER_RUN]
#
# Needs: a release build (cargo build --release --bin invariant), redis-server, wrk, h2load, and
# .venv-feast (scripts/setup-python.sh); feast's Redis extra is installed here if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-5}
BIN=${BIN:-target/release/invariant}
PY=.venv-feast/bin/python
[ -x "$BIN" ] || { echo "feast.sh: build $BIN first (cargo build --release --bin invariant)" >&2; exit 1; }
[ -x "$PY" ] || { echo "feast.sh: run scripts/setup-python.sh first" >&2; exit 1; }
command -v wrk >/dev/null || { echo "feast.sh: wrk is required (apt-get install wrk)" >&2; exit 1; }
command -v h2load >/dev/null || { echo "feast.sh: h2load is required (apt-get install nghttp2-client)" >&2; exit 1; }
"$PY" -c "import redis" 2>/dev/null || "$PY" -m pip install --quiet --disable-pip-version-check "feast[redis]==0.67.0"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/invariant-feast-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
PIDS+=($!)
sleep 0.5

# The data: 10 000 users x 20 FP32 features, as a Feast Parquet source.
"$PY" - "$WORK" <<'EOF'
import sys, numpy as np, pandas as pd
work = sys.argv[1]
n = 10_000
now = pd.Timestamp.now(tz="UTC").floor("s")
df = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)],
                   "event_timestamp": [now - pd.Timedelta(minutes=1)] * n,
                   "created": [now] * n})
for f in range(20):
    df[f"f{f:02d}"] = ((np.arange(n) * 7 + f) % 1000).astype("float32")
df.to_parquet(f"{work}/users.parquet", index=False)
feats = ",\n".join(f'  {{ name = "f{f:02d}", datatype = "FP32" }}' for f in range(20))
open(f"{work}/users.toml", "w").write(
    '[[entities]]\nname = "user"\njoin_key = "user_id"\nkey_type = "STRING"\n\n'
    '[[feature_views]]\nname = "user_stats"\nentity = "user"\nttl_seconds = 0\nfeatures = [\n' + feats + "\n]\n")
EOF

# Feast: a repository on the same Redis.
mkdir -p "$WORK/feast"
cat > "$WORK/feast/feature_store.yaml" <<EOF
project: bench
registry: $WORK/feast/registry.db
provider: local
online_store:
  type: redis
  connection_string: "127.0.0.1:$REDIS_PORT"
entity_key_serialization_version: 3
EOF
cat > "$WORK/feast/repo.py" <<EOF
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float32, String
from feast.value_type import ValueType
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
source = FileSource(path="$WORK/users.parquet", timestamp_field="event_timestamp", created_timestamp_column="created")
user_stats = FeatureView(name="user_stats", entities=[user], ttl=timedelta(days=1),
    schema=[Field(name="user_id", dtype=String)] + [Field(name=f"f{i:02d}", dtype=Float32) for i in range(20)],
    source=source, online=True)
EOF
FEAST="$(pwd)/.venv-feast/bin/feast"
( cd "$WORK/feast" && "$FEAST" apply >/dev/null 2>&1 )
START=$(date +%s.%N)
( cd "$WORK/feast" && "$FEAST" materialize-incremental "$(date -u +%Y-%m-%dT%H:%M:%S)" >/dev/null 2>&1 )
FEAST_MAT=$(python3 -c "print(f'{$(date +%s.%N) - $START:.2f}')")

# Invariant: the same rows, the same Redis.
cat > "$WORK/invariant.toml" <<EOF
model_repository = "$(pwd)/models"
golden_vectors = "$(pwd)/golden-vectors"
state_dir = "$WORK/state"
feature_repository = "$WORK/features"
feature_backend = "redis"
feature_redis_url = "redis://127.0.0.1:$REDIS_PORT/"
engine_instances = 1
[server]
http_addr = "127.0.0.1:0"
max_body_bytes = 1048576
default_corridor = "UAE-SA"
[governance.corridor_rate]
0 = 100000000
[audit]
inference = false
[[corridors]]
id = "UAE-SA"
market = 0
region = "gcc"
EOF
mkdir -p "$WORK/features" && cp "$WORK/users.toml" "$WORK/features/"
START=$(date +%s.%N)
INVARIANT_LOG=warn "$BIN" features materialize --config "$WORK/invariant.toml" --from "$WORK/users.parquet" \
  --view user_stats --corridor UAE-SA --batch 5000 --json > "$WORK/mat.json"
INV_MAT=$(python3 -c "print(f'{$(date +%s.%N) - $START:.2f}')")

FEAST_PORT=$(free_port)
( cd "$WORK/feast" && exec "$FEAST" serve -h 127.0.0.1 -p "$FEAST_PORT" -w 2 --no-access-log >/dev/null 2>&1 ) &
PIDS+=($!)
INV_PORT=$(free_port)
INVARIANT_LOG=warn "$BIN" serve --config "$WORK/invariant.toml" --dev-no-auth --http-addr "127.0.0.1:$INV_PORT" --grpc-addr "" >/dev/null 2>&1 &
PIDS+=($!)
for port in "$FEAST_PORT" "$INV_PORT"; do
  for _ in $(seq 1 120); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.5
  done
done

# Embedded store: the same rows in a redb file, served by a second server.
sed -e 's/^feature_backend = "redis"/feature_backend = "embedded"/' -e "s#^state_dir = .*#state_dir = \"$WORK/state-embedded\"#" \
  "$WORK/invariant.toml" > "$WORK/embedded.toml"
INVARIANT_LOG=warn "$BIN" features materialize --config "$WORK/embedded.toml" --from "$WORK/users.parquet" \
  --view user_stats --corridor UAE-SA --json > /dev/null
EMB_PORT=$(free_port)
INVARIANT_LOG=warn "$BIN" serve --config "$WORK/embedded.toml" --dev-no-auth --http-addr "127.0.0.1:$EMB_PORT" --grpc-addr "" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do curl -sf -o /dev/null "http://127.0.0.1:$EMB_PORT/health" && break; sleep 0.5; done

script() { # entities -> lua file
  local n=$1 keys=""
  for i in $(seq 0 $((n - 1))); do keys="$keys\"u$((i * 997 % 10000))\","; done
  local feats=""
  for f in $(seq 0 19); do feats="$feats\"user_stats:f$(printf %02d "$f")\","; done
  local file="$WORK/get-$n.lua"
  printf '{"features": [%s], "entities": {"user_id": [%s]}}' "${feats%,}" "${keys%,}" > "$WORK/get-$n.json"
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{"features": [%s], "entities": {"user_id": [%s]}}]]\n' \
    "${feats%,}" "${keys%,}" > "$file"
  echo "$file"
}
measure() { # url lua conc -> "rps p99ms"
  local threads=$(( $3 < 2 ? $3 : 2 ))
  wrk -t"$threads" -c"$3" -d"${RUN}s" --latency ${2:+-s "$2"} "$1" | python3 -c '
import re, sys
t = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
print(f"{rps:.0f} {p99:.2f}")'
}

paced() { # url body-file-or-empty conc total-rps -> "achieved-rps p50ms p99ms" (open loop, h2load over HTTP/1.1)
  local log="$WORK/paced.log" per=$(( ($4 + $3 - 1) / $3 ))
  rm -f "$log"
  h2load --h1 -D "$RUN" -c "$3" -t 2 --rps="$per" ${2:+-d "$2" -H 'content-type: application/json'} \
    --log-file="$log" "$1" > /dev/null
  python3 - "$log" "$RUN" <<'PY'
import sys
lat, bad = [], 0
for line in open(sys.argv[1]):
    cols = line.split("\t")
    if len(cols) >= 3:
        bad += cols[1] != "200"
        lat.append(int(cols[2]))
assert lat and not bad, f"{bad} answers were not 200"
lat.sort()
at = lambda q: lat[int((len(lat) - 1) * q)] / 1000
print(f"{len(lat) / float(sys.argv[2]):.0f} {at(0.50):.2f} {at(0.99):.2f}")
PY
}

# A sanity check: both answer the same values.
"$PY" - "$FEAST_PORT" "$INV_PORT" <<'EOF'
import json, sys, urllib.request
body = json.dumps({"features": ["user_stats:f03", "user_stats:f19"], "entities": {"user_id": ["u0", "u9999", "nobody"]}}).encode()
got = []
for port in sys.argv[1:]:
    r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/get-online-features", data=body,
                               headers={"Content-Type": "application/json"}))
    reply = json.load(r)
    names = reply["metadata"]["feature_names"]
    got.append({n: c["values"] for n, c in zip(names, reply["results"]) if n != "user_id"})
# (Feast does not always answer in the requested order: compare by name.)
assert got[0] == got[1], got
print("same values from both:", got[1])
EOF

echo
echo "# $(date -u +%Y-%m-%d) bash bench/feast.sh $RUN   (wrk ${RUN}s per run, keep-alive; 10 000 users x 20 FP32 features)"
echo "materialize 10 000 rows: feast materialize-incremental ${FEAST_MAT} s, invariant features materialize ${INV_MAT} s"
printf "%-9s %4s %12s %10s %12s %10s %8s\n" entities conc "feast req/s" "feast p99" "inv req/s" "inv p99" "inv/feast"
for n in 1 10; do
  lua=$(script "$n")
  for c in 1 8 32; do
    read -r frps fp99 <<< "$(measure "http://127.0.0.1:$FEAST_PORT/get-online-features" "$lua" "$c")"
    read -r irps ip99 <<< "$(measure "http://127.0.0.1:$INV_PORT/get-online-features" "$lua" "$c")"
    [ "$n.$c" = "1.8" ] && FEAST_1_8=$frps
    printf "%-9s %4s %12s %10s %12s %10s %8s\n" "$n" "$c" "$frps" "${fp99}ms" "$irps" "${ip99}ms" \
      "$(python3 -c "print(f'{$irps / $frps:.1f}x')")"
  done
done
echo
echo "# Redis reads at 20x Feast's throughput (1 entity, c=8 above), paced: h2load --h1 -c 8 --rps, open loop"
echo "# (wrk keeps every connection busy, so its p99 above is queueing on 2 shared cores; here requests arrive"
echo "#  at a fixed rate and the latency is the server's). The health-check floor at the same rate for scale."
printf "%-30s %12s %12s %8s %8s\n" what "offered/s" "achieved/s" "p50 ms" "p99 ms"
RATE=$(python3 -c "print(int(20 * $FEAST_1_8))")
read -r a p50 p99 <<< "$(paced "http://127.0.0.1:$INV_PORT/get-online-features" "$WORK/get-1.json" 8 "$RATE")"
printf "%-30s %12s %12s %8s %8s\n" "invariant get-online (Redis)" "$RATE" "$a" "$p50" "$p99"
read -r a p50 p99 <<< "$(paced "http://127.0.0.1:$INV_PORT/v2/health/live" "" 8 "$RATE")"
printf "%-30s %12s %12s %8s %8s\n" "invariant /v2/health/live" "$RATE" "$a" "$p50" "$p99"

echo
echo "# embedded store (redb) vs the same server's GET /v2/health/live floor, 1 entity"
printf "%4s %12s %12s %8s\n" conc "floor req/s" "read req/s" "read/floor"
lua=$(script 1)
for c in 1 8 32; do
  read -r hrps _ <<< "$(measure "http://127.0.0.1:$EMB_PORT/v2/health/live" "" "$c")"
  read -r rrps _ <<< "$(measure "http://127.0.0.1:$EMB_PORT/get-online-features" "$lua" "$c")"
  printf "%4s %12s %12s %8s\n" "$c" "$hrps" "$rrps" "$(python3 -c "print(f'{$rrps / $hrps:.2f}')")"
done
