#!/usr/bin/env bash
# The project-local Python venv (.venv) with the real clients the conformance tests drive:
# tritonclient (HTTP + gRPC) and KServe's client. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=("tritonclient[http,grpc]==2.73.0" "kserve==0.21.0")
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
.venv/bin/python -c "import tritonclient.http, tritonclient.grpc" \
  || { echo "setup: tritonclient is not importable from .venv" >&2; exit 1; }
