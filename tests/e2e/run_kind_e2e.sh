#!/usr/bin/env bash
# End-to-end on a kind cluster: build the image, install the CRDs, run the operator,
# apply the examples and wait for Succeeded. Not run in CI (no cluster there).
#   tests/e2e/run_kind_e2e.sh            # create a cluster named saeops-e2e, run, keep it
#   KEEP_CLUSTER=0 tests/e2e/run_kind_e2e.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CLUSTER="${CLUSTER:-saeops-e2e}"
IMAGE="${IMAGE:-ghcr.io/saeops/saeops:0.1.0}"
NS="${NS:-saeops-e2e}"
TIMEOUT="${TIMEOUT:-1800s}"
PY="${PY:-$ROOT/.venv/bin/python}"

for tool in kind kubectl docker; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
kubectl config use-context "kind-$CLUSTER"
docker build -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

kubectl apply --server-side -f "$ROOT/crds/"
kubectl wait --for condition=Established --timeout=60s crd --all
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -

# The operator runs on the host against the cluster (the Helm chart runs it in-cluster).
"$PY" -m saeops.operator --namespace "$NS" --metrics-port 0 --liveness http://127.0.0.1:8081/healthz \
  >"${TMPDIR:-/tmp}/saeops-operator.log" 2>&1 &
OP_PID=$!
trap 'kill $OP_PID 2>/dev/null || true; [ "${KEEP_CLUSTER:-1}" = 1 ] || kind delete cluster --name "$CLUSTER"' EXIT

for f in "$ROOT"/examples/*.yaml; do
  kubectl -n "$NS" apply -f "$f"
done
for kind in saetrainingruns activationcaches; do
  for name in $(kubectl -n "$NS" get "$kind" -o name); do
    kubectl -n "$NS" wait --for=condition=Succeeded=True --timeout="$TIMEOUT" "$name"
  done
done
kubectl -n "$NS" get saeops
echo "e2e: all examples Succeeded"
