#!/usr/bin/env bash
# Build the HTML book from scratch: set up .venv, vendor the JavaScript, clean, then
#   jupyter-book build --all -W -n --keep-going .
# Notebooks are executed in the default profile (the package picks `cpu` without a GPU);
# set PNORM_PROFILE to choose another one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)

bash scripts/setup.sh
bash scripts/vendor_js.sh

JB="$ROOT/.venv/bin/jupyter-book"
export TQDM_DISABLE=1  # progress bars help a reader running a chapter, not the published page
echo "[build_book] removing the previous build (jupyter-book clean .)"
"$JB" clean .
rm -rf "$ROOT/_build/html"   # belt and braces: no stale page may survive

echo "[build_book] jupyter-book build --all -W -n --keep-going .  (PNORM_PROFILE=${PNORM_PROFILE:-<package default>})"
set +e
"$JB" build --all -W -n --keep-going .
RC=$?
set -e
ELAPSED=$(( $(date +%s) - START ))
if [[ $RC -ne 0 ]]; then
  echo "[build_book] FAILED (exit code $RC) after ${ELAPSED} s" >&2
  exit "$RC"
fi
echo "[build_book] built in ${ELAPSED} s"
echo "[build_book] HTML: $ROOT/_build/html/index.html"
