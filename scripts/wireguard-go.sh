#!/bin/sh
# Builds a current wireguard-go (golang.zx2c4.com/wireguard: TUN offloads, UDP GSO/GRO,
# batched I/O; Debian's 2022 package has none of them) from the Go module proxy into a
# cache outside the work tree keyed by version:
#
#   ${WGNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wgnet}/wireguard-go/<VERSION>/bin/wireguard
#
# `make bench` runs it next to the other implementations and as the VM stand-in of the
# ingress path (GCP's VM runs kernel WireGuard, which is faster than Debian's wireguard-go).
# Prints the binary's path on stdout as its last line. Needs Go (see README).
set -eu

# Pinned: a pseudo-version of the module's main branch (it publishes no tags).
VERSION="${WIREGUARD_GO_VERSION:-v0.0.0-20260522210424-ecfc5a8d5446}"
case "$VERSION" in
    v0.0.0-*) ;;
    *) echo "wireguard-go: WIREGUARD_GO_VERSION must be a pseudo-version like v0.0.0-20260522210424-ecfc5a8d5446" >&2; exit 2 ;;
esac
command -v go >/dev/null 2>&1 || {
    echo "wireguard-go: Go is not installed; install Go 1.26 or later (see README)" >&2
    exit 1
}
cache="${WGNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wgnet}/wireguard-go/$VERSION"
bin="$cache/bin/wireguard"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "wireguard-go: building golang.zx2c4.com/wireguard@$VERSION (first time only)" >&2
GOCACHE="$work/go-build" GOPATH="$work/gopath" GOBIN="$cache/bin" GOFLAGS=-modcacherw \
    go install "golang.zx2c4.com/wireguard@$VERSION" >&2
echo "$bin"
