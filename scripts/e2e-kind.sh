#!/bin/sh
# The real-cluster, real-GCP end-to-end run (make e2e-kind): a kind cluster, the images
# built from this checkout, the Helm chart, and a Gateway whose VM really runs in your GCP
# project; it fetches a page through the public IP, deletes the Gateway and checks that no
# labelled GCP resource is left. It costs a few cents of e2-micro time.
#
# Needs: docker (or podman as docker), kind, kubectl, helm, gcloud, curl, and
#   WGNET_E2E_PROJECT   the GCP project to use
#   WGNET_E2E_KEY       a service-account key file made by scripts/gcp-setup.sh
# Optional: WGNET_E2E_ZONE (default us-central1-a), WGNET_E2E_KEEP=1 keeps the kind cluster.
set -eu

: "${WGNET_E2E_PROJECT:?set WGNET_E2E_PROJECT to a GCP project id}"
: "${WGNET_E2E_KEY:?set WGNET_E2E_KEY to a key file from scripts/gcp-setup.sh}"
ZONE=${WGNET_E2E_ZONE:-us-central1-a}
REGION=${ZONE%-*}
CLUSTER=wgnet-e2e
INSTALL=e2e-$(date +%s)  # at most 16 characters (the operator refuses more)
for tool in docker kind kubectl helm gcloud curl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "e2e-kind: $tool is required" >&2; exit 1; }
done

cleanup() {
    kubectl delete gateway --all -A --timeout=300s >/dev/null 2>&1 || true
    [ "${WGNET_E2E_KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

kind create cluster --name "$CLUSTER" --wait 120s
make images OPERATOR_IMAGE=wgnet-operator:e2e LINK_IMAGE=wgnet-link:e2e
kind load docker-image wgnet-operator:e2e wgnet-link:e2e --name "$CLUSTER"

kubectl create namespace wgnet-system
kubectl -n wgnet-system create secret generic wgnet-gcp --from-file=key.json="$WGNET_E2E_KEY"
helm install wgnet charts/wireguard-gateway-operator -n wgnet-system --wait \
    --set image.repository=wgnet-operator --set image.tag=e2e --set image.pullPolicy=Never \
    --set link.image.repository=wgnet-link --set link.image.tag=e2e --set link.image.pullPolicy=Never \
    --set gcp.credentials.existingSecret=wgnet-gcp \
    --set "gcp.allowedProjects={$WGNET_E2E_PROJECT}" --set gcp.install="$INSTALL"

kubectl create namespace e2e
kubectl label namespace e2e pod-security.kubernetes.io/enforce=privileged
kubectl -n e2e create deployment web --image=docker.io/library/nginx:stable --port=80
kubectl -n e2e expose deployment web --port=80
kubectl apply -f - <<GW
apiVersion: wgnet.dev/v1alpha1
kind: Gateway
metadata: {name: e2e, namespace: e2e}
spec:
  gcp: {projectID: $WGNET_E2E_PROJECT, region: $REGION, zone: $ZONE, machineType: e2-micro}
  forwards: [{port: 8080, protocol: TCP, service: web, targetPort: 80}]
GW
kubectl -n e2e wait gateway/e2e --for=condition=Ready --timeout=600s
ADDR=$(kubectl -n e2e get gateway e2e -o jsonpath='{.status.address}')
echo "e2e-kind: Gateway Ready at $ADDR"
curl -fsS --retry 10 --retry-delay 3 --max-time 10 "http://$ADDR:8080/" | head -5

kubectl -n e2e delete gateway e2e --timeout=600s
left=$(gcloud compute instances list --project "$WGNET_E2E_PROJECT" \
    --filter "labels.wgnet-install=$INSTALL" --format 'value(name)')
if [ -n "$left" ]; then
    echo "e2e-kind: instances left behind: $left" >&2
    exit 1
fi
echo "e2e-kind: passed"
