"""Conformance with the real Feast SDK (feast from PyPI, in .venv-feast).

A Feast repository whose online store is `remote` (this server) and whose definitions mirror
the server's feature repository (features/accounts.toml) writes rows with
`write_to_online_store` and `push` (which Feast's remote store sends as
`POST /write-to-online-store`), reads them back with `get_online_features` by feature list
and by feature service, with `full_feature_names` both ways, several entities and missing
ones, and calls `POST /push` (by push source) the way Feast's HTTP clients do. Values and
statuses are asserted exactly.

Suites (FEAST_SUITE):
- `parquet`: write FEAST_PARQUET as pandas writes a Feast source (event_timestamp as
  timestamp[ns, tz=UTC], a `created` column) and exit.
- `sdk`: the round trips against FEAST_URL (FEAST_KEY: an API key sent as Feast's
  `kubernetes` auth token; empty: no auth), expecting the rows of the `parquet` suite too.
Prints "<n> checks, <m> failures".
"""

import datetime as dt
import json
import os
import sys
import tempfile

FAILURES = []
CHECKS = [0]


def check(ok, what):
    CHECKS[0] += 1
    if not ok:
        FAILURES.append(what)
        print(f"FAIL: {what}", flush=True)


FEATURES = [
    "account_age_days",
    "completed_orders",
    "dispute_rate",
    "avg_rating",
    "response_time_hours",
    "kyc_level",
    "cancellations_90d",
    "chargebacks_365d",
]

# Exact in FP32, so what goes in comes back bit for bit.
ROW_P1 = [420.0, 57.0, 0.5, 4.5, 3.5, 2.0, 1.0, 0.0]


def write_parquet(path):
    import pandas as pd

    now = pd.Timestamp.now(tz="UTC").floor("ms")
    df = pd.DataFrame(
        {
            "account_id": ["p1", "p2"],
            "event_timestamp": pd.to_datetime([now - pd.Timedelta(minutes=5), now - pd.Timedelta(minutes=3)], utc=True),
            "created": pd.to_datetime([now, now], utc=True),
            **{f: [ROW_P1[i], float(i)] for i, f in enumerate(FEATURES)},
        }
    )
    for f in FEATURES:
        df[f] = df[f].astype("float32")
    assert str(df["event_timestamp"].dtype) == "datetime64[ns, UTC]", df.dtypes
    df.to_parquet(path, index=False)
    with open(path + ".json", "w") as out:
        json.dump({"p1_event_ms": int(df["event_timestamp"][0].value // 1_000_000)}, out)
    print("wrote", path, "0 checks, 0 failures")


def repo(url, key):
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, PushSource
    from feast.types import Float32, String
    from feast.value_type import ValueType

    root = tempfile.mkdtemp(prefix="feast-conformance-")
    # With a key, Feast's `kubernetes` auth sends it as `Authorization: Bearer` (from
    # LOCAL_K8S_TOKEN outside a cluster).
    auth = "kubernetes" if key else "no_auth"
    with open(os.path.join(root, "feature_store.yaml"), "w") as f:
        f.write(
            f"project: invariant\nregistry: {root}/registry.db\nprovider: local\n"
            f"online_store:\n  type: remote\n  path: {url}\n"
            f"auth:\n  type: {auth}\n"
            "entity_key_serialization_version: 3\n"
        )
    if key:
        os.environ["LOCAL_K8S_TOKEN"] = key
    parquet = os.path.join(root, "source.parquet")
    write_parquet(parquet)
    account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.STRING)
    source = FileSource(path=parquet, timestamp_field="event_timestamp", created_timestamp_column="created")
    push_source = PushSource(name="account_stats_push", batch_source=source)
    view = FeatureView(
        name="account_stats",
        entities=[account],
        ttl=dt.timedelta(days=1),
        schema=[Field(name="account_id", dtype=String)] + [Field(name=n, dtype=Float32) for n in FEATURES],
        source=push_source,
        online=True,
    )
    service = FeatureService(name="trust_scorer_v1", features=[view])
    store = FeatureStore(repo_path=root)
    store.apply([account, view, service])
    return store


def sdk(url, key):
    import pandas as pd
    import requests

    store = repo(url, key)
    now = pd.Timestamp.now(tz="UTC").floor("s")

    # write_to_online_store: POST /write-to-online-store.
    rows = pd.DataFrame(
        {
            "account_id": ["w1", "w2"],
            "event_timestamp": [now - pd.Timedelta(minutes=2), now - pd.Timedelta(minutes=1)],
            "created": [now, now],
            **{f: [float(i) + 0.5, float(i) + 0.25] for i, f in enumerate(FEATURES)},
        }
    )
    store.write_to_online_store("account_stats", rows)

    # push (Feast's SDK writes a push through the same remote write).
    from feast.data_source import PushMode

    pushed = pd.DataFrame(
        {
            "account_id": ["s1"],
            "event_timestamp": [now - pd.Timedelta(seconds=30)],
            "created": [now],
            **{f: [100.0 + i] for i, f in enumerate(FEATURES)},
        }
    )
    store.push("account_stats_push", pushed, to=PushMode.ONLINE)

    # By feature list, several entities, one missing.
    refs = [f"account_stats:{f}" for f in FEATURES]
    got = store.get_online_features(
        features=refs, entity_rows=[{"account_id": a} for a in ["w1", "s1", "nobody", "w2"]]
    ).to_dict()
    check(got["account_id"] == ["w1", "s1", "nobody", "w2"], f"entity column {got.get('account_id')}")
    for i, f in enumerate(FEATURES):
        want = [float(i) + 0.5, 100.0 + i, None, float(i) + 0.25]
        check(got.get(f) == want, f"{f}: {got.get(f)} != {want}")

    # full_feature_names.
    full = store.get_online_features(features=refs[:2], entity_rows=[{"account_id": "w1"}], full_feature_names=True).to_dict()
    check(
        sorted(full) == ["account_id", "account_stats__account_age_days", "account_stats__completed_orders"],
        f"full names {sorted(full)}",
    )
    check(full.get("account_stats__completed_orders") == [1.5], f"full value {full}")

    # By feature service, with the rows the parquet suite materialized (ns timestamps).
    service = store.get_feature_service("trust_scorer_v1")
    by_service = store.get_online_features(features=service, entity_rows=[{"account_id": "p1"}, {"account_id": "p2"}]).to_dict()
    check([by_service.get(f, [None])[0] for f in FEATURES] == ROW_P1, f"parquet row p1 {by_service}")
    check(by_service.get("kyc_level") == [2.0, 5.0], f"parquet row p2 {by_service.get('kyc_level')}")

    # Statuses on the wire, and Feast's request fields (include_feature_view_version_metadata).
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {
        "features": refs[:1],
        "entities": {"account_id": ["w1", "nobody"]},
        "full_feature_names": False,
        "include_feature_view_version_metadata": True,
    }
    r = requests.post(f"{url}/get-online-features", json=body, headers=headers, timeout=10)
    check(r.status_code == 200, f"get-online-features {r.status_code} {r.text}")
    reply = r.json()
    check(reply["results"][1]["statuses"] == ["PRESENT", "NOT_FOUND"], f"statuses {reply['results'][1]}")
    check(reply["results"][1]["values"] == [0.5, None], f"NOT_FOUND is null {reply['results'][1]}")
    check(
        reply["metadata"].get("feature_view_metadata") == [{"name": "account_stats", "version": 1}],
        f"view metadata {reply['metadata']}",
    )
    with open(os.environ["FEAST_PARQUET"] + ".json") as f:
        p1_ms = json.load(f)["p1_event_ms"]
    r = requests.post(f"{url}/get-online-features", json={**body, "entities": {"account_id": ["p1"]}}, headers=headers, timeout=10)
    stamp = r.json()["results"][1]["event_timestamps"][0]
    expected = dt.datetime.fromtimestamp(p1_ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    check(stamp == expected, f"ns Parquet event time {stamp} != {expected}")

    # POST /push by push source, as Feast's HTTP clients send it.
    push_body = {
        "push_source_name": "account_stats_push",
        "df": {"account_id": ["h1"], "event_timestamp": [now.isoformat()], "created": [None], "completed_orders": [7.0]},
        "to": "online",
        "allow_registry_cache": True,
    }
    r = requests.post(f"{url}/push", json=push_body, headers=headers, timeout=10)
    check(r.status_code == 200, f"push {r.status_code} {r.text}")
    got = store.get_online_features(features=refs[1:2], entity_rows=[{"account_id": "h1"}]).to_dict()
    check(got.get("completed_orders") == [7.0], f"pushed value {got}")

    # Errors in Feast's shape, naming the field.
    r = requests.post(f"{url}/push", json={**push_body, "push_source_name": "nope"}, headers=headers, timeout=10)
    check(r.status_code == 400 and "push_source_name" in r.json().get("detail", ""), f"unknown push source {r.status_code} {r.text}")
    r = requests.post(f"{url}/push", json={**push_body, "to": "offline"}, headers=headers, timeout=10)
    check(r.status_code == 400 and "offline" in r.json().get("detail", ""), f"offline push {r.status_code} {r.text}")
    bad_time = {**push_body, "df": {**push_body["df"], "event_timestamp": [253402300800]}}
    r = requests.post(f"{url}/push", json=bad_time, headers=headers, timeout=10)
    check(r.status_code == 400 and "event_timestamp" in r.json().get("detail", ""), f"year 10000 {r.status_code} {r.text}")
    try:
        store.get_online_features(features=["account_stats:nope"], entity_rows=[{"account_id": "w1"}])
        check(False, "an unknown feature raised nothing")
    except Exception as e:  # noqa: BLE001 - any client error is what we look for
        check("nope" in str(e), f"unknown feature error {e}")
    r = requests.get(f"{url}/health", timeout=10)
    check(r.status_code == 200, f"health {r.status_code}")


def main():
    suite = os.environ["FEAST_SUITE"]
    if suite == "parquet":
        write_parquet(os.environ["FEAST_PARQUET"])
        return
    try:
        sdk(os.environ["FEAST_URL"], os.environ.get("FEAST_KEY", ""))
    except Exception as e:  # noqa: BLE001 - report, do not hide
        import traceback

        traceback.print_exc()
        FAILURES.append(f"exception: {e}")
    print(f"{CHECKS[0]} checks, {len(FAILURES)} failures")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
