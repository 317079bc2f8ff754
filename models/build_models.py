#!/usr/bin/env python3
"""Build Invariant's example model zoo, deterministically.

Generates synthetic marketplace data with fixed seeds, trains the example models,
exports them (safetensors for native networks, ONNX otherwise), writes every
version's manifest.toml with the sha256 and blake3 of each artifact, and verifies:

  * native networks: the exported float32 network (scaler folded into layer 0)
    reproduces scikit-learn's predict_proba to ~1e-5;
  * ONNX models: the file passes onnx.checker, loads in onnxruntime and exposes the
    declared input/output names, datatypes and shapes.

Finally it prints, for every model version, the outputs for one fixed example row.

Run it through `bash models/build.sh` (pinned library versions, single-threaded
BLAS). Running it twice produces byte-identical artifacts.

Layout written (see docs/model-repository.md):
  models/trust-scorer/{1.1.0,1.2.0}/        native
  models/risk-assessor/{1.0.0,1.1.0}/       onnx
  models/price-advisor/1.0.0/               onnx
  tests/fixtures/models/dtype-echo/1.0.0/   onnx test fixture (not a shipped model)
  tests/fixtures/models/canary-probe/{1.0.0,1.1.0}/
                                            onnx test fixture (not a shipped model)
  tests/fixtures/models/slow-probe/1.0.0/   onnx test fixture (not a shipped model)
"""

import os

# Single-threaded numeric libraries: training and export must not depend on the
# number of cores (BLAS reductions may split differently across threads).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import hashlib
import math
import shutil
import sys
import time
import tomllib
import warnings
from pathlib import Path

import blake3
import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
from onnx import TensorProto, helper
from safetensors.numpy import save_file
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
FIXTURES = ROOT / "tests" / "fixtures" / "models"

ONNX_OPSET = {"": 17, "ai.onnx.ml": 3}
ONNX_IR_VERSION = 8  # IR version matching opset 17; loads in onnxruntime >= 1.13
PRODUCER_NAME = "invariant-model-zoo"
PRODUCER_VERSION = "1"

MAX_BATCH_SIZE = 256
THREADS = 1
DEVICE = "auto"

warnings.filterwarnings("ignore", category=ConvergenceWarning)


# --------------------------------------------------------------------------------------
# Hashing and the manifest writer
# --------------------------------------------------------------------------------------

def file_hashes(path: Path) -> tuple[str, str]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), blake3.blake3(data).hexdigest()


def toml_str(s: str) -> str:
    """A TOML basic string."""
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\u%04X" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_multiline(s: str) -> str:
    """A TOML multi-line basic string (escapes backslashes and quotes)."""
    body = s.strip("\n").replace("\\", "\\\\").replace('"', '\\"')
    return '"""\n' + body + '"""'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        assert math.isfinite(v), f"non-finite TOML float {v!r}"
        return repr(v)  # shortest round-trip form, always with "." or "e": a TOML float
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"unsupported TOML value {v!r}")


def write_manifest(version_dir: Path, *, name: str, version: str, fmt: str,
                   description: str, artifacts: list[str], inputs: list[dict],
                   outputs: list[dict], seed: int, onnx_model: str | None = None,
                   native: dict | None = None,
                   max_batch_size: int = MAX_BATCH_SIZE) -> Path:
    """Write manifest.toml in the format of docs/model-repository.md."""
    assert version_dir.name == version and version_dir.parent.name == name
    assert fmt in ("onnx", "native")
    lines = [
        f"name = {toml_str(name)}",
        f"version = {toml_str(version)}",
        f"format = {toml_str(fmt)}",
        f"description = {toml_multiline(description)}",
    ]
    for rel in artifacts:
        sha256, b3 = file_hashes(version_dir / rel)
        lines += ["", "[[artifacts]]",
                  f"path = {toml_str(rel)}",
                  f"sha256 = {toml_str(sha256)}",
                  f"blake3 = {toml_str(b3)}"]
    for spec in inputs:
        lines += ["", "[[inputs]]",
                  f"name = {toml_str(spec['name'])}",
                  f"datatype = {toml_str(spec['datatype'])}",
                  f"shape = {toml_value(spec['shape'])}",
                  f"allow_non_finite = {toml_value(spec.get('allow_non_finite', False))}"]
        if spec.get("columns"):
            lines.append(f"columns = {toml_value(spec['columns'])}")
        if spec.get("ranges"):
            ranges = [[float(lo), float(hi)] for lo, hi in spec["ranges"]]
            assert len(ranges) == spec["shape"][-1], f"{spec['name']}: one range per column"
            assert all(math.isfinite(lo) and math.isfinite(hi) and lo <= hi
                       for lo, hi in ranges), f"{spec['name']}: bad ranges {ranges}"
            lines.append(f"ranges = {toml_value(ranges)}")
        if spec.get("feature_service"):
            lines.append(f"feature_service = {toml_str(spec['feature_service'])}")
    for spec in outputs:
        lines += ["", "[[outputs]]",
                  f"name = {toml_str(spec['name'])}",
                  f"datatype = {toml_str(spec['datatype'])}",
                  f"shape = {toml_value(spec['shape'])}"]
    lines += ["", "[inference]",
              f"max_batch_size = {max_batch_size}",
              f"threads = {THREADS}",
              f"seed = {seed}",
              f"device = {toml_str(DEVICE)}"]
    if fmt == "onnx":
        assert onnx_model in artifacts
        lines += ["", "[onnx]", f"model = {toml_str(onnx_model)}"]
    else:
        assert native is not None and native["weights"] in artifacts
        lines += ["", "[native]",
                  f"weights = {toml_str(native['weights'])}",
                  f"input_size = {native['input_size']}",
                  "layers = ["]
        for layer in native["layers"]:
            lines.append(f"  {{ size = {layer['size']}, activation = "
                         f"{toml_str(layer['activation'])} }},")
        lines.append("]")
    text = "\n".join(lines) + "\n"

    path = version_dir / "manifest.toml"
    path.write_text(text, encoding="utf-8")

    # Read it back: it must parse and say what we meant.
    parsed = tomllib.loads(text)
    assert parsed["name"] == name and parsed["version"] == version
    assert parsed["format"] == fmt
    assert [a["path"] for a in parsed["artifacts"]] == artifacts
    assert sorted(p.name for p in version_dir.iterdir()) == sorted(artifacts + ["manifest.toml"])
    for a in parsed["artifacts"]:
        sha256, b3 = file_hashes(version_dir / a["path"])
        assert a["sha256"] == sha256 and a["blake3"] == b3
    assert [i["name"] for i in parsed["inputs"]] == [i["name"] for i in inputs]
    for got, want in zip(parsed["inputs"], inputs):
        if want.get("ranges"):
            assert got["ranges"] == [[float(lo), float(hi)] for lo, hi in want["ranges"]]
        else:
            assert "ranges" not in got
    assert [o["name"] for o in parsed["outputs"]] == [o["name"] for o in outputs]
    assert parsed["inference"]["max_batch_size"] == max_batch_size
    return path


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def features_input(columns: list[tuple[str, str, tuple[float, float]]]) -> dict:
    """The `features` input: column names and each column's documented [min, max]."""
    return {"name": "features", "datatype": "FP32", "shape": [-1, len(columns)],
            "allow_non_finite": False, "columns": [c for c, _, _ in columns],
            "ranges": [[float(lo), float(hi)] for _, _, (lo, hi) in columns]}


def check_in_ranges(what: str, X: np.ndarray,
                    columns: list[tuple[str, str, tuple[float, float]]]) -> None:
    """The generated data must lie inside the ranges the manifest declares."""
    assert X.shape[1] == len(columns)
    for j, (c, _, (lo, hi)) in enumerate(columns):
        assert lo <= hi
        col = X[:, j]
        assert np.all(np.isfinite(col)), f"{what}: {c} has non-finite values"
        assert col.min() >= lo and col.max() <= hi, \
            f"{what}: {c} spans [{col.min()}, {col.max()}], outside [{lo}, {hi}]"


def changes_block(changes: str) -> str:
    return f"\n{changes}\n" if changes else ""


def opset_text(model: onnx.ModelProto) -> str:
    names = {"": "opset", "ai.onnx.ml": "ai.onnx.ml opset"}
    ops = sorted((o.domain, o.version) for o in model.opset_import)
    return ", ".join(f"{names.get(d, d + ' opset')} {v}" for d, v in ops)


def column_doc(columns: list[tuple[str, str, tuple[float, float]]]) -> str:
    width = max(len(c) for c, _, _ in columns)
    return "\n".join(f"  {i}. {c.ljust(width)}  {d}" for i, (c, d, _) in enumerate(columns))


# --------------------------------------------------------------------------------------
# ONNX helpers
# --------------------------------------------------------------------------------------

def rename_output(model: onnx.ModelProto, old: str, new: str) -> None:
    if old == new:
        return
    g = model.graph
    for node in g.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for out in g.output:
        if out.name == old:
            out.name = new
    for vi in g.value_info:
        if vi.name == old:
            vi.name = new


def finalize_onnx(model: onnx.ModelProto, graph_name: str, doc: str) -> onnx.ModelProto:
    """Pin every free-text / provenance field so the bytes depend only on the model."""
    model.ir_version = ONNX_IR_VERSION
    model.producer_name = PRODUCER_NAME
    model.producer_version = PRODUCER_VERSION
    model.domain = "ai.invariant.zoo"
    model.model_version = 1
    model.doc_string = doc
    model.graph.name = graph_name
    model.graph.doc_string = ""
    del model.metadata_props[:]
    # Name the (free) batch dimension of every graph input and output.
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > 0 and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    for node in model.graph.node:
        node.doc_string = ""
    onnx.checker.check_model(model, full_check=True)
    return model


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString(deterministic=True))


def ort_session(path: Path, log_severity_level: int = 3) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = log_severity_level
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


ORT_TYPES = {
    "BOOL": "tensor(bool)", "INT32": "tensor(int32)", "INT64": "tensor(int64)",
    "FP32": "tensor(float)", "FP64": "tensor(double)",
}
NP_TYPES = {
    "BOOL": np.bool_, "INT32": np.int32, "INT64": np.int64,
    "FP32": np.float32, "FP64": np.float64,
}


def verify_onnx_version(version_dir: Path, example: dict[str, np.ndarray]) -> dict:
    """Load the manifest's ONNX model in onnxruntime, check the signature, run `example`."""
    manifest = tomllib.loads((version_dir / "manifest.toml").read_text(encoding="utf-8"))
    path = version_dir / manifest["onnx"]["model"]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort_session(path)

    def check(kind, got, want):
        assert [g.name for g in got] == [w["name"] for w in want], \
            f"{version_dir}: {kind} names {[g.name for g in got]} != {[w['name'] for w in want]}"
        for g, w in zip(got, want):
            assert g.type == ORT_TYPES[w["datatype"]], f"{version_dir}: {g.name} type {g.type}"
            assert len(g.shape) == len(w["shape"]), f"{version_dir}: {g.name} rank {g.shape}"
            for gd, wd in zip(g.shape, w["shape"]):
                if wd == -1:
                    assert not isinstance(gd, int) or gd is None, f"{g.name}: dim {gd}"
                else:
                    assert gd == wd, f"{version_dir}: {g.name} shape {g.shape} vs {w['shape']}"

    check("input", sess.get_inputs(), manifest["inputs"])
    check("output", sess.get_outputs(), manifest["outputs"])

    # Run the example alone and inside a batch of 3; check the actual output shapes.
    results = sess.run(None, example)
    for batch in (1, 3):
        feed = {k: np.repeat(v, batch, axis=0) for k, v in example.items()}
        outs = sess.run(None, feed)
        for o, spec in zip(outs, manifest["outputs"]):
            want = [batch if d == -1 else d for d in spec["shape"]]
            assert list(o.shape) == want, f"{version_dir}: {spec['name']} shape {o.shape} != {want}"
            assert o.dtype == NP_TYPES[spec["datatype"]], f"{spec['name']} dtype {o.dtype}"
    return {spec["name"]: r for spec, r in zip(manifest["outputs"], results)}


# --------------------------------------------------------------------------------------
# trust-scorer: native feed-forward network
# --------------------------------------------------------------------------------------

TRUST_COLUMNS = [  # (column, description, documented [min, max])
    ("account_age_days", "days since the account was created, 0 to 3650", (0.0, 3650.0)),
    ("completed_orders", "orders completed over the account's lifetime, 0 to 5000", (0.0, 5000.0)),
    ("dispute_rate", "fraction of orders that ended in a dispute, 0.0 to 1.0", (0.0, 1.0)),
    ("avg_rating", "mean counterparty rating in stars, 1.0 to 5.0", (1.0, 5.0)),
    ("response_time_hours", "median time to answer a message, hours, 0 to 72", (0.0, 72.0)),
    ("kyc_level", "identity verification level, integer 0 (none) to 3 (full)", (0.0, 3.0)),
    ("cancellations_90d", "orders cancelled by the account in the last 90 days, 0 to 50",
     (0.0, 50.0)),
    ("chargebacks_365d", "card chargebacks against the account in the last 365 days, 0 to 20",
     (0.0, 20.0)),
]
TRUST_EXAMPLE = np.array([[420.0, 57.0, 0.02, 4.6, 3.5, 2.0, 1.0, 0.0]], dtype=np.float32)


def trust_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    age = np.clip(rng.exponential(500.0, n), 0, 3650).round()
    orders = np.clip(rng.lognormal(2.5, 1.5, n) * (0.2 + age / 1000.0), 0, 5000).round()
    dispute = np.clip(rng.beta(1.0, 30.0, n), 0, 1)
    rating = np.clip(rng.normal(4.4, 0.5, n) - 4.0 * dispute, 1.0, 5.0).round(1)
    response = np.clip(rng.lognormal(1.0, 1.0, n), 0, 72).round(1)
    kyc = rng.choice(4, size=n, p=[0.2, 0.3, 0.3, 0.2]).astype(np.float64)
    cancel = np.clip(rng.poisson(0.5 + 2.0 * dispute * 10.0, n), 0, 50).astype(np.float64)
    charge = np.clip(rng.poisson(0.1 + 3.0 * dispute, n), 0, 20).astype(np.float64)
    X = np.column_stack([age, orders, dispute, rating, response, kyc, cancel, charge])
    X = X.astype(np.float32)  # the server receives FP32; train on exactly those values

    # Ground-truth trust probability: a fixed formula plus noise.
    logit = (-1.0
             + 0.45 * np.log1p(age / 30.0)
             + 0.35 * np.log1p(orders)
             - 18.0 * dispute
             + 1.4 * (rating - 4.0)
             - 0.35 * np.log1p(response)
             + 0.55 * kyc
             - 0.25 * cancel
             - 1.1 * charge
             + rng.normal(0.0, 0.5, n))
    p = 1.0 / (1.0 + np.exp(-logit))
    y = (rng.random(n) < p).astype(np.int64)
    return X, y


def fold_mlp(scaler: StandardScaler, mlp: MLPClassifier) -> list[tuple[np.ndarray, np.ndarray]]:
    """The MLP's layers with the scaler folded into layer 0, as (W [in,out], b [out])."""
    mean = scaler.mean_.astype(np.float64)
    scale = scaler.scale_.astype(np.float64)
    layers = [(np.asarray(w, np.float64), np.asarray(b, np.float64))
              for w, b in zip(mlp.coefs_, mlp.intercepts_)]
    w0, b0 = layers[0]
    # ((x - mean) / scale) @ W + b == x @ (W / scale[:, None]) + (b - (mean / scale) @ W)
    layers[0] = (w0 / scale[:, None], b0 - (mean / scale) @ w0)
    return [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers]


def native_forward(layers, activations, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    for (w, b), act in zip(layers, activations):
        x = x @ w + b
        if act == "relu":
            x = np.maximum(x, np.float32(0))
        elif act == "sigmoid":
            x = (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)
        elif act == "tanh":
            x = np.tanh(x)
        x = x.astype(np.float32)
    return x


def native_forward_sequential(layers, activations, row: np.ndarray) -> np.ndarray:
    """One row with the server's documented reduction order:
    ((x0*w0 + x1*w1) + x2*w2) + ... in f32, then + b."""
    x = row.astype(np.float32)
    for (w, b), act in zip(layers, activations):
        y = np.empty(w.shape[1], np.float32)
        for j in range(w.shape[1]):
            acc = np.float32(x[0] * w[0, j])
            for i in range(1, w.shape[0]):
                acc = np.float32(acc + np.float32(x[i] * w[i, j]))
            y[j] = np.float32(acc + b[j])
        if act == "relu":
            y = np.maximum(y, np.float32(0))
        elif act == "sigmoid":
            y = (np.float32(1) / (np.float32(1) + np.exp(-y))).astype(np.float32)
        elif act == "tanh":
            y = np.tanh(y).astype(np.float32)
        x = y
    return x


def build_trust_scorer(version: str, *, hidden: tuple[int, ...], n: int, seed: int,
                       changes: str) -> dict:
    X, y = trust_data(n, seed)
    check_in_ranges("trust-scorer training data", X, TRUST_COLUMNS)
    check_in_ranges("trust-scorer example", TRUST_EXAMPLE, TRUST_COLUMNS)
    scaler = StandardScaler().fit(X.astype(np.float64))
    mlp = MLPClassifier(hidden_layer_sizes=hidden, activation="relu", solver="adam",
                        alpha=1e-4, learning_rate_init=1e-3, max_iter=400,
                        random_state=seed)
    mlp.fit(scaler.transform(X.astype(np.float64)), y)
    assert mlp.out_activation_ == "logistic" and mlp.coefs_[-1].shape[1] == 1

    layers = fold_mlp(scaler, mlp)
    activations = ["relu"] * len(hidden) + ["sigmoid"]

    # The float32 folded network must reproduce scikit-learn's probabilities.
    Xv, _ = trust_data(4096, seed + 1000)
    check_in_ranges("trust-scorer validation data", Xv, TRUST_COLUMNS)
    ref = mlp.predict_proba(scaler.transform(Xv.astype(np.float64)))[:, 1]
    got = native_forward(layers, activations, Xv)[:, 0]
    err = float(np.max(np.abs(got.astype(np.float64) - ref)))
    assert err < 1e-5, f"trust-scorer {version}: folded network differs by {err}"
    seq = native_forward_sequential(layers, activations, TRUST_EXAMPLE[0])
    ref_ex = mlp.predict_proba(scaler.transform(TRUST_EXAMPLE.astype(np.float64)))[0, 1]
    assert abs(float(seq[0]) - ref_ex) < 1e-5
    acc = float(np.mean((ref > 0.5) == (trust_data(4096, seed + 1000)[1] == 1)))

    vdir = fresh_dir(MODELS / "trust-scorer" / version)
    tensors = {}
    for i, (w, b) in enumerate(layers):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
    save_file(tensors, str(vdir / "model.safetensors"))

    sizes = list(hidden) + [1]
    description = f"""
Trust scorer {version}: the probability (0 to 1) that a marketplace account is
trustworthy, i.e. completes its next orders without dispute, fraud or chargeback.
Native feed-forward network {8}-{'-'.join(str(s) for s in sizes)} (ReLU hidden layers,
sigmoid output), a scikit-learn MLPClassifier trained on {n} synthetic accounts
(seed {seed}), with the input standardization folded into the first layer, so the
network takes the raw values below.
{changes_block(changes)}
Input `features`, FP32 [batch, 8], raw (unscaled) values:
{column_doc(TRUST_COLUMNS)}
Output `trust_score`, FP32 [batch, 1]: trust probability; higher is more trustworthy.
"""
    write_manifest(
        vdir, name="trust-scorer", version=version, fmt="native",
        description=description, artifacts=["model.safetensors"],
        inputs=[{**features_input(TRUST_COLUMNS), "feature_service": "trust_scorer_v1"}],
        outputs=[{"name": "trust_score", "datatype": "FP32", "shape": [-1, 1]}],
        seed=seed,
        native={"weights": "model.safetensors", "input_size": 8,
                "layers": [{"size": s, "activation": a} for s, a in zip(sizes, activations)]},
    )
    return {"model": "trust-scorer", "version": version, "dir": vdir,
            "example": {"features": TRUST_EXAMPLE},
            "outputs": {"trust_score": seq.reshape(1, 1)},
            "sklearn": {"trust_score": np.array([[ref_ex]])},
            "note": f"max |folded f32 - sklearn| = {err:.2e} on 4096 rows, "
                    f"holdout accuracy {acc:.3f}"}


# --------------------------------------------------------------------------------------
# risk-assessor: gradient boosting -> ONNX
# --------------------------------------------------------------------------------------

RISK_COLUMNS = [  # (column, description, documented [min, max])
    ("amount_usd", "transaction amount in US dollars, 0.5 to 20000", (0.5, 20000.0)),
    ("amount_zscore", "amount relative to the account's own history, standard deviations, -3 to 10",
     (-3.0, 10.0)),
    ("account_age_days", "days since the paying account was created, 0 to 3650", (0.0, 3650.0)),
    ("txn_count_24h", "transactions by the account in the last 24 hours, 0 to 50", (0.0, 50.0)),
    ("distinct_cards_7d", "distinct payment cards used by the account in the last 7 days, 1 to 10",
     (1.0, 10.0)),
    ("ip_country_mismatch", "1 if the IP's country differs from the card's country, else 0",
     (0.0, 1.0)),
    ("device_age_days", "days since the device was first seen on the account, 0 to 1000",
     (0.0, 1000.0)),
    ("hour_of_day", "local hour of the transaction, 0 to 23", (0.0, 23.0)),
    ("merchant_risk", "merchant's historical fraud score, 0.0 (safe) to 1.0 (risky)", (0.0, 1.0)),
    ("velocity_1h", "transactions by the account in the last hour, 0 to 20", (0.0, 20.0)),
]
RISK_EXAMPLE = np.array([[249.99, 1.8, 35.0, 6.0, 2.0, 1.0, 3.0, 2.0, 0.35, 3.0]],
                        dtype=np.float32)


def risk_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    amount = np.clip(rng.lognormal(3.8, 1.2, n), 0.5, 20000).round(2)
    zscore = np.clip(rng.normal(0.0, 1.0, n) + rng.exponential(0.3, n), -3, 10).round(2)
    age = np.clip(rng.exponential(600.0, n), 0, 3650).round()
    txn24 = np.clip(rng.poisson(2.0, n), 0, 50).astype(np.float64)
    cards = np.clip(1 + rng.poisson(0.3, n), 1, 10).astype(np.float64)
    mismatch = (rng.random(n) < 0.08).astype(np.float64)
    device = np.clip(rng.exponential(200.0, n), 0, 1000).round()
    hour = rng.integers(0, 24, n).astype(np.float64)
    merchant = np.clip(rng.beta(1.5, 8.0, n), 0, 1).round(3)
    velocity = np.clip(rng.poisson(0.4, n), 0, 20).astype(np.float64)
    X = np.column_stack([amount, zscore, age, txn24, cards, mismatch, device, hour,
                         merchant, velocity]).astype(np.float32)

    night = ((hour <= 5) | (hour >= 23)).astype(np.float64)
    logit = (-3.4
             + 0.35 * np.log1p(amount / 100.0)
             + 0.45 * np.clip(zscore, 0, None)
             - 0.4 * np.log1p(age / 30.0)
             + 0.08 * txn24
             + 0.7 * (cards - 1)
             + 1.5 * mismatch
             - 0.35 * np.log1p(device)
             + 0.6 * night
             + 3.0 * merchant
             + 0.5 * velocity
             + rng.normal(0.0, 0.5, n))
    p = 1.0 / (1.0 + np.exp(-logit))
    y = (rng.random(n) < p).astype(np.int64)
    return X, y


def build_risk_assessor(version: str, *, n_estimators: int, n: int, seed: int,
                        changes: str) -> dict:
    X, y = risk_data(n, seed)
    check_in_ranges("risk-assessor training data", X, RISK_COLUMNS)
    check_in_ranges("risk-assessor example", RISK_EXAMPLE, RISK_COLUMNS)
    gbc = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=3,
                                     learning_rate=0.1, random_state=seed)
    gbc.fit(X, y)
    Xv, yv = risk_data(4096, seed + 1000)
    check_in_ranges("risk-assessor validation data", Xv, RISK_COLUMNS)
    acc = float(gbc.score(Xv, yv))

    onx = convert_sklearn(
        gbc, name=f"risk_assessor_{version.replace('.', '_')}",
        initial_types=[("features", FloatTensorType([None, 10]))],
        options={id(gbc): {"zipmap": False}},
        target_opset=ONNX_OPSET,
    )
    outs = [o.name for o in onx.graph.output]
    assert outs == ["label", "probabilities"], outs
    rename_output(onx, outs[0], "label")
    rename_output(onx, outs[1], "probabilities")
    finalize_onnx(onx, f"risk_assessor_{version.replace('.', '_')}",
                  f"Invariant model zoo: risk-assessor {version}")

    vdir = fresh_dir(MODELS / "risk-assessor" / version)
    save_onnx(onx, vdir / "model.onnx")

    # onnxruntime must agree with scikit-learn.
    sess = ort_session(vdir / "model.onnx")
    lab, prob = sess.run(None, {"features": Xv})
    assert np.array_equal(lab, gbc.predict(Xv)), "risk-assessor: label mismatch"
    perr = float(np.max(np.abs(prob - gbc.predict_proba(Xv))))
    assert perr < 1e-4, f"risk-assessor: probabilities differ by {perr}"

    description = f"""
Risk assessor {version}: the probability that a payment transaction is fraudulent.
scikit-learn GradientBoostingClassifier ({n_estimators} trees, max depth 3) trained on {n}
synthetic transactions (seed {seed}, about {100 * y.mean():.1f}% fraud), exported to ONNX
({opset_text(onx)}).
{changes_block(changes)}
Input `features`, FP32 [batch, 10]:
{column_doc(RISK_COLUMNS)}
Outputs:
  label          INT64 [batch]: 1 = fraud, 0 = legitimate (probability of fraud > 0.5)
  probabilities  FP32 [batch, 2]: [P(legitimate), P(fraud)]
"""
    write_manifest(
        vdir, name="risk-assessor", version=version, fmt="onnx",
        description=description, artifacts=["model.onnx"],
        inputs=[features_input(RISK_COLUMNS)],
        outputs=[{"name": "label", "datatype": "INT64", "shape": [-1]},
                 {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
        seed=seed, onnx_model="model.onnx",
    )
    return {"model": "risk-assessor", "version": version, "dir": vdir,
            "example": {"features": RISK_EXAMPLE},
            "sklearn": {"label": gbc.predict(RISK_EXAMPLE),
                        "probabilities": gbc.predict_proba(RISK_EXAMPLE)},
            "note": f"max |onnx - sklearn| = {perr:.2e} on 4096 rows, holdout accuracy {acc:.3f}"}


# --------------------------------------------------------------------------------------
# price-advisor: StandardScaler + MLPRegressor -> ONNX
# --------------------------------------------------------------------------------------

PRICE_COLUMNS = [  # (column, description, documented [min, max])
    ("active_riders", "riders requesting or browsing in the zone now, 0 to 5000", (0.0, 5000.0)),
    ("available_drivers", "idle drivers in the zone now, 1 to 3000", (1.0, 3000.0)),
    ("demand_supply_ratio", "active_riders / available_drivers, 0.0 to 10.0", (0.0, 10.0)),
    ("hour_of_day", "local hour, 0 to 23", (0.0, 23.0)),
    ("is_weekend", "1 on Saturday and Sunday, else 0", (0.0, 1.0)),
    ("rain_mm", "rainfall in the last hour, millimetres, 0 to 50", (0.0, 50.0)),
]
PRICE_EXAMPLE = np.array([[1800.0, 600.0, 3.0, 18.0, 0.0, 4.5]], dtype=np.float32)


def price_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    drivers = np.clip(rng.lognormal(5.5, 0.9, n), 1, 3000).round()
    ratio_true = np.clip(rng.lognormal(0.0, 0.6, n), 0.0, 10.0)
    riders = np.clip(drivers * ratio_true, 0, 5000).round()
    ratio = np.clip(riders / drivers, 0.0, 10.0).round(3)
    hour = rng.integers(0, 24, n).astype(np.float64)
    weekend = (rng.random(n) < 2.0 / 7.0).astype(np.float64)
    rain = np.where(rng.random(n) < 0.2, np.clip(rng.exponential(4.0, n), 0, 50), 0.0).round(1)
    X = np.column_stack([riders, drivers, ratio, hour, weekend, rain]).astype(np.float32)

    rush = np.exp(-0.5 * ((hour - 8.5) / 1.2) ** 2) + np.exp(-0.5 * ((hour - 18.0) / 1.5) ** 2)
    late_weekend = weekend * ((hour >= 22) | (hour <= 2)).astype(np.float64)
    surge = (1.0
             + 0.45 * np.clip(ratio - 0.8, 0, None)
             + 0.25 * rush * (1.0 - weekend)
             + 0.3 * late_weekend
             + 0.5 * (1.0 - np.exp(-rain / 5.0))
             + rng.normal(0.0, 0.05, n))
    y = np.clip(surge, 1.0, 3.0)
    return X, y


def build_price_advisor(version: str, *, n: int, seed: int) -> dict:
    X, y = price_data(n, seed)
    check_in_ranges("price-advisor training data", X, PRICE_COLUMNS)
    check_in_ranges("price-advisor example", PRICE_EXAMPLE, PRICE_COLUMNS)
    pipe = Pipeline([
        ("scaler", StandardScaler()),
        ("mlp", MLPRegressor(hidden_layer_sizes=(32, 16), activation="relu", solver="adam",
                             alpha=1e-4, learning_rate_init=1e-3, max_iter=400,
                             random_state=seed)),
    ])
    pipe.fit(X, y)
    Xv, yv = price_data(4096, seed + 1000)
    check_in_ranges("price-advisor validation data", Xv, PRICE_COLUMNS)
    mae = float(np.mean(np.abs(pipe.predict(Xv) - yv)))

    name = f"price_advisor_{version.replace('.', '_')}"
    onx = convert_sklearn(
        pipe, name=name,
        initial_types=[("features", FloatTensorType([None, 6]))],
        target_opset=ONNX_OPSET,
    )
    assert len(onx.graph.output) == 1
    rename_output(onx, onx.graph.output[0].name, "surge_multiplier")

    # Make the output [N, 1] in the graph whatever the converter emitted.
    out = onx.graph.output[0]
    dims = out.type.tensor_type.shape.dim
    if not (len(dims) == 2 and dims[1].dim_value == 1):
        g = onx.graph
        for node in g.node:
            node.output[:] = ["surge_raw" if x == "surge_multiplier" else x for x in node.output]
            node.input[:] = ["surge_raw" if x == "surge_multiplier" else x for x in node.input]
        g.initializer.append(helper.make_tensor("surge_shape", TensorProto.INT64, [2], [-1, 1]))
        g.node.append(helper.make_node("Reshape", ["surge_raw", "surge_shape"],
                                       ["surge_multiplier"], name="surge_reshape"))
        del g.output[:]
        g.output.append(helper.make_tensor_value_info("surge_multiplier", TensorProto.FLOAT,
                                                      [None, 1]))
    finalize_onnx(onx, name, f"Invariant model zoo: price-advisor {version}")

    vdir = fresh_dir(MODELS / "price-advisor" / version)
    save_onnx(onx, vdir / "model.onnx")

    sess = ort_session(vdir / "model.onnx")
    (got,) = sess.run(None, {"features": Xv})
    assert got.shape == (len(Xv), 1), got.shape
    err = float(np.max(np.abs(got[:, 0] - pipe.predict(Xv))))
    assert err < 1e-4, f"price-advisor: onnx differs from sklearn by {err}"

    description = f"""
Price advisor {version}: the surge price multiplier (about 1.0 to 3.0) for a ride-hailing
zone right now. scikit-learn Pipeline(StandardScaler, MLPRegressor 32-16 ReLU) trained on
{n} synthetic zone snapshots (seed {seed}), exported to ONNX ({opset_text(onx)}). The model does
not clamp its output; callers should clamp to [1.0, 3.0].

Input `features`, FP32 [batch, 6]:
{column_doc(PRICE_COLUMNS)}
Output `surge_multiplier`, FP32 [batch, 1]: multiply the base fare by this.
"""
    write_manifest(
        vdir, name="price-advisor", version=version, fmt="onnx",
        description=description, artifacts=["model.onnx"],
        inputs=[features_input(PRICE_COLUMNS)],
        outputs=[{"name": "surge_multiplier", "datatype": "FP32", "shape": [-1, 1]}],
        seed=seed, onnx_model="model.onnx",
    )
    return {"model": "price-advisor", "version": version, "dir": vdir,
            "example": {"features": PRICE_EXAMPLE},
            "sklearn": {"surge_multiplier": pipe.predict(PRICE_EXAMPLE).reshape(-1, 1)},
            "note": f"max |onnx - sklearn| = {err:.2e} on 4096 rows, holdout MAE {mae:.3f}"}


# --------------------------------------------------------------------------------------
# dtype-echo: hand-built ONNX test fixture
# --------------------------------------------------------------------------------------

ECHO_TENSORS = [
    ("b", TensorProto.BOOL, "BOOL"),
    ("i32", TensorProto.INT32, "INT32"),
    ("i64", TensorProto.INT64, "INT64"),
    ("f32", TensorProto.FLOAT, "FP32"),
    ("f64", TensorProto.DOUBLE, "FP64"),
]
# [min, max] of each input's two columns, written to the manifest as `ranges`.
ECHO_RANGES = {
    "b": (0.0, 1.0),
    "i32": (-1000.0, 1000.0),
    "i64": (-1000000.0, 1000000.0),
    "f32": (-10.0, 10.0),
    "f64": (-10.0, 10.0),
}


def build_dtype_echo() -> dict:
    version = "1.0.0"
    inputs = [helper.make_tensor_value_info(n, t, [None, 2]) for n, t, _ in ECHO_TENSORS]
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, [None, 2]) for n, t, _ in ECHO_TENSORS]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"], name=f"echo_{n}")
             for n, _, _ in ECHO_TENSORS]
    graph = helper.make_graph(nodes, "dtype_echo", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    finalize_onnx(model, "dtype_echo", "Invariant test fixture: dtype-echo 1.0.0")

    vdir = fresh_dir(FIXTURES / "dtype-echo" / version)
    save_onnx(model, vdir / "model.onnx")
    description = """
TEST FIXTURE, not a shipped model. Echoes every input unchanged (ONNX Identity) so
tests can check the request/response encoding of each V2 datatype.
Inputs, each [batch, 2]: b BOOL, i32 INT32, i64 INT64, f32 FP32, f64 FP64.
Outputs b_out, i32_out, i64_out, f32_out, f64_out: the matching input, same datatype
and shape. Only f64 allows NaN and +/-Inf (allow_non_finite = true); a non-finite
value in f32 is refused.
"""
    write_manifest(
        vdir, name="dtype-echo", version=version, fmt="onnx",
        description=description, artifacts=["model.onnx"],
        inputs=[{"name": n, "datatype": d, "shape": [-1, 2], "allow_non_finite": n == "f64",
                 "ranges": [list(ECHO_RANGES[n])] * 2}
                for n, _, d in ECHO_TENSORS],
        outputs=[{"name": f"{n}_out", "datatype": d, "shape": [-1, 2]} for n, _, d in ECHO_TENSORS],
        seed=0, onnx_model="model.onnx",
    )
    example = {
        "b": np.array([[True, False]]),
        "i32": np.array([[-2147483648, 2147483647]], dtype=np.int32),
        "i64": np.array([[-9223372036854775808, 9223372036854775807]], dtype=np.int64),
        "f32": np.array([[1.5, -0.0]], dtype=np.float32),
        "f64": np.array([[np.nan, -np.inf]], dtype=np.float64),
    }
    return {"model": "dtype-echo", "version": version, "dir": vdir, "example": example,
            "note": "test fixture"}


# --------------------------------------------------------------------------------------
# canary-probe: hand-built ONNX test fixture for canary auto-rollback
# --------------------------------------------------------------------------------------

CANARY_MAX_BATCH_SIZE = 64
CANARY_RANGE = (0.0, 3.0)  # [min, max] of both columns of `x`
CANARY_TABLE = np.array([10.0, 20.0, 30.0, 40.0], dtype=np.float32)
CANARY_EXAMPLE = np.array([[0.5, 3.0]], dtype=np.float32)
CANARY_BAD_INPUT = np.array([[10.0, 0.0]], dtype=np.float32)
CANARY_DESCRIPTIONS = {
    "1.0.0": """
TEST FIXTURE for the canary auto-rollback tests, not a shipped model.
Version 1.0.0, the healthy baseline: y = x + 0.0 (ONNX Add with a constant zero).
It never fails for a finite input.
Input x, FP32 [batch, 2], both columns in [0.0, 3.0] (ranges), no NaN or +/-Inf.
Output y, FP32 [batch, 2]: x + 0.0, i.e. x unchanged except that -0.0 becomes +0.0.
""",
    "1.1.0": """
TEST FIXTURE for the canary auto-rollback tests, not a shipped model.
Version 1.1.0, the faulty candidate: y = Gather(table, Cast(Floor(x), INT64)) with the
constant table [10.0, 20.0, 30.0, 40.0] (axis 0), so each element maps to
table[floor(x)] and y has the shape of x. For x in the declared ranges [0.0, 3.0] it
always succeeds; for x >= 4.0 (e.g. 10.0) or x < -4.0 onnxruntime raises a runtime
error (Gather index out of bounds) and the whole batch fails. (x in [-4.0, 0.0) does not
fail: Gather wraps negative indices, so -1.0 gives 40.0.)
Input x, FP32 [batch, 2], both columns in [0.0, 3.0] (ranges), no NaN or +/-Inf.
Output y, FP32 [batch, 2]: table[floor(x)].
""",
}


def canary_graph(version: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    if version == "1.0.0":
        zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
        nodes = [helper.make_node("Add", ["x", "zero"], ["y"], name="add_zero")]
        initializers = [zero]
    elif version == "1.1.0":
        table = helper.make_tensor("table", TensorProto.FLOAT, [len(CANARY_TABLE)],
                                   [float(v) for v in CANARY_TABLE])
        nodes = [
            helper.make_node("Floor", ["x"], ["x_floor"], name="floor"),
            helper.make_node("Cast", ["x_floor"], ["indices"], name="to_int64",
                             to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "indices"], ["y"], name="lookup", axis=0),
        ]
        initializers = [table]
    else:
        raise ValueError(version)
    graph = helper.make_graph(nodes, "canary_probe", [x], [y], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return finalize_onnx(model, "canary_probe", f"Invariant test fixture: canary-probe {version}")


def canary_expected(version: str, x: np.ndarray) -> np.ndarray:
    if version == "1.0.0":
        return (x + np.float32(0.0)).astype(np.float32)
    return CANARY_TABLE[np.floor(x).astype(np.int64)]


def build_canary_probe(version: str) -> dict:
    model = canary_graph(version)
    vdir = fresh_dir(FIXTURES / "canary-probe" / version)
    save_onnx(model, vdir / "model.onnx")
    write_manifest(
        vdir, name="canary-probe", version=version, fmt="onnx",
        description=CANARY_DESCRIPTIONS[version], artifacts=["model.onnx"],
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 2], "allow_non_finite": False,
                 "ranges": [list(CANARY_RANGE)] * 2}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        seed=0, onnx_model="model.onnx", max_batch_size=CANARY_MAX_BATCH_SIZE,
    )

    # In range, every version answers table[floor(x)] (1.1.0) or x (1.0.0), in any batch
    # up to max_batch_size. Log level 4 (fatal only): the expected Gather failure below
    # is reported here, not logged by onnxruntime.
    sess = ort_session(vdir / "model.onnx", log_severity_level=4)
    lo, hi = CANARY_RANGE
    edges = np.array([lo, -0.0, 0.5, 0.999999, 1.0, 1.5, 2.0, 2.5, np.nextafter(np.float32(hi), 0),
                      hi], dtype=np.float32)
    rng = np.random.default_rng(0)
    grid = np.concatenate([
        np.stack([edges, edges[::-1]], axis=1),
        rng.uniform(lo, hi, size=(CANARY_MAX_BATCH_SIZE - len(edges), 2)).astype(np.float32),
    ])
    assert grid.shape == (CANARY_MAX_BATCH_SIZE, 2) and grid.min() >= lo and grid.max() <= hi
    (got,) = sess.run(None, {"x": grid})
    want = canary_expected(version, grid)
    assert got.dtype == np.float32 and got.shape == grid.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), \
        f"canary-probe {version}: {got} != {want}"

    # Out of range: 1.0.0 still answers, 1.1.0 must raise a runtime error (alone, and
    # when the bad row sits inside an otherwise good batch).
    bad_batch = np.concatenate([grid[:3], CANARY_BAD_INPUT, grid[3:6]])
    if version == "1.0.0":
        for x in (CANARY_BAD_INPUT, bad_batch):
            (got,) = sess.run(None, {"x": x})
            assert np.array_equal(got, x)
        note = f"test fixture; x = {CANARY_BAD_INPUT.tolist()} answers unchanged"
    else:
        errors = []
        for x in (CANARY_BAD_INPUT, bad_batch):
            try:
                sess.run(None, {"x": x})
            except Exception as e:  # onnxruntime's InvalidArgument (an Exception subclass)
                errors.append(f"{type(e).__name__}: {e}")
            else:
                raise AssertionError(f"canary-probe {version}: x = {x.tolist()} did not fail")
        assert all("Gather" in e and "out of data bounds" in e for e in errors), errors
        note = f"test fixture; x = {CANARY_BAD_INPUT.tolist()} raises {errors[0]}"
    return {"model": "canary-probe", "version": version, "dir": vdir,
            "example": {"x": CANARY_EXAMPLE}, "note": note}


# --------------------------------------------------------------------------------------
# slow-probe: hand-built ONNX test fixture that is deliberately slow
# --------------------------------------------------------------------------------------

SLOW_WIDTH = 256
SLOW_LAYERS = 2048  # K: MatMul + Tanh pairs, all sharing the one weight matrix W
SLOW_SEED = 0       # seed of W
SLOW_MAX_BATCH_SIZE = 64
SLOW_RANGE = (-1.0, 1.0)  # [min, max] of every column of `x`
SLOW_EXAMPLE = np.linspace(-1.0, 1.0, SLOW_WIDTH, dtype=np.float32).reshape(1, SLOW_WIDTH)
# Times of one sess.run on the build machine (onnxruntime 1.31.1, one intra-op thread,
# sequential execution; medians of 7 runs after a warm-up, over several builds, on a
# 2-vCPU AMD EPYC KVM guest, x86-64 AVX2): batch 1 about 13 ms (12.5 to 18), batch 64
# about 200 ms (190 to 225). Fixed text in the manifest, so that rebuilding rewrites the
# same bytes; the build prints the times it measures on the machine it runs on.
SLOW_MEASURED_MS = {1: "about 13 ms (12.5 to 18 ms)", 64: "about 200 ms (190 to 225 ms)"}
SLOW_DESCRIPTION = f"""
TEST FIXTURE for the queue/backpressure and deadline tests, not a shipped model.
Deliberately slow: a few requests keep the model busy long enough for a test to fill
its request queue or to run past a request deadline.
Graph: h0 = x; h(i+1) = Tanh(MatMul(h(i), W)) for i = 0 .. {SLOW_LAYERS - 1}; y = h({SLOW_LAYERS}).
All {SLOW_LAYERS} MatMul nodes share ONE constant initializer W, FP32 [{SLOW_WIDTH}, {SLOW_WIDTH}]:
numpy default_rng({SLOW_SEED}).standard_normal(({SLOW_WIDTH}, {SLOW_WIDTH})) / 16, cast to float32.
Measured time of one run in onnxruntime 1.31.1 with one intra-op thread (sequential
execution) on the build machine (2-vCPU AMD EPYC VM, x86-64 AVX2):
  batch of 64 rows: {SLOW_MEASURED_MS[64]};
  batch of 1 row:   {SLOW_MEASURED_MS[1]}.
The time grows roughly linearly with the batch size and depends on the CPU.
Input x, FP32 [batch, {SLOW_WIDTH}], every column in [-1.0, 1.0] (ranges), no NaN or +/-Inf.
Output y, FP32 [batch, {SLOW_WIDTH}], every element in (-1.0, 1.0) (Tanh). The exact values
depend on the CPU's MatMul kernels: tests should not compare them bit for bit.
"""


def slow_weights() -> np.ndarray:
    rng = np.random.default_rng(SLOW_SEED)
    return (rng.standard_normal((SLOW_WIDTH, SLOW_WIDTH)) / 16.0).astype(np.float32)


def slow_graph() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, SLOW_WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, SLOW_WIDTH])
    w = onnx.numpy_helper.from_array(slow_weights(), "W")
    nodes = []
    h = "x"
    for i in range(SLOW_LAYERS):
        m = f"m{i}"
        out = "y" if i == SLOW_LAYERS - 1 else f"h{i + 1}"
        nodes.append(helper.make_node("MatMul", [h, "W"], [m], name=f"matmul_{i}"))
        nodes.append(helper.make_node("Tanh", [m], [out], name=f"tanh_{i}"))
        h = out
    graph = helper.make_graph(nodes, "slow_probe", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return finalize_onnx(model, "slow_probe", "Invariant test fixture: slow-probe 1.0.0")


def slow_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    h = x.astype(np.float32)
    for _ in range(SLOW_LAYERS):
        h = np.tanh(h @ w)
    return h


def build_slow_probe() -> dict:
    version = "1.0.0"
    model = slow_graph()
    vdir = fresh_dir(FIXTURES / "slow-probe" / version)
    save_onnx(model, vdir / "model.onnx")
    size = (vdir / "model.onnx").stat().st_size
    assert size < 1_000_000, f"slow-probe: model.onnx is {size} bytes"
    write_manifest(
        vdir, name="slow-probe", version=version, fmt="onnx",
        description=SLOW_DESCRIPTION, artifacts=["model.onnx"],
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, SLOW_WIDTH],
                 "allow_non_finite": False, "ranges": [list(SLOW_RANGE)] * SLOW_WIDTH}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, SLOW_WIDTH]}],
        seed=SLOW_SEED, onnx_model="model.onnx", max_batch_size=SLOW_MAX_BATCH_SIZE,
    )

    # Full batch of in-range rows: bounded output, close to a float32 numpy reference.
    sess = ort_session(vdir / "model.onnx")
    lo, hi = SLOW_RANGE
    rng = np.random.default_rng(1)
    batch = rng.uniform(lo, hi, size=(SLOW_MAX_BATCH_SIZE, SLOW_WIDTH)).astype(np.float32)
    batch[0] = lo
    batch[1] = hi
    (got,) = sess.run(None, {"x": batch})
    assert got.dtype == np.float32 and got.shape == batch.shape
    assert np.all(np.isfinite(got)) and np.all(np.abs(got) < 1.0), "slow-probe: y out of (-1, 1)"
    err = float(np.max(np.abs(got - slow_reference(batch, slow_weights()))))
    assert err < 1e-2, f"slow-probe: onnxruntime differs from numpy by {err}"

    # Timing: one warm-up run, then the median of 7 runs, at batch 1 and batch 64.
    times = {}
    for n in (1, SLOW_MAX_BATCH_SIZE):
        feed = {"x": batch[:n]}
        sess.run(None, feed)
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            sess.run(None, feed)
            runs.append(time.perf_counter() - t0)
        times[n] = 1e3 * float(np.median(runs))
        print(f"slow-probe {version}: batch {n:>2}: median {times[n]:.1f} ms "
              f"(min {1e3 * min(runs):.1f}, max {1e3 * max(runs):.1f}; "
              f"manifest says {SLOW_MEASURED_MS[n]})")
    if not 150.0 <= times[SLOW_MAX_BATCH_SIZE] <= 300.0:
        print(f"warning: slow-probe batch {SLOW_MAX_BATCH_SIZE} took "
              f"{times[SLOW_MAX_BATCH_SIZE]:.1f} ms on this machine, outside 150-300 ms",
              file=sys.stderr)
    note = (f"test fixture; {SLOW_LAYERS} MatMul+Tanh layers, one run here: "
            f"{times[1]:.1f} ms at batch 1, {times[SLOW_MAX_BATCH_SIZE]:.1f} ms at batch "
            f"{SLOW_MAX_BATCH_SIZE}; max |onnxruntime - numpy| = {err:.2e}")
    return {"model": "slow-probe", "version": version, "dir": vdir,
            "example": {"x": SLOW_EXAMPLE}, "note": note}



# --------------------------------------------------------------------------------------

def fmt_array(a: np.ndarray) -> str:
    if a.size > 16:  # slow-probe's 256 columns: the first values and a digest
        head = np.array2string(a.reshape(-1)[:4], separator=", ", precision=9,
                               floatmode="maxprec")
        digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
        return f"{a.dtype} {list(a.shape)} first {head[:-1]}, ...] sha256 {digest}"
    with np.printoptions(precision=9, floatmode="maxprec", suppress=False):
        return f"{a.dtype} {list(a.shape)} {np.array2string(a, separator=', ')}"


def main() -> int:
    print(f"python {sys.version.split()[0]}; numpy {np.__version__}; onnx {onnx.__version__}; "
          f"onnxruntime {ort.__version__}")
    built = [
        build_trust_scorer("1.1.0", hidden=(32, 16), n=8000, seed=1101, changes=""),
        build_trust_scorer(
            "1.2.0", hidden=(64, 32), n=20000, seed=1201,
            changes="Changes from 1.1.0: wider hidden layers (64, 32 instead of 32, 16), "
                    "2.5x the training data\n(20000 instead of 8000 accounts), new seed."),
        build_risk_assessor("1.0.0", n_estimators=50, n=20000, seed=2100, changes=""),
        build_risk_assessor(
            "1.1.0", n_estimators=80, n=40000, seed=2110,
            changes="Changes from 1.0.0: 80 trees instead of 50, twice the training data "
                    "(40000 instead of 20000\ntransactions), new seed."),
        build_price_advisor("1.0.0", n=20000, seed=3100),
        build_dtype_echo(),
        build_canary_probe("1.0.0"),
        build_canary_probe("1.1.0"),
        build_slow_probe(),
    ]

    print("\nExample outputs (one fixed row per version):")
    for b in built:
        rel = b["dir"].relative_to(ROOT)
        print(f"\n{b['model']} {b['version']}  ({rel})  {b['note']}")
        for k, v in b["example"].items():
            print(f"  input  {k}: {fmt_array(v)}")
        if (b["dir"] / "model.onnx").exists():
            outs = verify_onnx_version(b["dir"], b["example"])
            engine = "onnxruntime"
        else:
            outs = b["outputs"]
            engine = "numpy f32, server reduction order"
        for k, v in outs.items():
            print(f"  output {k} ({engine}): {fmt_array(v)}")
        for k, v in b.get("sklearn", {}).items():
            print(f"  sklearn {k}: {fmt_array(np.asarray(v))}")

    print("\nArtifacts:")
    for b in built:
        for p in sorted(b["dir"].iterdir()):
            sha256, _ = file_hashes(p)
            print(f"  {p.stat().st_size:>8}  {sha256}  {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
