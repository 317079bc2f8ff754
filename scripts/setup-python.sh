#!/usr/bin/env bash
# The project-local Python venv (.venv) with the real clients the conformance tests drive:
# tritonclient (HTTP + gRPC), KServe's client, and schemathesis for the OpenAPI contract tests.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=("tritonclient[http,grpc]==2.73.0" "kserve==0.21.0" "schemathesis==4.32.5")
STAMP=".venv/.invariant-packages"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the Python venv .venv"
  python3 -m venv .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "${PACKAGES[*]}" ]; then
  echo "setup: installing ${PACKAGES[*]} into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
  echo "${PACKAGES[*]}" > "$STAMP"
fi
# (tritonclient.grpc and kserve register the same protobuf package: one process each.)
for module in "tritonclient.http, tritonclient.grpc" kserve schemathesis; do
  .venv/bin/python -c "import $module" \
    || { echo "setup: $module is not importable from .venv" >&2; exit 1; }
done
