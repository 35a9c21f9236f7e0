#!/bin/sh
# Prepares a GCP project for wireguard-gateway-operator: enables the three APIs it calls,
# creates its service account with the roles below, writes a JSON key and prints the
# commands that hand it to the cluster. Needs gcloud, logged in as a project owner.
#
#   scripts/gcp-setup.sh PROJECT_ID [SERVICE_ACCOUNT_NAME] [KEY_FILE]
#
# Roles, and why each is needed:
#   roles/compute.instanceAdmin.v1  create, start, stop, delete the gateway VMs; set metadata
#   roles/compute.networkAdmin      the shared VPC network and the static external addresses
#   roles/compute.securityAdmin     each gateway's firewall rule
#   roles/iam.serviceAccountAdmin   one service account per gateway VM (its only identity)
#   roles/iam.serviceAccountUser    run VMs as those service accounts
#   roles/secretmanager.admin       each VM's WireGuard key secret, and its access binding
# Skip the key (workload identity on GKE) with KEY_FILE=-.
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 PROJECT_ID [SERVICE_ACCOUNT_NAME] [KEY_FILE]" >&2
    exit 2
fi
PROJECT=$1
NAME=${2:-wgnet-operator}
KEY=${3:-wgnet-operator-key.json}
EMAIL="$NAME@$PROJECT.iam.gserviceaccount.com"

command -v gcloud >/dev/null 2>&1 || { echo "gcloud not found: install the Google Cloud CLI first" >&2; exit 1; }

echo "enabling the Compute, IAM and Secret Manager APIs in $PROJECT"
gcloud services enable compute.googleapis.com iam.googleapis.com secretmanager.googleapis.com \
    --project "$PROJECT"

if gcloud iam service-accounts describe "$EMAIL" --project "$PROJECT" >/dev/null 2>&1; then
    echo "service account $EMAIL exists"
else
    gcloud iam service-accounts create "$NAME" --project "$PROJECT" \
        --display-name "wireguard-gateway-operator"
fi

for role in roles/compute.instanceAdmin.v1 roles/compute.networkAdmin \
    roles/compute.securityAdmin roles/iam.serviceAccountAdmin \
    roles/iam.serviceAccountUser roles/secretmanager.admin; do
    echo "granting $role"
    gcloud projects add-iam-policy-binding "$PROJECT" --member "serviceAccount:$EMAIL" \
        --role "$role" --condition None --quiet >/dev/null
done

if [ "$KEY" = "-" ]; then
    echo "no key written (workload identity): annotate the chart's ServiceAccount with"
    echo "  --set serviceAccount.annotations.iam\\.gke\\.io/gcp-service-account=$EMAIL"
    exit 0
fi
umask 077
gcloud iam service-accounts keys create "$KEY" --iam-account "$EMAIL" --project "$PROJECT"
cat <<NEXT

Key written to $KEY (keep it secret; delete it once it is in the cluster). Next:

  kubectl create namespace wgnet-system
  kubectl -n wgnet-system create secret generic wgnet-gcp --from-file=key.json=$KEY
  helm install wgnet charts/wireguard-gateway-operator -n wgnet-system \\
      --set gcp.credentials.existingSecret=wgnet-gcp \\
      --set gcp.allowedProjects={$PROJECT}
NEXT
