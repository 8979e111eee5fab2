#!/usr/bin/env bash
# Create/refresh the project virtual environment in .venv:
#   1. python3 -m venv .venv            (only if .venv does not exist)
#   2. pip install $PNORM_TORCH_SPEC    (default: torch==2.14.1 torchvision==0.29.1)
#   3. pip install -e ".[book,test,dev]"
# Steps 2-3 are skipped when .venv/.pnorm-setup-stamp records the same hash of
# pyproject.toml + torch spec, so re-running is fast.
#
# Environment variables:
#   PNORM_TORCH_SPEC  pip arguments for torch (word-split), e.g.
#                     PNORM_TORCH_SPEC="torch torchvision" or
#                     PNORM_TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu"
#   PYTHON            interpreter used to create the venv (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.pnorm-setup-stamp"
DEFAULT_TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
TORCH_SPEC="${PNORM_TORCH_SPEC:-$DEFAULT_TORCH_SPEC}"
EXTRAS="book,test,dev"

log() { echo "[setup] $*"; }

if [[ ! -x "$PY" ]]; then
  BASE_PY="${PYTHON:-python3}"
  command -v "$BASE_PY" >/dev/null 2>&1 || { echo "[setup] ERROR: $BASE_PY not found; install Python >= 3.10." >&2; exit 1; }
  log "creating virtual environment $VENV with $("$BASE_PY" --version 2>&1)"
  "$BASE_PY" -m venv "$VENV"
else
  log "using existing virtual environment $VENV ($("$PY" --version 2>&1))"
fi

hash_inputs() {
  { cat "$ROOT/pyproject.toml"; printf '\ntorch-spec: %s\nextras: %s\n' "$TORCH_SPEC" "$EXTRAS"; } \
    | "$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}
WANT="$(hash_inputs)"

if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$WANT" ]] \
   && "$PY" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("pnorm") and u.find_spec("torch")))' >/dev/null 2>&1; then
  log "dependencies up to date (stamp $STAMP matches pyproject.toml + torch spec); skipping pip."
  exit 0
fi

rm -f "$STAMP"
export PIP_DISABLE_PIP_VERSION_CHECK=1
log "installing torch: pip install $TORCH_SPEC"
# shellcheck disable=SC2086  # the spec is intentionally word-split into pip arguments
"$PY" -m pip install $TORCH_SPEC
log "installing the package and its extras: pip install -e \".[$EXTRAS]\""
"$PY" -m pip install -e ".[$EXTRAS]"
echo "$WANT" > "$STAMP"
log "done: $("$PY" -c 'import torch; print("torch", torch.__version__)')"
