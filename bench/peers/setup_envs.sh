#!/usr/bin/env bash
# One virtual environment per peer library under bench/peers/.venvs/, all on the same CPU torch.
# Idempotent: an env whose library already imports is left alone. A peer that does not install is
# recorded as skipped in .venvs/<name>.status (the harness reports it) instead of failing the run.
#   bash bench/peers/setup_envs.sh [sae-lens|eai-sparsify|llamascopium ...]
set -uo pipefail
cd "$(dirname "$0")"
TORCH="torch==2.13.0"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
mkdir -p .venvs
CONSTRAINTS=.venvs/constraints.txt
printf '%s\n' "$TORCH" > "$CONSTRAINTS"

# name | pip requirements | import check
PEERS=(
  "sae-lens|sae-lens|import sae_lens"
  "eai-sparsify|eai-sparsify|import sparsify"
  "llamascopium|llamascopium transformer-lens<4|import llamascopium"
)

setup_one() {
  local name=$1 reqs=$2 check=$3 venv=".venvs/$1"
  if [[ -x $venv/bin/python ]] && SPARSIFY_DISABLE_TRITON=1 "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "[$name] ready"; return 0
  fi
  echo "[$name] creating $venv"
  rm -rf "$venv"
  "$PY" -m venv "$venv" || return 1
  "$venv/bin/pip" install -q "$TORCH" || return 1                      # local CPU wheel first
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q -c "$CONSTRAINTS" $reqs safetensors || return 1
  # sparsify pulls triton on Linux; it cannot run on a CPU torch and is not needed here.
  if [[ $name == eai-sparsify ]]; then "$venv/bin/pip" uninstall -q -y triton 2>/dev/null || true; fi
  SPARSIFY_DISABLE_TRITON=1 "$venv/bin/python" -c "$check" || return 1
}

want=("$@")
for entry in "${PEERS[@]}"; do
  IFS='|' read -r name reqs check <<<"$entry"
  if [[ ${#want[@]} -gt 0 && ! " ${want[*]} " =~ " $name " ]]; then continue; fi
  if setup_one "$name" "$reqs" "$check" > ".venvs/$name.log" 2>&1; then
    echo ok > ".venvs/$name.status"
  else
    echo "skipped: install failed (see bench/peers/.venvs/$name.log)" > ".venvs/$name.status"
  fi
  echo "[$name] $(cat ".venvs/$name.status")"
  if [[ -x .venvs/$name/bin/pip ]]; then
    .venvs/$name/bin/pip freeze 2>/dev/null > ".venvs/$name.freeze" || true
  fi
done
