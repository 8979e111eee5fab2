#!/usr/bin/env bash
# The project's test command (what .ci/run calls): set up .venv, vendor the JavaScript, then run
# pytest in the smoke profile. The notebooks and the book build are exercised from tests/.
# Extra arguments are passed to pytest (e.g. bash scripts/run_tests.sh -k notebooks).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)

bash scripts/setup.sh
bash scripts/vendor_js.sh

echo "[run_tests] PNORM_PROFILE=smoke .venv/bin/python -m pytest -q tests $*"
set +e
PNORM_PROFILE=smoke "$ROOT/.venv/bin/python" -m pytest -q tests "$@"
RC=$?
set -e
if [[ $RC -eq 5 ]]; then
  echo "[run_tests] ERROR: pytest collected no tests (exit code 5); treating this as a failure." >&2
  RC=1
fi
echo "[run_tests] pytest exit code $RC after $(( $(date +%s) - START )) s"
exit "$RC"
