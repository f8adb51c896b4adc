#!/usr/bin/env bash
# The GPU machine's entry point (see bench/gpu/README.md for the exact device call): install the
# carried peer wheels (bench/gpu/wheels/, from prep_wheels.sh) into a scratch site, put this
# checkout on PYTHONPATH (the machine's python3 has torch and Triton but not saeops), run run.py.
# Logs and results land in $OUT. Extra arguments go to run.py (e.g. --parts peers).
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/saeops-gpu-run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled TQDM_DISABLE=1
PY=${PYTHON:-python3}
WHEELS=${SAEOPS_WHEELS:-bench/gpu/wheels}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE=${SAEOPS_WHEEL_SITE:-/tmp/saeops-site}
  echo "== installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels into $SITE" | tee "$OUT/env.log"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl >>"$OUT/env.log" 2>&1; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "wheel install failed (see env.log): the peers will report what they miss" | tee -a "$OUT/env.log"
  fi
else
  echo "== no $WHEELS/*.whl: peers the machine lacks will read 'not installed'" | tee "$OUT/env.log"
fi
export PYTHONPATH="$PWD/runtime:$PWD/kernels:$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu/run.py --out "$OUT" "$@"
