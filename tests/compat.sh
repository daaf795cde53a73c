#!/usr/bin/env bash
# The compatibility subset (tests marked `compat`) on each older transformers release skipprune supports, in the
# active environment; the newest release allowed by pyproject.toml is put back at the end, even after a failure.
# Usage: bash tests/compat.sh [VERSION ...]   (default: every supported minor below the newest)
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(5.23.0 5.24.0)
restore() { python -m pip install -q "$(grep -o '"transformers[^"]*"' pyproject.toml | tr -d '"')"; }
trap restore EXIT
for v in "${versions[@]}"; do
  python -m pip install -q "transformers==$v"
  echo "compatibility subset on transformers $v"
  python -m pytest -q -m compat
done
