#!/usr/bin/env bash
# The prepared GPU check: step-time ratios and one timed epoch of the faithful CIFAR-10 recipe.
# Usage: scripts/gpu_check.sh OUT_DIR   (about 5 minutes on one recent card; hard limit 8)
# Writes OUT_DIR/{env.txt,train_speed.log,train_speed.json,gpu_epoch.log,gpu_epoch.json}.
set -euo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" - <<'PYEOF' | tee "$OUT/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
PYEOF
(nvidia-smi || true) >> "$OUT/env.txt" 2>&1
DEVICE=${DEVICE:-cuda}
EXTRA=${QUICK:+--quick}
START=$SECONDS
# 1. Interleaved step times (AlexNet plain / PAN two-pass / batched / alternating, ResNet-18).
timeout 180 "$PY" benchmarks/train_speed.py --device "$DEVICE" $EXTRA --budget 100 \
  | tee "$OUT/train_speed.log"
tail -n 1 "$OUT/train_speed.log" > "$OUT/train_speed.json"
# 2. One timed epoch per configuration, through pnorm.train (what the book runs).
LEFT=$(( 450 - (SECONDS - START) ))
timeout "$LEFT" "$PY" benchmarks/gpu_epoch.py --device "$DEVICE" --out "$OUT" $EXTRA --resnet \
  --budget $(( LEFT - 120 )) | tee "$OUT/gpu_epoch.log"
echo "gpu_check done in $(( SECONDS - START )) s; results in $OUT"
