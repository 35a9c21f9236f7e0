#!/bin/sh
# Prepares a GCP project for wireguard-gateway-operator: enables the three APIs it calls,
# creates its service account with the rights below, writes a JSON key and prints the
# commands that hand it to the cluster. Needs gcloud, logged in as a project owner.
#
#   scripts/gcp-setup.sh PROJECT_ID [SERVICE_ACCOUNT_NAME] [KEY_FILE]
#
# Rights: two custom roles with exactly the permissions of the calls the operator makes
# (cloud/tests/gcp.rs derives them from those calls and fails when they differ):
#   scripts/gcp-operator-role.yaml          bound on the project: gateway VMs, the network,
#                                           firewall rules, addresses, service accounts, and
#                                           creating and listing secrets
#   scripts/gcp-operator-secrets-role.yaml  bound with a condition on the secret's name
#                                           (wg-*): the operator reads, versions, grants and
#                                           deletes only its own key secrets
# Not narrowed: iam.serviceAccounts.actAs (run VMs as the per-gateway accounts) is
# project-wide, because IAM Conditions do not apply to service accounts and the accounts do
# not exist yet when this runs. It lets the operator's key run a VM as any account of the
# project: give the operator a project of its own.
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

HERE=$(cd "$(dirname "$0")" && pwd)
NUMBER=$(gcloud projects describe "$PROJECT" --format='value(projectNumber)')
for pair in wgnetOperator:gcp-operator-role.yaml wgnetOperatorSecrets:gcp-operator-secrets-role.yaml; do
    id=${pair%%:*}
    file=$HERE/${pair#*:}
    if gcloud iam roles describe "$id" --project "$PROJECT" >/dev/null 2>&1; then
        echo "updating role $id"
        gcloud iam roles update "$id" --project "$PROJECT" --file "$file" --quiet >/dev/null
    else
        echo "creating role $id"
        gcloud iam roles create "$id" --project "$PROJECT" --file "$file" --quiet >/dev/null
    fi
done
echo "granting projects/$PROJECT/roles/wgnetOperator"
gcloud projects add-iam-policy-binding "$PROJECT" --member "serviceAccount:$EMAIL" \
    --role "projects/$PROJECT/roles/wgnetOperator" --condition None --quiet >/dev/null
echo "granting projects/$PROJECT/roles/wgnetOperatorSecrets on secrets named wg-*"
gcloud projects add-iam-policy-binding "$PROJECT" --member "serviceAccount:$EMAIL" \
    --role "projects/$PROJECT/roles/wgnetOperatorSecrets" --quiet \
    --condition "title=wgnet-key-secrets-only,expression=resource.name.startsWith(\"projects/$NUMBER/secrets/wg-\")" >/dev/null

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
