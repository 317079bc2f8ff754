#!/usr/bin/env bash
# The project-local Python venvs with the real clients and servers the tests drive:
# .venv with tritonclient (HTTP + gRPC), KServe's client, and schemathesis for the OpenAPI
# contract tests; .venv-feast with Feast's SDK; and .venv-moto with moto's S3-compatible server
# (the model repository on object storage is tested against it, since no cloud is reachable).
# Each has its own venv because their pins (protobuf, pandas, pyarrow, Flask, Werkzeug) differ.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# venv DIR PACKAGE...: creates DIR when missing and installs the packages when DIR's stamp
# does not list exactly them.
venv() {
  local dir=$1
  shift
  local stamp="$dir/.invariant-packages"
  if [ ! -x "$dir/bin/python" ]; then
    echo "setup: creating the Python venv $dir"
    python3 -m venv "$dir"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$*" ]; then
    echo "setup: installing $* into $dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
    echo "$*" > "$stamp"
  fi
}

venv .venv "tritonclient[http,grpc]==2.73.0" "kserve==0.21.0" "schemathesis==4.32.5"
# (tritonclient.grpc and kserve register the same protobuf package: one process each.)
for module in "tritonclient.http, tritonclient.grpc" kserve schemathesis; do
  .venv/bin/python -c "import $module" \
    || { echo "setup: $module is not importable from .venv" >&2; exit 1; }
done

venv .venv-feast "feast==0.67.0"
.venv-feast/bin/python -c "import feast, pandas, pyarrow" \
  || { echo "setup: feast is not importable from .venv-feast" >&2; exit 1; }

venv .venv-moto "moto[server]==5.2.5"
[ -x .venv-moto/bin/moto_server ] \
  || { echo "setup: moto_server is not installed in .venv-moto" >&2; exit 1; }
