#!/bin/sh
# Builds the Kubernetes control-plane binaries the tests and the sandbox run (kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, kubectl and etcd) from source, through
# the Go module proxy, into a cache outside the work tree keyed by version:
#
#   ${WGNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wgnet}/k8s/<K8S_VERSION>-etcd<ETCD_VERSION>/bin
#
# A machine builds once; every later call finds the stamp and only prints the directory.
# Prints that bin directory on stdout as its last line (progress goes to stderr).
#
# K8S_VERSION selects another Kubernetes release (default: the oldest served minor the CRDs
# support); ETCD_VERSION another etcd. Needs Go (see README) and the Go module proxy.
set -eu

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.5}"
# Bumped whenever the recipe below changes, so a cache built by an older recipe is rebuilt.
RECIPE=1

case "$K8S_VERSION" in
    v1.*.*) ;;
    *) echo "k8s-bins: K8S_VERSION must look like v1.34.4, not '$K8S_VERSION'" >&2; exit 2 ;;
esac
command -v go >/dev/null 2>&1 || {
    echo "k8s-bins: Go is not installed; install Go 1.26 or later (see README)" >&2
    exit 1
}

minor=$(echo "$K8S_VERSION" | cut -d. -f2)
patch=$(echo "$K8S_VERSION" | cut -d. -f3)
staging="v0.$minor.$patch"
cache="${WGNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wgnet}/k8s/$K8S_VERSION-etcd$ETCD_VERSION"
bin="$cache/bin"
stamp="$cache/.built-recipe-$RECIPE"

if [ -f "$stamp" ]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
# One builder at a time per cache directory: parallel test binaries may call this together.
exec 9>"$cache/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
if [ -f "$stamp" ]; then
    echo "$bin"
    exit 0
fi

start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A build cache of its own, removed with $work: the binaries are built once per version,
# so keeping Go's object files (3+ GB per release) would only cost disk.
export GOCACHE="$work/go-build"
echo "k8s-bins: building Kubernetes $K8S_VERSION and etcd $ETCD_VERSION into $bin (first time only)" >&2

# The throwaway module for Kubernetes. k8s.io/kubernetes replaces its staging modules with
# ./staging paths, which do not apply to a module that requires it, so every staging module
# is pinned here to the matching v0.Y.Z release.
mkdir -p "$work/k8s"
cat >"$work/k8s/go.mod" <<EOF
module wgnet.dev/k8s-bins

go 1.24

require k8s.io/kubernetes $K8S_VERSION
EOF
mods=$(cd "$work/k8s" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
[ -f "$mods" ] || { echo "k8s-bins: could not fetch k8s.io/kubernetes@$K8S_VERSION's go.mod" >&2; exit 1; }
sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$mods" | while read -r m; do
    echo "replace $m => $m $staging" >>"$work/k8s/go.mod"
done
cat >"$work/k8s/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
(cd "$work/k8s" && GOFLAGS=-mod=mod go mod tidy -e >&2 2>"$work/tidy.log") || {
    cat "$work/tidy.log" >&2
    echo "k8s-bins: resolving the Kubernetes $K8S_VERSION module graph failed" >&2
    exit 1
}

# Version stamps as Kubernetes' own build sets them, so `kubectl version`, discovery and
# Helm's kubeVersion checks see the real release.
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
ldflags="$ldflags -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
mkdir -p "$bin.tmp"
for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl; do
    echo "k8s-bins: go build $c" >&2
    (cd "$work/k8s" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "$ldflags" \
        -o "$bin.tmp/$c" "k8s.io/kubernetes/cmd/$c") >&2
done

# etcd: its server module's etcdmain is the whole binary; a two-line main calls it.
mkdir -p "$work/etcd"
cat >"$work/etcd/go.mod" <<EOF
module wgnet.dev/etcd-bin

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
cat >"$work/etcd/main.go" <<'EOF'
// Command etcd is etcd's own server main, built from go.etcd.io/etcd/server/v3.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
echo "k8s-bins: go build etcd" >&2
if ! (cd "$work/etcd" && GOFLAGS=-mod=mod go mod tidy >&2 && CGO_ENABLED=0 go build -mod=mod \
    -trimpath -ldflags "-s -w" -o "$bin.tmp/etcd" .) >&2; then
    # Fallback named in the README: Debian's etcd-server package.
    if command -v etcd >/dev/null 2>&1; then
        echo "k8s-bins: building etcd $ETCD_VERSION failed; using $(command -v etcd)" >&2
        ln -sf "$(command -v etcd)" "$bin.tmp/etcd"
    else
        echo "k8s-bins: building etcd $ETCD_VERSION failed and no etcd is installed" >&2
        exit 1
    fi
fi

rm -rf "$bin"
mv "$bin.tmp" "$bin"
touch "$stamp"
end=$(date +%s)
echo "k8s-bins: built in $((end - start)) s; $(du -sh "$bin" | cut -f1) in $bin" >&2
echo "$bin"
