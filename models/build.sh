#!/usr/bin/env bash
# Build the example model zoo (models/*/<version>/ and tests/fixtures/models/).
#
#   bash models/build.sh
#
# Creates the virtual environment .venv-models at the repository root if it is
# missing (override with INVARIANT_MODELS_VENV=DIR, interpreter with PYTHON=...),
# installs the pinned models/requirements.txt into it, and runs
# models/build_models.py. Safe to run repeatedly: the output is byte-identical
# as long as the pinned library versions are the same.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INVARIANT_MODELS_VENV:-$ROOT/.venv-models}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$ROOT/models/requirements.txt"

# Single-threaded numerics and fixed hashing: the build must not depend on the machine's
# core count.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
       BLIS_NUM_THREADS=1 VECLIB_MAXIMUM_THREADS=1 NUMEXPR_NUM_THREADS=1 \
       PYTHONHASHSEED=0

cd "$ROOT"
exec "$VENV/bin/python" "$ROOT/models/build_models.py" "$@"
