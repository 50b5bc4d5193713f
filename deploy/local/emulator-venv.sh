#!/usr/bin/env bash
# Builds the local BigQuery emulator's virtual environment (`make venv` runs this):
#   deploy/local/emulator-venv.sh VENV REQUIREMENTS
# local-bigquery needs Python 3.13 (the function keeps its own 3.11+ .venv). The interpreter is,
# in this order: $EMULATOR_PYTHON; `python3.13` on PATH, if it runs (a pyenv shim may not);
# the newest $(pyenv root)/versions/3.13*/bin/python3.13. Then DuckDB's extensions are copied
# from their PyPI packages into DuckDB's extension cache ($HOME/.duckdb/extensions), because
# DuckDB cannot download them offline: the emulator must run with the same HOME.
set -euo pipefail

usage="usage: $0 VENV REQUIREMENTS"
venv=${1:?$usage}
requirements=${2:?$usage}

is_python313() {
  "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1
}

find_python313() {
  local candidate root
  if [[ -n ${EMULATOR_PYTHON:-} ]]; then
    if is_python313 "$EMULATOR_PYTHON"; then
      printf '%s\n' "$EMULATOR_PYTHON"
      return 0
    fi
    echo "$0: EMULATOR_PYTHON=$EMULATOR_PYTHON is not a working Python 3.13" >&2
    return 1
  fi
  if candidate=$(command -v python3.13) && is_python313 "$candidate"; then
    printf '%s\n' "$candidate"
    return 0
  fi
  root=$(pyenv root 2>/dev/null) || root=${PYENV_ROOT:-$HOME/.pyenv}
  while IFS= read -r candidate; do
    if is_python313 "$candidate"; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done < <(compgen -G "$root/versions/3.13*/bin/python3.13" | sort -rV)
  cat >&2 <<EOF
$0: the local BigQuery emulator (local-bigquery) needs Python 3.13, and none was found:
  - no working \`python3.13\` on PATH (a pyenv shim only works where pyenv selects 3.13), and
  - nothing under $root/versions/3.13*/bin/python3.13.
Install Python 3.13 (\`pyenv install 3.13\`, or your system's python3.13 package), or set
EMULATOR_PYTHON=/path/to/python3.13, then run make again. The function itself stays on .venv.
EOF
  return 1
}

python=$(find_python313)
echo "$0: building $venv with $python"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$requirements"
"$venv/bin/python" -m pip check
"$venv/bin/python" -c "
import duckdb
from duckdb_extensions import import_extension

con = duckdb.connect()
for name in ('ducklake', 'icu', 'spatial'):
    import_extension(name, con=con)
"
touch "$venv/.installed"
