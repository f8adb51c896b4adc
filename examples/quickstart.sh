#!/usr/bin/env bash
# From a fresh clone: install saeops into ./.venv, then train the quickstart SAE.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
exec .venv/bin/saeops run examples/quickstart.yaml "$@"
