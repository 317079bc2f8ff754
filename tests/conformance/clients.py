"""Conformance of a running Invariant server with the real clients Triton and KServe users
already have: tritonclient (HTTP with binary tensors by default, HTTP JSON, gRPC, async) and
KServe's InferenceRESTClient / InferenceGRPCClient.

Run by tests/tests/conformance.rs against a server it starts, once per suite:
    CONFORMANCE_HTTP=127.0.0.1:PORT CONFORMANCE_GRPC=127.0.0.1:PORT CONFORMANCE_GOLDEN=DIR \
    CONFORMANCE_SUITE=triton|kserve|triton-auth python clients.py
(triton-auth also needs CONFORMANCE_KEYS: JSON with the keys `uae`, `admin` and `revoked`;
triton-tls needs CONFORMANCE_TLS: JSON with `ca`, and `cert`, `key`, `mtls` for client
certificates.)

For every golden vector of every shipped model version, every transport must return the
recorded output bits exactly. Exits non-zero (with every failure listed) on any mismatch.
"""

import argparse
import asyncio
import glob
import json
import os
import sys

import numpy as np

# tritonclient.grpc and kserve both register the `inference` protobuf package in the default
# descriptor pool, so one process can import only one of them: --suite picks which.
# kserve parses the command line when imported, so the arguments come from the environment.
SUITE = os.environ.get("CONFORMANCE_SUITE", "triton")
if SUITE in ("triton", "triton-auth", "triton-tls"):
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpcaio
    import tritonclient.http as httpclient
    import tritonclient.http.aio as httpaio
    from tritonclient.utils import InferenceServerException
else:
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

NP = {
    "BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP32": np.float32, "FP64": np.float64,
}
BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

failures = []
checks = 0


def check(ok, what):
    global checks
    checks += 1
    if not ok:
        failures.append(what)
        print("FAIL:", what, flush=True)


def bits_of(array):
    a = np.ascontiguousarray(array)
    return [int(x) for x in a.view(BITS[a.dtype.itemsize]).reshape(-1)]


def expected_bits(output):
    return [int(b, 16) for b in output["bits"]]


def array_of(tensor):
    # Parsed from the golden file's text straight to the datatype (strings via float32 keep
    # the shortest round-trip value exact).
    dtype = NP[tensor["datatype"]]
    return np.array(tensor["data"], dtype=dtype).reshape(tensor["shape"])


def goldens(golden_dir):
    for path in sorted(glob.glob(os.path.join(golden_dir, "*", "*.jsonl"))):
        with open(path) as f:
            header = json.loads(f.readline())
            vectors = [json.loads(line) for line in f if line.strip()]
        yield header["model"], header["version"], vectors


def triton_inputs(module, vector, binary):
    inputs = []
    for t in vector["inputs"]:
        i = module.InferInput(t["name"], t["shape"], t["datatype"])
        if binary is None:
            i.set_data_from_numpy(array_of(t))
        else:
            i.set_data_from_numpy(array_of(t), binary_data=binary)
        inputs.append(i)
    return inputs


def compare(result_numpy, vector, label):
    for o in vector["outputs"]:
        got = result_numpy(o["name"])
        check(got is not None, f"{label}: output {o['name']} missing")
        if got is None:
            continue
        check(list(got.shape) == o["shape"], f"{label}: {o['name']} shape {list(got.shape)} != {o['shape']}")
        check(bits_of(got) == expected_bits(o), f"{label}: {o['name']} bits differ from the golden vector")


def golden_sweep(http, grpc_, golden_dir):
    """Every golden vector over HTTP binary (the default), HTTP JSON and gRPC."""
    for model, version, vectors in goldens(golden_dir):
        for v in vectors:
            label = f"{model} {version} {v['id']}"
            r = http.infer(model, triton_inputs(httpclient, v, None), model_version=version)
            compare(r.as_numpy, v, label + " [http binary]")
            outs = [httpclient.InferRequestedOutput(o["name"], binary_data=False) for o in v["outputs"]]
            r = http.infer(model, triton_inputs(httpclient, v, False), model_version=version, outputs=outs)
            compare(r.as_numpy, v, label + " [http json]")
            check(all("data" in o for o in r.get_response()["outputs"]), f"{label}: JSON outputs asked, binary sent")
            r = grpc_.infer(model, triton_inputs(grpcclient, v, None), model_version=version)
            compare(r.as_numpy, v, label + " [grpc]")
        print(f"ok: {model} {version}: {len(vectors)} golden vectors bit-exact over HTTP binary, HTTP JSON, gRPC", flush=True)


def metadata_and_errors(http, grpc_, golden_dir):
    check(http.is_server_live() and http.is_server_ready(), "http: server live and ready")
    check(grpc_.is_server_live() and grpc_.is_server_ready(), "grpc: server live and ready")
    meta = http.get_server_metadata()
    check("binary_tensor_data" in meta["extensions"], f"http: binary_tensor_data advertised: {meta}")
    gmeta = grpc_.get_server_metadata(as_json=True)
    check(gmeta["extensions"] == meta["extensions"], "grpc and http advertise the same extensions")
    index = grpc_.get_model_repository_index(as_json=True)
    names = {(m["name"], m["version"]) for m in index.get("models", [])}
    for model, version, vectors in goldens(golden_dir):
        check((model, version) in names, f"grpc repository index lists {model} {version}")
        check(http.is_model_ready(model, version), f"http: {model} {version} ready")
        check(grpc_.is_model_ready(model, version), f"grpc: {model} {version} ready")
        hm = http.get_model_metadata(model, version)
        gm = grpc_.get_model_metadata(model, version, as_json=True)
        check(hm["name"] == gm["name"] == model, f"{model}: metadata names")
        check([i["name"] for i in hm["inputs"]] == [i["name"] for i in gm["inputs"]], f"{model} {version}: inputs agree")
        check(version in gm["versions"], f"{model}: grpc metadata lists {version}")
        hc = http.get_model_config(model, version)
        gc = grpc_.get_model_config(model, version, as_json=True)["config"]
        check(hc["name"] == gc["name"] == model, f"{model} {version}: config names")
        check(len(gc["input"]) == len(hm["inputs"]), f"{model} {version}: config inputs")
        v = vectors[0]
        # Request id echo and output selection.
        first = v["outputs"][0]["name"]
        r = http.infer(model, triton_inputs(httpclient, v, None), model_version=version, request_id="req-42",
                       outputs=[httpclient.InferRequestedOutput(first)])
        check(r.get_response()["id"] == "req-42", f"{model}: http request id echoed")
        check([o["name"] for o in r.get_response()["outputs"]] == [first], f"{model}: http output selection")
        r = grpc_.infer(model, triton_inputs(grpcclient, v, None), model_version=version, request_id="req-43",
                        outputs=[grpcclient.InferRequestedOutput(first)])
        check(r.get_response().id == "req-43", f"{model}: grpc request id echoed")
        check([o.name for o in r.get_response().outputs] == [first], f"{model}: grpc output selection")
        # Statistics count what was served.
        hs = http.get_inference_statistics(model, version)["model_stats"][0]
        gs = grpc_.get_inference_statistics(model, version, as_json=True)["model_stats"][0]
        check(int(hs["inference_stats"]["success"]["count"]) > 0, f"{model} {version}: http stats count successes")
        check(int(gs["inference_stats"]["success"]["count"]) >= int(hs["inference_stats"]["success"]["count"]),
              f"{model} {version}: grpc stats agree")

    model, version, vectors = next(goldens(golden_dir))
    v = vectors[0]
    cases = [
        ("unknown model", "no-such-model", None, v, "unknown model 'no-such-model'", "404", "NOT_FOUND"),
        ("unknown version", model, "9.9.9", v, "has no version '9.9.9'", "404", "NOT_FOUND"),
    ]
    wrong_shape = json.loads(json.dumps(v))
    t = wrong_shape["inputs"][0]
    t["shape"] = [1, t["shape"][1] + 1]
    t["data"] = t["data"] + [0.0]
    cases.append(("wrong shape", model, version, wrong_shape, t["name"], "400", "INVALID_ARG"))
    for what, m, ver, vec, fragment, http_code, grpc_code in cases:
        try:
            http.infer(m, triton_inputs(httpclient, vec, None), model_version=ver or "")
            check(False, f"http {what}: no exception")
        except InferenceServerException as e:
            check(fragment in e.message(), f"http {what}: message {e.message()!r} names {fragment!r}")
            check(e.status() == http_code, f"http {what}: status {e.status()} == {http_code}")
        try:
            grpc_.infer(m, triton_inputs(grpcclient, vec, None), model_version=ver or "")
            check(False, f"grpc {what}: no exception")
        except InferenceServerException as e:
            check(fragment in e.message(), f"grpc {what}: message {e.message()!r} names {fragment!r}")
            check(grpc_code in str(e.status()), f"grpc {what}: status {e.status()} is {grpc_code}")
    # Wrong datatype: FP64 where FP32 is declared.
    bad = [httpclient.InferInput(t["name"], v["inputs"][0]["shape"], "FP64")]
    bad[0].set_data_from_numpy(array_of(v["inputs"][0]).astype(np.float64))
    try:
        http.infer(model, bad, model_version=version)
        check(False, "http wrong datatype: no exception")
    except InferenceServerException as e:
        check("FP64" in e.message() and e.status() == "400", f"http wrong datatype: {e.message()!r}")
    badg = [grpcclient.InferInput(t["name"], v["inputs"][0]["shape"], "FP64")]
    badg[0].set_data_from_numpy(array_of(v["inputs"][0]).astype(np.float64))
    try:
        grpc_.infer(model, badg, model_version=version)
        check(False, "grpc wrong datatype: no exception")
    except InferenceServerException as e:
        check("FP64" in e.message() and "INVALID_ARG" in str(e.status()), f"grpc wrong datatype: {e.message()!r}")
    # gzip and deflate request bodies.
    for algorithm in ["gzip", "deflate"]:
        r = http.infer(model, triton_inputs(httpclient, v, None), model_version=version,
                       request_compression_algorithm=algorithm)
        compare(r.as_numpy, v, f"{model} {version} [http {algorithm}]")
    # The server still serves after the errors.
    r = grpc_.infer(model, triton_inputs(grpcclient, v, None), model_version=version)
    compare(r.as_numpy, v, "after errors [grpc]")
    print("ok: metadata, readiness, config, statistics, ids, output selection, errors, compression", flush=True)


def async_clients(http_url, grpc_url, golden_dir):
    model, version, vectors = next(goldens(golden_dir))
    v = vectors[1]
    http = httpclient.InferenceServerClient(http_url, concurrency=4)
    pending = [http.async_infer(model, triton_inputs(httpclient, v, None), model_version=version) for _ in range(8)]
    for p in pending:
        compare(p.get_result().as_numpy, v, "tritonclient.http async_infer")
    http.close()
    done = []
    g = grpcclient.InferenceServerClient(grpc_url)
    for _ in range(8):
        g.async_infer(model, triton_inputs(grpcclient, v, None), lambda result, error: done.append((result, error)), model_version=version)
    for _ in range(200):
        if len(done) == 8:
            break
        import time
        time.sleep(0.05)
    check(len(done) == 8, f"tritonclient.grpc async_infer: {len(done)} of 8 callbacks")
    for r, e in done:
        check(e is None, f"grpc async error {e}")
        if r is not None:
            compare(r.as_numpy, v, "tritonclient.grpc async_infer")
    # The gRPC stream.
    results = []
    g.start_stream(callback=lambda result, error: results.append((result, error)))
    for _ in range(4):
        g.async_stream_infer(model, triton_inputs(grpcclient, v, None), model_version=version)
    g.stop_stream()
    check(len(results) == 4 and all(e is None for _, e in results), f"grpc stream: {results}")
    for r, _ in results:
        compare(r.as_numpy, v, "tritonclient.grpc stream")
    g.close()

    async def aio():
        h = httpaio.InferenceServerClient(http_url)
        r = await h.infer(model, triton_inputs(httpaio, v, None), model_version=version)
        compare(r.as_numpy, v, "tritonclient.http.aio")
        await h.close()
        ga = grpcaio.InferenceServerClient(grpc_url)
        r = await ga.infer(model, triton_inputs(grpcaio, v, None), model_version=version)
        compare(r.as_numpy, v, "tritonclient.grpc.aio")
        await ga.close()

    asyncio.run(aio())
    print("ok: async clients (http, grpc callbacks, grpc stream, aio)", flush=True)


def kserve_clients(http_url, grpc_url, golden_dir):
    async def run():
        rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        base = f"http://{http_url}"
        check(await rest.is_server_live(base), "kserve REST is_server_live")
        check(await rest.is_server_ready(base), "kserve REST is_server_ready")
        grpc_ = InferenceGRPCClient(grpc_url, timeout=30)
        check(await grpc_.is_server_live(), "kserve gRPC is_server_live")
        check(await grpc_.is_server_ready(), "kserve gRPC is_server_ready")
        for model, version, vectors in goldens(golden_dir):
            check(await rest.is_model_ready(base, model), f"kserve REST is_model_ready {model}")
            check(await grpc_.is_model_ready(model), f"kserve gRPC is_model_ready {model}")
            for v in vectors[:5]:
                inputs = []
                for t in v["inputs"]:
                    i = InferInput(t["name"], t["shape"], t["datatype"])
                    i.set_data_from_numpy(array_of(t), binary_data=False)
                    inputs.append(i)
                # REST: the active version (the URL names no version) — compared with gRPC below.
                rr = await rest.infer(base, InferRequest(model_name=model, infer_inputs=inputs), model_name=model)
                greq = InferRequest(model_name=model, infer_inputs=inputs, model_version=version)
                gr = await grpc_.infer(greq)
                for o in v["outputs"]:
                    got = [x for x in gr.outputs if x.name == o["name"]][0].as_numpy()
                    check(bits_of(got) == expected_bits(o), f"kserve gRPC {model} {version} {v['id']} {o['name']}")
                    rest_out = [x for x in rr.outputs if x.name == o["name"]][0].as_numpy()
                    check(rest_out is not None and rest_out.size == got.size, f"kserve REST {model} {v['id']} {o['name']}")
            active = (await rest.infer(base, InferRequest(model_name=model, infer_inputs=inputs), model_name=model))
            check(active.model_name == model, f"kserve REST answer names {model}")
        await rest.close()
        await grpc_.close()

    asyncio.run(run())
    print("ok: kserve REST and gRPC clients", flush=True)


def parity(http, grpc_, http_url):
    """One table: corridors, cache hits, batching and feature enrichment give the same bits
    over gRPC as over HTTP (JSON and binary)."""
    import urllib.request

    row = [420.0, 57.0, 0.02, 4.6, 3.5, 2.0, 1.0, 0.0]
    other = [30.0, 2.0, 0.1, 3.9, 12.0, 1.0, 4.0, 1.0]
    names = ["account_age_days", "completed_orders", "dispute_rate", "avg_rating", "response_time_hours",
             "kyc_level", "cancellations_90d", "chargebacks_365d"]
    for key, values in [("p1", row), ("p2", other)]:
        df = {"account_id": [key], "event_timestamp": [int(__import__("time").time()) - 5]}
        df.update({n: [v] for n, v in zip(names, values)})
        body = json.dumps({"feature_view": "account_stats", "df": df}).encode()
        req = urllib.request.Request(f"http://{http_url}/v1/features/push", data=body, method="POST",
                                     headers={"x-corridor": "UK-NG", "content-type": "application/json"})
        check(urllib.request.urlopen(req).status == 200, "feature push for the parity table")

    def tensor(module, rows, binary):
        i = module.InferInput("features", [len(rows), 8], "FP32")
        arr = np.array(rows, dtype=np.float32)
        if binary is None:
            i.set_data_from_numpy(arr)
        else:
            i.set_data_from_numpy(arr, binary_data=binary)
        return [i]

    cases = [
        # (label, rows, headers, parameters, entities)
        ("corridor header", [row], {"x-corridor": "UK-NG"}, {}, None),
        ("corridor parameter", [row], {}, {"corridor": "US-EG"}, None),
        ("batch of three", [row, other, row], {"x-corridor": "UAE-SA"}, {}, None),
        ("routing key", [other], {"x-corridor": "UK-NG", "x-routing-key": "user-7"}, {}, None),
        ("enriched", [], {"x-corridor": "UK-NG"}, {}, {"account_id": ["p1", "p2"]}),
    ]
    for label, rows, headers, params, entities in cases:
        direct_rows = rows if entities is None else [row, other]
        seen = {}
        for transport in ["http json", "http binary", "grpc"]:
            for attempt in ["first", "repeat"]:
                p_http = dict(params)
                p_grpc = dict(params)
                if entities is not None:
                    p_http["entities"] = entities
                    p_grpc["entities"] = json.dumps(entities)
                if transport == "grpc":
                    inputs = tensor(grpcclient, rows, None) if rows else []
                    r = grpc_.infer("trust-scorer", inputs, model_version="1.2.0", headers=dict(headers),
                                    parameters=p_grpc or None)
                    cached = r.get_response().parameters["cached"].bool_param
                else:
                    binary = transport == "http binary"
                    inputs = tensor(httpclient, rows, binary) if rows else []
                    outs = [httpclient.InferRequestedOutput("trust_score", binary_data=binary)]
                    r = http.infer("trust-scorer", inputs, model_version="1.2.0", headers=dict(headers),
                                   parameters=p_http or None, outputs=outs)
                    cached = r.get_response()["parameters"]["cached"]
                seen[(transport, attempt)] = bits_of(r.as_numpy("trust_score"))
                if attempt == "repeat" and entities is None:
                    check(cached, f"parity {label}: the {transport} repeat is a cache hit")
        alone = []
        for rr in direct_rows:
            r = http.infer("trust-scorer", tensor(httpclient, [rr], False), model_version="1.2.0",
                           headers={"x-corridor": "UAE-SA"})
            alone.extend(bits_of(r.as_numpy("trust_score")))
        values = list(seen.values())
        check(all(v == values[0] for v in values), f"parity {label}: {seen}")
        check(values[0] == alone, f"parity {label}: equals each row scored alone ({values[0]} vs {alone})")
    # Entity keys as a BYTES tensor named after the join key: plain tritonclient requests of a
    # feature-enriched model, no parameters.
    want = []
    for rr in [row, other]:
        r = http.infer("trust-scorer", tensor(httpclient, [rr], False), model_version="1.2.0",
                       headers={"x-corridor": "UAE-SA"})
        want.extend(bits_of(r.as_numpy("trust_score")))
    keys = np.array([b"p1", b"p2"], dtype=np.object_)
    for transport in ["http json", "http binary", "grpc"]:
        module = grpcclient if transport == "grpc" else httpclient
        i = module.InferInput("account_id", [2], "BYTES")
        if transport == "grpc":
            i.set_data_from_numpy(keys)
            r = grpc_.infer("trust-scorer", [i], model_version="1.2.0", headers={"x-corridor": "UK-NG"})
        else:
            i.set_data_from_numpy(keys, binary_data=transport == "http binary")
            r = http.infer("trust-scorer", [i], model_version="1.2.0", headers={"x-corridor": "UK-NG"})
        check(bits_of(r.as_numpy("trust_score")) == want, f"entity keys tensor over {transport}: {bits_of(r.as_numpy('trust_score'))} vs {want}")
    print("ok: parity table (corridors, cache hits, batching, routing key, enrichment, entity-key tensors) over HTTP JSON, HTTP binary, gRPC", flush=True)


def refused(call, status, fragment, label):
    """`call` raises the client's exception with `status` and a message containing `fragment`."""
    try:
        call()
    except InferenceServerException as e:
        check(str(e.status()) == status and fragment in e.message(),
              f"{label}: expected {status} '{fragment}', got {e.status()} '{e.message()}'")
        return
    check(False, f"{label}: expected {status}, the call succeeded")


def with_keys(http, grpc_, golden_dir, keys):
    """API keys through the real clients: `headers` on every tritonclient call (HTTP headers,
    gRPC metadata). A key of UAE-SA serves there bit-exact and is refused in UK-NG; missing,
    unknown and revoked keys are refused; health checks need no key. (tritonclient's HTTP
    client adds its own entries to the dict it is given: each call gets a copy.)"""
    uae = {"authorization": f"Bearer {keys['uae']}", "x-corridor": "UAE-SA"}
    other = {"authorization": f"Bearer {keys['uae']}", "x-corridor": "UK-NG"}
    admin = {"authorization": f"Bearer {keys['admin']}"}
    revoked = {"authorization": f"Bearer {keys['revoked']}"}
    unknown = {"authorization": "Bearer inv_0123456789abcdef_" + "0" * 64}
    check(http.is_server_live() and http.is_server_ready(), "http: health needs no key")
    check(grpc_.is_server_live() and grpc_.is_server_ready(), "grpc: health needs no key")
    for model, version, vectors in goldens(golden_dir):
        for v in vectors[:3]:
            label = f"{model} {version} {v['id']}"
            r = http.infer(model, triton_inputs(httpclient, v, None), model_version=version, headers=dict(uae))
            compare(r.as_numpy, v, label + " [http binary, key]")
            r = grpc_.infer(model, triton_inputs(grpcclient, v, None), model_version=version, headers=dict(uae))
            compare(r.as_numpy, v, label + " [grpc, key]")
        v = vectors[0]
        for name, headers, status_h, status_g, fragment in [
            ("no key", {}, "401", "StatusCode.UNAUTHENTICATED", "missing API key"),
            ("unknown key", unknown, "401", "StatusCode.UNAUTHENTICATED", "unknown API key"),
            ("revoked key", revoked, "401", "StatusCode.UNAUTHENTICATED", "revoked"),
            ("other corridor", other, "403", "StatusCode.PERMISSION_DENIED", "UK-NG"),
        ]:
            refused(lambda: http.infer(model, triton_inputs(httpclient, v, None), model_version=version, headers=dict(headers)),
                    status_h, fragment, f"{model} {version}: http infer, {name}")
            refused(lambda: grpc_.infer(model, triton_inputs(grpcclient, v, None), model_version=version, headers=dict(headers)),
                    status_g, fragment, f"{model} {version}: grpc infer, {name}")
            if name != "other corridor":
                refused(lambda: http.get_model_metadata(model, version, headers=dict(headers)), status_h, fragment,
                        f"{model}: http metadata, {name}")
                refused(lambda: grpc_.get_model_metadata(model, version, headers=dict(headers)), status_g, fragment,
                        f"{model}: grpc metadata, {name}")
                refused(lambda: grpc_.get_model_config(model, version, headers=dict(headers)), status_g, fragment,
                        f"{model}: grpc config, {name}")
                refused(lambda: grpc_.get_inference_statistics(model, version, headers=dict(headers)), status_g,
                        fragment, f"{model}: grpc statistics, {name}")
                refused(lambda: grpc_.is_model_ready(model, version, headers=dict(headers)), status_g, fragment,
                        f"{model}: grpc ready, {name}")
                refused(lambda: grpc_.get_server_metadata(headers=dict(headers)), status_g, fragment,
                        f"grpc server metadata, {name}")
                refused(lambda: http.get_inference_statistics(model, version, headers=dict(headers)), status_h,
                        fragment, f"{model}: http statistics, {name}")
        check(http.get_model_metadata(model, version, headers=dict(uae))["name"] == model, f"{model}: http metadata with a key")
        check(grpc_.is_model_ready(model, version, headers=dict(uae)), f"{model}: grpc ready with a key")
    # The repository extension is an admin action across corridors.
    refused(lambda: grpc_.get_model_repository_index(headers=dict(uae)), "StatusCode.PERMISSION_DENIED", "admin",
            "grpc repository index with an infer key")
    refused(lambda: http.get_model_repository_index(headers=dict(uae)), "403", "admin",
            "http repository index with an infer key")
    check(len(grpc_.get_model_repository_index(headers=dict(admin), as_json=True)["models"]) > 0, "grpc index with an admin key")
    refused(lambda: grpc_.unload_model("trust-scorer", headers=dict(uae)), "StatusCode.PERMISSION_DENIED", "admin",
            "grpc unload with an infer key")
    check(grpc_.is_model_ready("trust-scorer", headers=dict(uae)), "trust-scorer still ready after a refused unload")
    # The gRPC stream: each message is checked; a message for another corridor gets its error.
    results = []
    grpc_.start_stream(callback=lambda result, error: results.append((result, error)), headers=dict(other))
    model, version, vectors = next(iter(goldens(golden_dir)))
    grpc_.async_stream_infer(model, triton_inputs(grpcclient, vectors[0], None), model_version=version)
    grpc_.stop_stream()
    check(len(results) == 1 and results[0][1] is not None and "UK-NG" in str(results[0][1]),
          f"grpc stream in another corridor is refused: {results}")


def over_tls(http_addr, grpc_addr, golden_dir, tls):
    """The real clients over TLS: tritonclient.http (ssl, the CA as ca_certs) and
    tritonclient.grpc (ssl, the CA as root_certificates), with a client certificate when
    `tls` names one; golden vectors stay bit-exact. With `tls["mtls"]`, a client without a
    certificate is refused."""
    ca = tls["ca"]
    opts = {"ca_certs": ca}
    gkw = {"root_certificates": ca}
    if tls.get("cert"):
        opts.update({"certfile": tls["cert"], "keyfile": tls["key"]})
        gkw.update({"certificate_chain": tls["cert"], "private_key": tls["key"]})
    http = httpclient.InferenceServerClient(http_addr, ssl=True, ssl_options=opts)
    grpc_ = grpcclient.InferenceServerClient(grpc_addr, ssl=True, **gkw)
    check(http.is_server_live() and grpc_.is_server_live(), "live over TLS")
    check("binary_tensor_data" in http.get_server_metadata()["extensions"], "http metadata over TLS")
    for model, version, vectors in goldens(golden_dir):
        for v in vectors[:4]:
            label = f"{model} {version} {v['id']}"
            r = http.infer(model, triton_inputs(httpclient, v, None), model_version=version)
            compare(r.as_numpy, v, label + " [https binary]")
            r = grpc_.infer(model, triton_inputs(grpcclient, v, None), model_version=version)
            compare(r.as_numpy, v, label + " [grpc tls]")
    if tls.get("mtls"):
        bare = grpcclient.InferenceServerClient(grpc_addr, ssl=True, root_certificates=ca)
        try:
            bare.is_server_live()
            check(False, "grpc without a client certificate was served")
        except InferenceServerException as e:
            check("UNAVAILABLE" in str(e.status()), f"grpc without a client certificate: {e.status()} {e.message()}")
        try:
            httpclient.InferenceServerClient(http_addr, ssl=True, ssl_options={"ca_certs": ca}).is_server_live()
            check(False, "https without a client certificate was served")
        except Exception as e:  # the TLS alert surfaces as an SSL or connection error
            check("certificate" in str(e).lower() or "ssl" in type(e).__name__.lower() or "alert" in str(e).lower(),
                  f"https without a client certificate: {type(e).__name__}: {e}")


def grpc_request_ids(grpc_):
    """The request id comes back as gRPC initial metadata: the caller's, or a generated one."""
    stub = grpc_._client_stub
    request = grpcclient.service_pb2.ServerMetadataRequest()
    _, call = stub.ServerMetadata.with_call(request, metadata=(("x-request-id", "grpc-7"),))
    got = dict(call.initial_metadata())
    check(got.get("x-request-id") == "grpc-7", f"grpc echoes x-request-id: {got}")
    _, call = stub.ServerMetadata.with_call(request)
    generated = dict(call.initial_metadata()).get("x-request-id", "")
    check(len(generated) == 32, f"grpc generates a request id: {generated!r}")


def main():
    a = argparse.Namespace(
        http=os.environ["CONFORMANCE_HTTP"],
        grpc=os.environ["CONFORMANCE_GRPC"],
        golden=os.environ["CONFORMANCE_GOLDEN"],
        suite=SUITE,
    )
    if a.suite == "triton":
        http = httpclient.InferenceServerClient(a.http)
        grpc_ = grpcclient.InferenceServerClient(a.grpc)
        golden_sweep(http, grpc_, a.golden)
        metadata_and_errors(http, grpc_, a.golden)
        async_clients(a.http, a.grpc, a.golden)
        parity(http, grpc_, a.http)
        grpc_request_ids(grpc_)
    elif a.suite == "triton-auth":
        http = httpclient.InferenceServerClient(a.http)
        grpc_ = grpcclient.InferenceServerClient(a.grpc)
        with_keys(http, grpc_, a.golden, json.loads(os.environ["CONFORMANCE_KEYS"]))
    elif a.suite == "triton-tls":
        over_tls(a.http, a.grpc, a.golden, json.loads(os.environ["CONFORMANCE_TLS"]))
    else:
        kserve_clients(a.http, a.grpc, a.golden)
    print(f"{a.suite}: {checks} checks, {len(failures)} failures")
    if failures:
        for f in failures[:50]:
            print("  ", f)
        sys.exit(1)


if __name__ == "__main__":
    main()
