#!/usr/bin/env bash
# Sets up what Invariant needs on a fresh machine (Rust toolchain, Python 3, apt, root):
# the ONNX Runtime shared library from the `onnxruntime` wheel on PyPI, installed into the
# project-local folder .deps/onnxruntime (found by the server without any env var).
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION="1.31.1"   # must match the API version of the `ort` crate (api-31)
ORT_DIR=".deps/onnxruntime"

if ! ls "$ORT_DIR"/lib/libonnxruntime.so* >/dev/null 2>&1 || [ "$(cat "$ORT_DIR/VERSION" 2>/dev/null)" != "$ORT_VERSION" ]; then
  echo "setup: installing ONNX Runtime $ORT_VERSION from PyPI into $ORT_DIR"
  rm -rf "$ORT_DIR"
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "onnxruntime==$ORT_VERSION"
  python3 - "$tmp" "$ORT_DIR" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "onnxruntime-*.whl"))
if len(wheels) != 1:
    sys.exit(f"setup: expected one onnxruntime wheel in {tmp}, found {wheels}")
os.makedirs(os.path.join(dest, "lib"), exist_ok=True)
found = False
with zipfile.ZipFile(wheels[0]) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime.so"):
            with z.open(name) as src, open(os.path.join(dest, "lib", base), "wb") as out:
                shutil.copyfileobj(src, out)
            found = True
if not found:
    sys.exit("setup: the wheel holds no libonnxruntime.so")
PY
  lib="$(ls "$ORT_DIR"/lib/libonnxruntime.so.* | head -n1)"
  ln -sf "$(basename "$lib")" "$ORT_DIR/lib/libonnxruntime.so"
  echo "$ORT_VERSION" > "$ORT_DIR/VERSION"
  rm -rf "$tmp"
fi
echo "setup: ONNX Runtime $(cat "$ORT_DIR/VERSION") at $ORT_DIR/lib"
