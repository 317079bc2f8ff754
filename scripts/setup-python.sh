#!/usr/bin/env bash
# The project-local Python venv (.venv) with the real clients the conformance tests drive:
# tritonclient (HTTP + gRPC), KServe's client, and schemathesis for the OpenAPI contract tests;
# .venv-feast with Feast's SDK; and .venv-moto with moto's S3-compatible server (the model
# repository on object storage is tested against it, since no cloud is reachable).
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

# Feast's SDK for the feature-store conformance tests, in a venv of its own (its pins of
# protobuf, pandas and pyarrow are not the Triton and KServe clients').
FEAST_PACKAGES=("feast==0.67.0")
FEAST_STAMP=".venv-feast/.invariant-packages"
if [ ! -x .venv-feast/bin/python ]; then
  echo "setup: creating the Python venv .venv-feast"
  python3 -m venv .venv-feast
fi
if [ "$(cat "$FEAST_STAMP" 2>/dev/null)" != "${FEAST_PACKAGES[*]}" ]; then
  echo "setup: installing ${FEAST_PACKAGES[*]} into .venv-feast"
  .venv-feast/bin/python -m pip install --quiet --disable-pip-version-check "${FEAST_PACKAGES[@]}"
  echo "${FEAST_PACKAGES[*]}" > "$FEAST_STAMP"
fi
.venv-feast/bin/python -c "import feast, pandas, pyarrow" \
  || { echo "setup: feast is not importable from .venv-feast" >&2; exit 1; }

# moto's server, a local S3-compatible endpoint, in a venv of its own (its Flask and Werkzeug
# pins are not schemathesis's).
MOTO_PACKAGES=("moto[server]==5.2.5")
MOTO_STAMP=".venv-moto/.invariant-packages"
if [ ! -x .venv-moto/bin/python ]; then
  echo "setup: creating the Python venv .venv-moto"
  python3 -m venv .venv-moto
fi
if [ "$(cat "$MOTO_STAMP" 2>/dev/null)" != "${MOTO_PACKAGES[*]}" ]; then
  echo "setup: installing ${MOTO_PACKAGES[*]} into .venv-moto"
  .venv-moto/bin/python -m pip install --quiet --disable-pip-version-check "${MOTO_PACKAGES[@]}"
  echo "${MOTO_PACKAGES[*]}" > "$MOTO_STAMP"
fi
[ -x .venv-moto/bin/moto_server ] \
  || { echo "setup: moto_server is not installed in .venv-moto" >&2; exit 1; }
